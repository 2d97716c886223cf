"""Batch leases: a running batch renews its heartbeat while its LLM call runs; one whose
heartbeat stopped (its worker died) is released and done again, once, within the lease,
whatever the task time limit; the run page and /healthz show it, and an operator requeues it."""

import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import LLMProvider
from analysis.models import AnalysisRun, Batch
from analysis.services import begin_run, claim_batch, plan_run, process_batch, resume_stale_runs, start_run
from analysis.tasks import resume_stale_runs_task
from conftest import WorkerProcess
from proposals.models import TaskProposal
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup, wait_for_status
from tests.factories import (
    AnalysisRunFactory,
    BatchFactory,
    ProjectMembershipFactory,
    UserFactory,
)
from tests.fakes.openai_server import FakeOpenAI, FakeReply, propose_actionable

Status = AnalysisRun.Status
# Twelve requests for work, ten minutes apart: one batch each at a budget of 20 tokens.
REQUESTS = [f"Please fix crash {n} on the checkout screen" for n in range(1, 13)]


@pytest.fixture
def no_worker(worker_process: WorkerProcess) -> Iterator[None]:
    """The test plays the workers: the session's worker, if it runs, must not take its
    tasks (the queue is emptied after; `live_worker` starts the worker again for others)."""
    worker_process.stop()
    celery_app.control.purge()
    yield
    celery_app.control.purge()


def planned_run(setup: dict[str, Any]) -> tuple[AnalysisRun, list[int]]:
    """A run begun and planned in this process, as its task would."""
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    begin_run(run_id=run.pk)
    return run, plan_run(run_id=run.pk)


def in_thread(batch_id: int, claim_id: str) -> threading.Thread:
    """`process_batch` in a thread of its own, as another worker process would run it."""

    def work() -> None:
        try:
            process_batch(batch_id=batch_id, claim_id=claim_id)
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def answer(title: str, *, after: float) -> FakeReply:
    """An answer of one proposal citing the batch's first message, sent after `after` s."""
    proposal = {
        "title": title,
        "description": title,
        "project": "",
        "assignee": None,
        "priority": "medium",
        "category": "bug",
        "tags": [],
        "due_date": None,
        "confidence": 0.8,
        "reasoning": "Asked for.",
        "recommendation": "new_task",
        "source_message_ids": [1],
    }
    return FakeReply(body={"proposals": [proposal]}, hang_seconds=after)


def assert_done_once(run: AnalysisRun, proposals: int) -> None:
    run.refresh_from_db()
    assert run.status == Status.COMPLETED
    assert run.batches_done == run.batches_total
    assert run.batches_failed == 0
    assert TaskProposal.objects.filter(run=run).count() == run.proposals_created == proposals
    cited = list(TaskProposal.objects.filter(run=run).values_list("source_messages", flat=True))
    assert len(cited) == len(set(cited))  # no message proposed twice
    assert sum(Batch.objects.filter(run=run).values_list("llm_calls", flat=True)) == run.llm_calls


# Release and redelivery, by the session's worker (tests that need it first: it starts once)


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_heartbeat_stopped_is_released_and_done_once_on_redelivery(
    settings: Any, fake_openai: FakeOpenAI, live_worker: str
) -> None:
    settings.BATCH_LEASE_SECONDS = 1.0
    fake_openai.default = propose_actionable
    setup = make_setup(fake_openai.base_url, budget=3000)
    with transaction.atomic():
        # A worker took the batch and died before the run's task (now queued) ran: the task
        # finds it held and leaves it.
        run, (batch_id,) = planned_run(setup)
        claim_batch(batch_id=batch_id, claim_id="dead-worker")
    time.sleep(1.5)
    batch = Batch.objects.get(pk=batch_id)
    assert (batch.status, batch.claim_id) == (Batch.Status.RUNNING, "dead-worker")

    resume_stale_runs_task()

    run = wait_for_status(run, Status.COMPLETED, Status.FAILED, timeout=20)
    assert_done_once(run, proposals=5)
    batch = Batch.objects.get(pk=batch_id)
    assert batch.attempts == 2
    assert batch.claim_id != "dead-worker"
    assert batch.llm_calls == 1


# What /healthz says


def stalled_run(setup: dict[str, Any], *, status: str = Status.RUNNING) -> tuple[AnalysisRun, Batch]:
    """A run with a batch done, a batch whose worker is alive and one whose worker died."""
    run = AnalysisRunFactory(assignment=setup["assignment"], projects=[setup["project"]], status=status)
    AnalysisRun.objects.filter(pk=run.pk).update(batches_total=3, batches_done=1)
    now = timezone.now()
    BatchFactory(run=run, index=0, status=Batch.Status.DONE, attempts=1)
    BatchFactory(
        run=run, index=1, status=Batch.Status.RUNNING, claim_id="alive", started_at=now, heartbeat_at=now
    )
    dead = now - timedelta(minutes=5)
    stalled = BatchFactory(
        run=run, index=2, status=Batch.Status.RUNNING, claim_id="dead", started_at=dead, heartbeat_at=dead
    )
    return run, stalled


@pytest.mark.django_db
def test_healthz_counts_stalled_batches_and_stays_200(client: Client, live_worker: str) -> None:
    setup = make_setup("http://127.0.0.1:9/v1")
    stalled_run(setup)
    stalled_run(setup, status=Status.CANCELLED)  # a cancelled run's batches are no one's worry

    response = client.get("/healthz")

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["stalled_batches"] == 1


# The heartbeat


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_advances_while_a_slow_llm_call_runs(
    settings: Any, fake_openai: FakeOpenAI, no_worker: None
) -> None:
    settings.BATCH_LEASE_SECONDS = 0.6  # a heartbeat every 0.2 s
    fake_openai.default = propose_actionable
    fake_openai.latency = 2.0  # more than three leases
    run, (batch_id,) = planned_run(make_setup(fake_openai.base_url, budget=3000))

    worker = in_thread(batch_id, "slow-task")
    beats: list[datetime] = []
    resumed = False
    while worker.is_alive():
        batch = Batch.objects.get(pk=batch_id)
        if batch.status == Batch.Status.RUNNING:
            beats.append(batch.heartbeat_at)
            if not resumed and batch.heartbeat_at - batch.started_at > timedelta(seconds=1):
                resume_stale_runs_task()  # the periodic task, mid-call: the batch is alive
                resumed = True
        time.sleep(0.05)
    worker.join()

    assert resumed
    assert len(set(beats)) >= 5
    assert max(beats) - min(beats) >= timedelta(seconds=1.2)
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == Batch.Status.DONE
    assert batch.attempts == 1  # never released, never taken again
    assert len(fake_openai.completion_requests()) == 1
    assert not any(t.name == f"batch-{batch_id}-heartbeat" for t in threading.enumerate())
    assert_done_once(run, proposals=5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("redelivery", ["task-1", "task-2"], ids=["its-own-task", "another-task"])
def test_a_stale_holder_cannot_commit_after_its_batch_is_taken_over(
    settings: Any, fake_openai: FakeOpenAI, no_worker: None, redelivery: str
) -> None:
    settings.BATCH_LEASE_SECONDS = 30.0  # the holder renews only after 10 s: not in this test
    fake_openai.queue(answer("Stale answer", after=1.0), answer("Fresh answer", after=3.0))
    run, (batch_id,) = planned_run(make_setup(fake_openai.base_url, budget=3000))
    holder = in_thread(batch_id, "task-1")
    deadline = time.monotonic() + 10
    while not fake_openai.completion_requests():
        assert time.monotonic() < deadline, "the holder never asked the LLM"
        time.sleep(0.01)
    # Its worker froze: no heartbeat for longer than the lease. Released, the batch is
    # taken by the next delivery, the broker's copy of the same task or another one.
    Batch.objects.filter(pk=batch_id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    resume_stale_runs(lease_seconds=settings.BATCH_LEASE_SECONDS)

    process_batch(batch_id=batch_id, claim_id=redelivery)  # answered after the holder's answer
    holder.join(timeout=10)

    titles = list(TaskProposal.objects.filter(run=run).values_list("title", flat=True))
    assert titles == ["Fresh answer"]
    batch = Batch.objects.get(pk=batch_id)
    assert (batch.status, batch.claim_id, batch.attempts) == (Batch.Status.DONE, redelivery, 2)
    assert batch.llm_calls == 1  # the stale holder's call counts nowhere
    assert_done_once(run, proposals=1)


# A worker killed whole


LEASE = 2.0


@pytest.fixture
def short_lease_worker(settings: Any, worker_process: WorkerProcess) -> Iterator[WorkerProcess]:
    """A worker of its own with a 2 s batch lease (and this process's lease the same), the
    session's worker stopped so that it takes none of the test's tasks."""
    worker_process.stop()
    celery_app.control.purge()
    settings.BATCH_LEASE_SECONDS = LEASE
    worker = WorkerProcess(
        f"lease-worker-{os.getpid()}@localhost", {**worker_process.env, "BATCH_LEASE_SECONDS": str(LEASE)}
    )
    worker.start()
    yield worker
    celery_app.control.purge()
    worker.stop()


@pytest.mark.django_db(transaction=True)
def test_a_run_completes_soon_after_its_whole_worker_is_killed(
    fake_openai: FakeOpenAI, short_lease_worker: WorkerProcess
) -> None:
    fake_openai.default = propose_actionable
    fake_openai.latency = 1.0
    setup = make_setup(fake_openai.base_url, budget=20, lines=REQUESTS)
    # More provider slots than the worker has processes: a slot the dead worker held is
    # freed by its own lease (the provider's timeout + 30 s), not the batch's.
    LLMProvider.objects.filter(pk=setup["assignment"].agent.provider_id).update(max_concurrency=4)
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    deadline = time.monotonic() + 30
    while not (
        Batch.objects.filter(run=run, status=Batch.Status.DONE).count() >= 3
        and Batch.objects.filter(run=run, status=Batch.Status.RUNNING).exists()
    ):
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)
    short_lease_worker.kill()
    held = set(Batch.objects.filter(run=run, status=Batch.Status.RUNNING).values_list("pk", flat=True))
    assert held, "the worker died holding no batch"

    short_lease_worker.start()
    restarted = time.monotonic()
    run.refresh_from_db()
    while run.status == Status.RUNNING:
        assert time.monotonic() - restarted < 30, f"run {run.pk} still running 30 s after the restart"
        resume_stale_runs_task()  # what beat runs every 30 s, here more often
        time.sleep(0.5)
        run.refresh_from_db()

    assert run.batches_total == len(REQUESTS)
    assert_done_once(run, proposals=len(REQUESTS))
    assert all(
        attempts == 2 for attempts in Batch.objects.filter(pk__in=held).values_list("attempts", flat=True)
    )


# The run page, and the operator's action


@pytest.mark.django_db
def test_the_run_page_shows_stalled_batches_and_a_lead_requeues_them(
    client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    setup = make_setup("http://127.0.0.1:9/v1")
    run, stalled = stalled_run(setup)
    client.force_login(setup["lead"])

    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()
    page = client.get(reverse("analysis:run-detail", args=[run.pk])).content.decode()

    assert (state["stalled_batches"], state["stalled_indexes"], state["can_requeue"]) == (1, [2], True)
    assert "no heartbeat" in state["stalled_notice"]
    assert state["stalled_notice"] in page
    assert '<tr data-batch="2" data-status="running" data-stalled>' in page
    assert '<tr data-batch="1" data-status="running">' in page
    requeue = reverse("analysis:run-requeue", args=[run.pk])
    assert f'action="{requeue}" class="inline" data-show="can_requeue">' in page

    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(requeue, follow=True)

    assert "1 stalled batch(es) queued again." in response.content.decode()
    stalled.refresh_from_db()
    assert (stalled.status, stalled.claim_id) == (Batch.Status.PENDING, "")
    assert Batch.objects.get(run=run, index=1).status == Batch.Status.RUNNING  # alive: left alone
    assert queued  # its event and the batches' tasks, sent on commit
    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()
    assert (state["stalled_batches"], state["can_requeue"], state["stalled_notice"]) == (0, False, "")

    again = client.post(requeue, follow=True)
    assert f"Run {run.pk} has no stalled batches." in again.content.decode()


@pytest.mark.django_db
def test_the_api_requeues_stalled_batches_for_a_lead(django_capture_on_commit_callbacks: Any) -> None:
    setup = make_setup("http://127.0.0.1:9/v1")
    run, stalled = stalled_run(setup)
    api = APIClient()
    api.force_authenticate(setup["lead"])
    url = f"/api/v1/runs/{run.pk}/requeue-stalled/"

    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(url)

    assert response.status_code == 202, response.content
    stalled.refresh_from_db()
    assert stalled.status == Batch.Status.PENDING
    again = api.post(url)
    assert again.status_code == 400
    assert again.json()["code"] == "no_stalled_batches"


@pytest.mark.django_db
@pytest.mark.parametrize(("role", "expected"), [("member", 403), ("reviewer", 403), ("outsider", 404)])
def test_requeueing_is_refused_to_whoever_may_not_operate_the_run(role: str, expected: int) -> None:
    setup = make_setup("http://127.0.0.1:9/v1")
    run, stalled = stalled_run(setup)
    user = UserFactory(username=f"the-{role}")
    if role != "outsider":
        ProjectMembershipFactory(project=setup["project"], user=user, role=role)
    page, api = Client(), APIClient()
    page.force_login(user)
    api.force_authenticate(user)

    assert page.post(reverse("analysis:run-requeue", args=[run.pk])).status_code == expected
    assert api.post(f"/api/v1/runs/{run.pk}/requeue-stalled/").status_code == expected
    stalled.refresh_from_db()
    assert (stalled.status, stalled.claim_id) == (Batch.Status.RUNNING, "dead")


@pytest.mark.django_db
def test_the_call_a_dead_worker_was_making_counts_when_its_batch_is_released(fake_openai) -> None:
    setup = make_setup(fake_openai.base_url)
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()
    begin_run(run_id=run.pk)
    batch_id = plan_run(run_id=run.pk)[0]
    now = timezone.now()
    Batch.objects.filter(pk=batch_id).update(
        status=Batch.Status.RUNNING,
        claim_id="dead",
        attempts=1,
        started_at=now - timedelta(minutes=10),
        heartbeat_at=now - timedelta(minutes=8),
    )

    resume_stale_runs(lease_seconds=60)

    batch = Batch.objects.get(pk=batch_id)
    run.refresh_from_db()
    assert (batch.status, batch.llm_calls) == (Batch.Status.PENDING, 1)
    assert batch.llm_seconds == pytest.approx(120, abs=1)
    assert (run.llm_calls, run.llm_seconds) == (1, pytest.approx(120, abs=1))
    celery_app.control.purge()
