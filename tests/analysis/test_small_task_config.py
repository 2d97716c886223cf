"""The small models' task config through the real pipeline and the fake OpenAI server: what is
sent (sources limited to the batch, no project context) and how its answers are read."""

from typing import Any

import pytest

from agents.defaults import SMALL_TASK_CONFIG_NAME
from agents.models import AgentTaskAssignment
from agents.services import ensure_small_task_config
from analysis import services
from analysis.models import AnalysisRun
from proposals.models import TaskProposal
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.fakes.openai_server import FakeOpenAI, FakeReply

pytestmark = pytest.mark.django_db


def run_with(setup: dict[str, Any], assignment: AgentTaskAssignment) -> AnalysisRun:
    run = services.start_run(
        window_start=WINDOW_START, window_end=WINDOW_END, projects=[setup["project"]], assignment=assignment
    )
    celery_app.control.purge()  # the run's queued task: this test plays the worker
    services.begin_run(run_id=run.pk)
    for batch_id in services.plan_run(run_id=run.pk):
        services.process_batch(batch_id=batch_id, claim_id=f"test-{batch_id}")
    run.refresh_from_db()
    return run


def small_assignment(setup: dict[str, Any]) -> AgentTaskAssignment:
    task_config, _ = ensure_small_task_config()
    return AgentTaskAssignment.objects.create(agent=setup["assignment"].agent, task_config=task_config)


def proposal(number: int, title: str, confidence: float = 0.95) -> dict[str, Any]:
    return {"source_message_ids": [number], "title": title, "assignee": "Alice", "confidence": confidence}


def test_ensuring_the_small_task_config_twice_creates_it_once() -> None:
    first, created = ensure_small_task_config()
    second, created_again = ensure_small_task_config()

    assert (created, created_again) == (True, False)
    assert first.pk == second.pk
    assert first.name == SMALL_TASK_CONFIG_NAME


def test_a_small_config_answer_becomes_proposals_of_the_runs_project(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    fake_openai.replies.append(FakeReply.ok({"proposals": [proposal(1, "Fix the login crash", 0.8)]}))

    run = run_with(setup, small_assignment(setup))

    assert run.status == AnalysisRun.Status.COMPLETED
    (saved,) = TaskProposal.objects.filter(run=run)
    assert saved.title == "Fix the login crash"
    assert saved.project == setup["project"]
    assert saved.confidence == 0.8
    assert saved.suggested_assignee == setup["lead"]
    assert [m.text for m in saved.source_messages.all()] == ["The Android app crashes on login since 2.3.1"]


def test_the_schema_sent_limits_sources_to_the_batchs_numbers(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)

    run = run_with(setup, small_assignment(setup))

    (request,) = fake_openai.completion_requests()
    schema = request["response_format"]["json_schema"]["schema"]
    sources = schema["properties"]["proposals"]["items"]["properties"]["source_message_ids"]
    # A range, not an enum of every number: it is shorter once a batch has four messages.
    assert run.messages_kept > 3
    assert sources["items"] == {"type": "integer", "minimum": 1, "maximum": run.messages_kept}
    assert sources["maxItems"] == 1  # the task config's own bounds stay


def test_a_config_whose_answer_names_no_project_gets_no_project_context(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)

    run_with(setup, small_assignment(setup))
    run_with(setup, setup["assignment"])  # the default config names a project

    small, default = (r["messages"][1]["content"] for r in fake_openai.completion_requests())
    assert small.startswith("<messages>")
    assert "Context:" not in small
    assert default.startswith('Context: {"projects":[{"slug":"acme-mobile"')


def test_a_title_repeated_in_one_answer_is_saved_once_and_the_repeat_recorded(
    fake_openai: FakeOpenAI,
) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    answer = [
        proposal(2, "Fix the login crash"),
        proposal(4, "fix the  Login crash"),
        proposal(4, "Add dark mode"),
    ]
    fake_openai.replies.append(FakeReply.ok({"proposals": answer}))

    run = run_with(setup, small_assignment(setup))

    assert sorted(TaskProposal.objects.filter(run=run).values_list("title", flat=True)) == [
        "Add dark mode",
        "Fix the login crash",
    ]
    assert "'fix the Login crash' was already given" in run.batches.get().error
