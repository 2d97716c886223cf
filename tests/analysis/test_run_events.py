"""Run events reach a subscribed browser over the real channel layer, numbered and in order,
each with the run's whole state: its counters and every batch's."""

from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client

from analysis import services
from analysis.models import AnalysisRun, Batch
from conftest import WorkerProcess
from tasktracker.asgi import application
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.fakes.openai_server import FakeOpenAI, FakeReply, propose_actionable

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    yield
    await sync_to_async(connections.close_all)()


def prepare(base_url: str) -> tuple[AnalysisRun, str]:
    setup = make_setup(base_url)
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()  # the run's queued task: this test plays the worker
    client = Client()
    client.force_login(setup["lead"])
    return run, client.cookies["sessionid"].value


def run_pipeline(run_id: int) -> None:
    services.begin_run(run_id=run_id)
    for batch_id in services.plan_run(run_id=run_id):
        services.process_batch(batch_id=batch_id, claim_id=f"test-{batch_id}")


def planned(base_url: str) -> tuple[AnalysisRun, str, list[int]]:
    """A running run with its batches planned and none processed; a session to watch it."""
    run, session = prepare(base_url)
    services.begin_run(run_id=run.pk)
    return run, session, services.plan_run(run_id=run.pk)


async def watch(run: AnalysisRun, session: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application,
        f"/ws/runs/{run.pk}/",
        headers=[(b"origin", b"http://localhost"), (b"cookie", f"sessionid={session}".encode())],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


def statuses(event: dict) -> list[str]:
    return [batch["status"] for batch in event["data"]["batches"]]


async def test_a_run_streams_numbered_events_in_order(
    fake_openai: FakeOpenAI, worker_process: WorkerProcess
) -> None:
    # This test drives the pipeline itself: no worker may take the run's task meanwhile.
    await sync_to_async(worker_process.stop)()
    fake_openai.default = propose_actionable
    run, session = await sync_to_async(prepare)(fake_openai.base_url)
    communicator = await watch(run, session)
    await sync_to_async(run_pipeline)(run.pk)
    events = []
    while not events or events[-1]["event"] not in ("run_completed", "run_failed"):
        events.append(await communicator.receive_json_from(timeout=5))
    await communicator.disconnect()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))
    names = [e["event"] for e in events]
    assert names[0] == "run_started"
    assert "progress_updated" in names and "proposals_created" in names
    assert names[-1] == "run_completed"
    final = events[-1]["data"]
    assert final["status"] == "completed"
    assert final["batches_done"] == final["batches_total"] > 0
    assert final["proposals_created"] == 5
    assert final["prompt_tokens"] == 120 * final["batches_total"]
    # A progress event once the batches are planned and after every batch; proposals and
    # the end are announced after it.
    assert names.count("progress_updated") == 1 + final["batches_total"]
    assert all(
        names[i - 1] == "progress_updated" for i, name in enumerate(names) if name == "proposals_created"
    )
    # Each batch is announced running when claimed, and done in the events after it.
    started = [e for e in events if e["event"] == "batch_started"]
    assert [statuses(e).index("running") for e in started] == list(range(final["batches_total"]))
    assert statuses(events[-1]) == ["done"] * final["batches_total"]
    assert sum(batch["proposals"] for batch in final["batches"]) == 5


async def test_a_batch_is_announced_running_then_failed_with_its_error(
    fake_openai: FakeOpenAI, worker_process: WorkerProcess
) -> None:
    await sync_to_async(worker_process.stop)()
    run, session, batch_ids = await sync_to_async(planned)(fake_openai.base_url)
    communicator = await watch(run, session)
    fake_openai.replies.append(FakeReply.refused())

    await sync_to_async(services.process_batch)(batch_id=batch_ids[0], claim_id="test-0")
    started = await communicator.receive_json_from(timeout=5)
    failed = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()

    others = ["pending"] * (len(batch_ids) - 1)
    assert started["event"] == "batch_started"
    assert statuses(started) == ["running", *others]
    assert started["data"]["batches"][0]["attempts"] == 1
    assert (failed["event"], failed["seq"]) == ("progress_updated", started["seq"] + 1)
    assert statuses(failed) == ["failed", *others]
    assert failed["data"]["batches"][0]["error"] == "The model refused: I can't help with that."
    assert failed["data"]["batches_failed"] == 1
    assert failed["data"]["failed_percent"] > 0
    assert failed["data"]["progress_label"] == f"0 of {len(batch_ids)} batches done, 1 failed"


async def test_a_batch_out_of_attempts_is_failed_without_being_announced_running(
    fake_openai: FakeOpenAI, worker_process: WorkerProcess, settings
) -> None:
    await sync_to_async(worker_process.stop)()
    run, session, batch_ids = await sync_to_async(planned)(fake_openai.base_url)
    tries = settings.ANALYSIS_MAX_BATCH_ATTEMPTS
    await sync_to_async(Batch.objects.filter(pk=batch_ids[0]).update)(attempts=tries)
    communicator = await watch(run, session)

    await sync_to_async(services.process_batch)(batch_id=batch_ids[0], claim_id="test-0")
    event = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()

    assert event["event"] == "progress_updated"
    assert statuses(event)[0] == "failed"
    assert event["data"]["batches"][0]["error"] == f"Gave up after {tries} attempts."
    assert fake_openai.requests == []
