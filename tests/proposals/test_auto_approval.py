"""Auto-approval that has earned it: off by default; on, a project's rule approves new-task
proposals of a band that repeat nothing while reviewers' last decisions in the band allow it,
as the system, undoably, shown apart; it stops by itself when reviewers reject more."""

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from agents.models import AgentTaskAssignment
from analysis import services as analysis
from analysis.models import AnalysisRun, Batch
from analysis.services.batches import auto_approve_batch
from projects.models import Project, Task
from projects.services import bump_config, create_project
from proposals.models import ReviewEvent, TaskProposal
from proposals.services import approve_proposal, reject_proposal, undo_last_action
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import (
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    BatchFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)
from tests.fakes.openai_server import FakeOpenAI, FakeReply
from tests.projects.helpers import form_data

pytestmark = pytest.mark.django_db

RULE = {"auto_approve_band": "high", "auto_approve_min_rate": 0.9, "auto_approve_min_reviews": 10}


@pytest.fixture
def setup() -> dict[str, Any]:
    lead = UserFactory(username="lead")
    reviewer = UserFactory(username="reviewer")
    project = create_project(
        name="Acme", slug="acme", user=lead, changes={"team": [{"user_id": reviewer.pk, "role": "reviewer"}]}
    )
    return {
        "lead": lead,
        "reviewer": reviewer,
        "project": project,
        "assignment": AgentTaskAssignmentFactory(),
    }


def turn_on(setup: dict[str, Any], **rule: Any) -> None:
    bump_config(project=setup["project"], user=setup["lead"], changes={**RULE, **rule})


def new_run(setup: dict[str, Any], assignment: AgentTaskAssignment | None = None) -> AnalysisRun:
    """A run whose snapshot holds the project's rule as its configuration has it now."""
    config = setup["project"].configs.get(is_current=True)
    snapshot = {
        "project_id": setup["project"].pk,
        "auto_approve": {
            "band": config.auto_approve_band,
            "min_rate": config.auto_approve_min_rate,
            "min_reviews": config.auto_approve_min_reviews,
        },
    }
    return AnalysisRunFactory(
        assignment=assignment or setup["assignment"],
        projects=[setup["project"]],
        config_snapshot={"projects": [snapshot]},
    )


def proposal(
    setup: dict[str, Any], run: AnalysisRun, batch: Batch | None = None, **fields: Any
) -> TaskProposal:
    values = {"confidence": 0.95, "band": "high", "recommendation": "new_task", **fields}
    return TaskProposalFactory(project=setup["project"], run=run, batch=batch, **values)


def reviews(setup: dict[str, Any], *, approved: int = 0, rejected: int = 0, band: str = "high") -> None:
    """Reviewers' decisions on proposals of an earlier run by the same agent."""
    run = new_run(setup)
    for _ in range(approved):
        approve_proposal(proposal_id=proposal(setup, run, band=band).pk, user=setup["reviewer"])
    for _ in range(rejected):
        reject_proposal(proposal_id=proposal(setup, run, band=band).pk, user=setup["reviewer"], reason="No")


def new_batch(setup: dict[str, Any], count: int = 1, **fields: Any) -> tuple[Batch, list[TaskProposal]]:
    """A committed batch of a new run, with `count` proposals; then auto-approval runs."""
    run = new_run(setup)
    batch = BatchFactory(run=run)
    made = [proposal(setup, run, batch, **fields) for _ in range(count)]
    auto_approve_batch(batch=batch)
    for item in made:
        item.refresh_from_db()
    return batch, made


def test_it_is_off_by_default(setup: dict[str, Any]) -> None:
    reviews(setup, approved=60)
    config = setup["project"].configs.get(is_current=True)
    assert (config.auto_approve_band, config.auto_approve_min_rate, config.auto_approve_min_reviews) == (
        "",
        0.95,
        50,
    )
    _, [item] = new_batch(setup)
    assert item.status == "pending"


def test_it_starts_once_enough_reviews_reach_the_rate(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=9)
    _, [early] = new_batch(setup)
    assert early.status == "pending"

    reviews(setup, approved=1)
    _, [item] = new_batch(setup)

    assert item.status == "approved" and item.auto_approved
    event = item.review_events.get()
    assert (event.user, event.action) == (None, ReviewEvent.Action.AUTO_APPROVE)
    assert "band high: 10 of 10 last reviews approved, >= 90%" in event.note
    assert item.reviewer is None and item.review_note == event.note
    task = Task.objects.get(pk=item.task_id)
    assert (task.title, task.created_by, event.task) == (item.title, None, task)


def test_a_rate_under_the_rule_does_not_start_it(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=8, rejected=2)
    _, [item] = new_batch(setup)
    assert item.status == "pending"


@pytest.mark.parametrize(
    "fields",
    [
        {"band": "medium", "confidence": 0.8},
        {"recommendation": "update_existing"},
        {"recommendation": "merge"},
        {"similar_proposal": "pending"},
        {"similar_task": "task"},
    ],
)
def test_only_new_tasks_of_the_band_that_repeat_nothing(
    setup: dict[str, Any], fields: dict[str, Any]
) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    if fields.get("similar_proposal"):
        fields = {"similar_proposal": proposal(setup, new_run(setup)), "similarity_kind": "similar_title"}
    if fields.get("similar_task"):
        fields = {"similar_task": TaskFactory(project=setup["project"]), "similarity_kind": "similar_title"}
    _, [item] = new_batch(setup, **fields)
    assert item.status == "pending"


def test_only_reviews_of_the_same_agent_count(setup: dict[str, Any]) -> None:
    turn_on(setup)
    other_agent = AgentTaskAssignmentFactory()
    run = new_run(setup, other_agent)
    for _ in range(10):
        approve_proposal(proposal_id=proposal(setup, run).pk, user=setup["reviewer"])
    _, [item] = new_batch(setup)
    assert item.status == "pending"


def test_a_reviewer_undoes_it_like_any_approval(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    batch, [item] = new_batch(setup)
    task_id = item.task_id

    restored = undo_last_action(proposal_id=item.pk, user=setup["reviewer"])

    assert restored.status == "pending" and restored.task is None
    assert not Task.objects.filter(pk=task_id).exists()
    assert not restored.auto_approved
    # Once a reviewer has stepped in, the system leaves the proposal to them.
    auto_approve_batch(batch=batch)
    restored.refresh_from_db()
    assert restored.status == "pending"


def test_it_stops_by_itself_when_reviewers_reject_more(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    _, [first] = new_batch(setup)
    assert first.auto_approved
    # A reviewer undoes the auto-approval and rejects it: a rejection of the band's.
    undo_last_action(proposal_id=first.pk, user=setup["reviewer"])
    reject_proposal(proposal_id=first.pk, user=setup["reviewer"], reason="Not a task")
    reviews(setup, rejected=1)

    _, [item] = new_batch(setup)

    # The last 10 reviews: 8 approvals, 2 rejections, under 90%.
    assert item.status == "pending"
    # Approvals bring it back once they outweigh the rejections in the last 10 again.
    reviews(setup, approved=8)
    _, [still] = new_batch(setup)
    assert still.status == "pending"
    reviews(setup, approved=1)
    _, [again] = new_batch(setup)
    assert again.auto_approved


def test_its_own_approvals_never_count_as_reviews(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    _, made = new_batch(setup, count=3)
    assert all(item.auto_approved for item in made)
    # Counting its own three, there would be 13 approvals of the band.
    turn_on(setup, auto_approve_min_reviews=12)
    _, [item] = new_batch(setup)
    assert item.status == "pending"


def test_turning_the_rule_off_stops_it_for_runs_already_going(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    run = new_run(setup)
    bump_config(project=setup["project"], user=setup["lead"], changes={"auto_approve_band": ""})
    batch = BatchFactory(run=run)
    item = proposal(setup, run, batch)
    auto_approve_batch(batch=batch)
    item.refresh_from_db()
    assert item.status == "pending"


def test_a_proposal_that_cannot_become_a_task_is_left_pending(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    # A priority no task may have (a task config's own schema may allow it).
    _, [item] = new_batch(setup, priority="urgent")
    assert item.status == "pending" and item.task is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"auto_approve_band": "low"}, "auto_approve_band"),
        ({"auto_approve_min_rate": 0.4}, "auto_approve_min_rate"),
        ({"auto_approve_min_rate": 1.5}, "auto_approve_min_rate"),
        ({"auto_approve_min_reviews": 9}, "auto_approve_min_reviews"),
    ],
)
def test_a_bad_rule_is_400_under_its_field(
    setup: dict[str, Any], payload: dict[str, Any], field: str
) -> None:
    client = APIClient()
    client.force_authenticate(setup["lead"])
    response = client.patch("/api/v1/projects/acme/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert setup["project"].configs.count() == 1


def test_the_rule_is_a_patch_version_shown_in_the_api(setup: dict[str, Any]) -> None:
    client = APIClient()
    client.force_authenticate(setup["lead"])
    response = client.patch("/api/v1/projects/acme/", RULE, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["new_version"] == "1.0.1"
    body = client.get("/api/v1/projects/acme/configs/1.0.1/").json()
    assert (body["auto_approve_band"], body["auto_approve_min_rate"], body["auto_approve_min_reviews"]) == (
        "high",
        0.9,
        10,
    )


def test_the_edit_page_saves_the_rule_and_refuses_a_bad_one(setup: dict[str, Any]) -> None:
    client = Client()
    client.force_login(setup["lead"])
    page = client.get("/projects/acme/edit/")
    assert page.status_code == 200
    data = form_data(page)
    bad = client.post("/projects/acme/edit/", {**data, "auto_approve_min_reviews": "5"})
    assert bad.status_code == 400
    assert "greater than or equal to 10" in bad.content.decode()

    client.post("/projects/acme/edit/", {**data, "auto_approve_band": "medium"})

    config = setup["project"].configs.get(is_current=True)
    assert (config.version, config.auto_approve_band) == ("1.0.1", "medium")
    assert "new-task proposals of the medium band" in client.get("/projects/acme/").content.decode()


def test_the_queue_and_the_api_show_auto_approvals_apart(setup: dict[str, Any]) -> None:
    turn_on(setup)
    reviews(setup, approved=10)
    _, [item] = new_batch(setup)
    client = Client()
    client.force_login(setup["reviewer"])

    queue = client.get("/review/?status=auto_approved").content.decode()
    approved = client.get("/review/?status=approved").content.decode()

    assert f'data-proposal-id="{item.pk}"' in queue and "auto-approved" in queue
    assert queue.count("data-proposal-id=") - queue.count('data-proposal-id=""') == 2  # page + list item
    assert approved.count('class="item-title"') == 11
    api = APIClient()
    api.force_authenticate(setup["reviewer"])
    body = api.get("/api/v1/proposals/?auto_approved=true").json()
    assert [(p["id"], p["auto_approved"], p["review_action"]) for p in body["results"]] == [
        (item.pk, True, "auto_approve")
    ]
    others = api.get("/api/v1/proposals/?auto_approved=false&status=approved").json()
    assert {p["auto_approved"] for p in others["results"]} == {False}
    assert len(others["results"]) == 10


# Through the pipeline: a run's batch is committed, then auto-approved.

_ID = re.compile(r"^#(\d+)", re.MULTILINE)


def answer(title: str, recommendation: str = "new_task") -> Callable[[dict[str, Any]], FakeReply]:
    def reply(request: dict[str, Any]) -> FakeReply:
        first = int(_ID.findall(request["messages"][-1]["content"])[0])
        return FakeReply.ok(
            {
                "proposals": [
                    {
                        "title": title,
                        "description": "",
                        "project": "acme-mobile",
                        "assignee": None,
                        "priority": "medium",
                        "category": "bug",
                        "tags": [],
                        "due_date": None,
                        "confidence": 0.8,
                        "reasoning": "",
                        "recommendation": recommendation,
                        "source_message_ids": [first],
                    }
                ]
            }
        )

    return reply


def test_a_run_auto_approves_and_its_figures_count_it_apart(fake_openai: FakeOpenAI) -> None:
    pipeline = make_setup(fake_openai.base_url, budget=10_000, lines=["The export to CSV drops the last row"])
    project: Project = pipeline["project"]
    lead = pipeline["lead"]
    bump_config(
        project=project,
        user=lead,
        changes={"auto_approve_band": "medium", "auto_approve_min_rate": 0.9, "auto_approve_min_reviews": 10},
    )
    earlier = AnalysisRunFactory(assignment=pipeline["assignment"], projects=[project])
    for _ in range(10):
        done = TaskProposalFactory(project=project, run=earlier, confidence=0.8)
        approve_proposal(proposal_id=done.pk, user=lead)
    fake_openai.default = answer("Fix the CSV export")
    run = analysis.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[project],
        assignment=pipeline["assignment"],
    )
    assert run.config_snapshot["projects"][0]["auto_approve"] == {
        "band": "medium",
        "min_rate": 0.9,
        "min_reviews": 10,
    }
    analysis.begin_run(run_id=run.pk)
    (batch_id,) = analysis.plan_run(run_id=run.pk)

    analysis.process_batch(batch_id=batch_id, claim_id="test")

    item = TaskProposal.objects.get(run=run)
    assert item.auto_approved and Task.objects.filter(pk=item.task_id, title="Fix the CSV export").exists()
    closed = analysis.close_run(run_id=run.pk)
    assert (closed.review_stats["approved"], closed.review_stats["auto_approved"]) == (1, 1)
    assert closed.review_stats["bands"]["medium"]["auto_approved"] == 1
    client = Client()
    client.force_login(lead)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert '<td data-field="auto_approved">1</td>' in page
