"""Whole runs through the real broker and a real Celery worker, against the fake LLM."""

import pytest

from analysis.models import AnalysisRun, Batch
from analysis.services import cancel_run, retry_failed_batches, start_run
from proposals.models import TaskProposal
from tasktracker.exceptions import DomainError
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup, wait_for_status
from tests.fakes.openai_server import FakeOpenAI, FakeReply, propose_actionable

pytestmark = pytest.mark.django_db(transaction=True)


def start(setup: dict, **kwargs: object) -> AnalysisRun:
    return start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
        user=setup["lead"],
        **kwargs,
    )


def test_a_run_turns_chat_into_proposals(live_worker: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = propose_actionable
    setup = make_setup(fake_openai.base_url)
    run = wait_for_status(start(setup), AnalysisRun.Status.COMPLETED)
    assert run.messages_fetched == 12
    assert run.messages_kept == 6
    assert run.prefilter_stats == {
        "acknowledgement": 2,
        "bot_command": 1,
        "emoji_only": 1,
        "exclude_keyword": 1,
        "filler": 1,  # "Morning all"
    }
    assert run.batches_total >= 2
    assert run.batches_done == run.batches_total
    assert run.batches_failed == 0
    titles = sorted(TaskProposal.objects.filter(run=run).values_list("title", flat=True))
    assert titles == [
        "Can you please add dark mode to settings?",
        "I think the crash comes from the token refresh",
        "Please fix the flaky checkout test before Friday",
        "Please update the release checklist",
        "The Android app crashes on login since 2.3.1",
    ]
    assert run.proposals_created == 5
    assert run.llm_calls == run.batches_total == len(fake_openai.completion_requests())
    assert run.prompt_tokens == 120 * run.batches_total
    assert run.completion_tokens == 40 * run.batches_total
    assert run.llm_seconds > 0
    proposal = TaskProposal.objects.get(title__startswith="Please update the release")
    assert proposal.project == setup["project"]
    assert proposal.suggested_assignee == setup["lead"]  # the default assignee
    assert [m.text for m in proposal.source_messages.all()] == ["Please update the release checklist"]
    assert run.messages.count() == 6
    assert run.started_at and run.finished_at


def test_a_failing_batch_fails_alone_and_the_run_completes(live_worker: str, fake_openai: FakeOpenAI) -> None:
    calls = {"n": 0}

    def first_malformed(request: dict) -> FakeReply:
        calls["n"] += 1
        return FakeReply.malformed() if calls["n"] == 1 else propose_actionable(request)

    fake_openai.default = first_malformed
    setup = make_setup(fake_openai.base_url)
    run = wait_for_status(start(setup), AnalysisRun.Status.COMPLETED)
    assert run.batches_failed == 1
    assert run.batches_done == run.batches_total - 1
    failed = Batch.objects.get(run=run, status=Batch.Status.FAILED)
    assert failed.error_kind == "malformed"
    assert "not valid JSON" in failed.error
    assert run.proposals_created == TaskProposal.objects.filter(run=run).count() > 0

    fake_openai.default = propose_actionable
    assert retry_failed_batches(run=run) == 1
    run = wait_for_status(run, AnalysisRun.Status.COMPLETED)
    assert (run.batches_failed, run.batches_done) == (0, run.batches_total)
    assert TaskProposal.objects.filter(run=run).count() == 5


def test_a_run_whose_every_batch_fails_is_failed(live_worker: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = lambda request: FakeReply.error(401, "bad key", code="invalid_api_key")
    setup = make_setup(fake_openai.base_url)
    run = wait_for_status(start(setup), AnalysisRun.Status.FAILED)
    assert run.batches_failed == run.batches_total > 0
    assert run.error == "Every batch failed."
    assert set(Batch.objects.filter(run=run).values_list("error_kind", flat=True)) == {"auth"}


def test_a_cancelled_run_stops_before_its_batches(live_worker: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = propose_actionable
    fake_openai.latency = 0.5
    setup = make_setup(fake_openai.base_url, budget=20)
    run = wait_for_status(start(setup), AnalysisRun.Status.RUNNING)
    cancel_run(run=run)
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.CANCELLED
    wait_for_status(run, AnalysisRun.Status.CANCELLED)
    processed = Batch.objects.filter(run=run, status__in=[Batch.Status.DONE, Batch.Status.FAILED]).count()
    assert processed < run.batches_total or run.batches_total == 0
    with pytest.raises(DomainError):
        cancel_run(run=run)


def test_an_overlapping_run_of_the_same_project_is_refused(
    live_worker: str, fake_openai: FakeOpenAI, settings
) -> None:
    # The worker this module's other tests started takes the first run from the broker:
    # `live_worker` waits for it at the end, or the test database's flush would race it.
    setup = make_setup(fake_openai.base_url)
    start(setup)
    with pytest.raises(DomainError) as error:
        start(setup)
    assert error.value.status == 409
    assert AnalysisRun.objects.count() == 1
