"""Every review action, its audit trail, and the moves it refuses."""

from datetime import date

import pytest

from analysis.models import AnalysisRun
from analysis.services import close_run
from projects.models import Task
from proposals.models import ReviewEvent, TaskProposal
from proposals.services import (
    approve_proposal,
    bulk_review,
    edit_proposal,
    mark_duplicate,
    merge_proposals,
    reject_proposal,
    reopen_proposal,
    split_proposal,
    undo_last_action,
)
from tasktracker.exceptions import DomainError
from tests.factories import (
    AnalysisRunFactory,
    MessageFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)
from tests.proposals.helpers import review_every_project

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewer():
    return review_every_project(UserFactory(username="rita"))


@pytest.fixture
def proposal():
    messages = [MessageFactory(text="The app crashes on login"), MessageFactory(text="Same on Pixel 8")]
    assignee = UserFactory(username="bob")
    return TaskProposalFactory(
        title="Fix the login crash",
        description="Crash after tapping Log in.",
        priority="high",
        category="bug",
        tags=["android"],
        due_date=date(2026, 12, 1),
        confidence=0.95,
        suggested_assignee=assignee,
        source_messages=messages,
    )


def test_approving_creates_a_task_linked_both_ways(proposal, reviewer) -> None:
    task = approve_proposal(proposal_id=proposal.pk, user=reviewer)
    proposal.refresh_from_db()
    assert (task.title, task.priority, task.category, task.tags) == (
        "Fix the login crash",
        "high",
        "bug",
        ["android"],
    )
    assert task.assignee == proposal.suggested_assignee
    assert task.due_date == date(2026, 12, 1)
    assert task.project == proposal.project
    assert proposal.task == task and list(task.proposals.all()) == [proposal]
    assert (proposal.status, proposal.reviewer) == (TaskProposal.Status.APPROVED, reviewer)
    event = proposal.review_events.get()
    assert (event.action, event.user, event.task) == ("approve", reviewer, task)
    assert (event.before["status"], event.after["status"]) == ("pending", "approved")


def test_approving_twice_is_refused(proposal, reviewer) -> None:
    approve_proposal(proposal_id=proposal.pk, user=reviewer)
    with pytest.raises(DomainError, match="only pending proposals can be approved"):
        approve_proposal(proposal_id=proposal.pk, user=reviewer)
    assert Task.objects.count() == 1


def test_approving_a_rejected_proposal_is_refused(proposal, reviewer) -> None:
    reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="Not a task")
    with pytest.raises(DomainError):
        approve_proposal(proposal_id=proposal.pk, user=reviewer)
    assert Task.objects.count() == 0


def test_edit_then_approve_uses_the_edits(proposal, reviewer) -> None:
    task = approve_proposal(
        proposal_id=proposal.pk, user=reviewer, edits={"title": "Fix token refresh", "priority": "critical"}
    )
    assert (task.title, task.priority) == ("Fix token refresh", "critical")
    event = proposal.review_events.get()
    assert event.before["title"] == "Fix the login crash" and event.after["title"] == "Fix token refresh"


def test_editing_keeps_it_pending_and_refuses_unknown_fields(proposal, reviewer) -> None:
    edit_proposal(proposal_id=proposal.pk, user=reviewer, edits={"description": "More detail"})
    proposal.refresh_from_db()
    assert (proposal.status, proposal.description) == ("pending", "More detail")
    with pytest.raises(DomainError, match="confidence cannot be edited"):
        edit_proposal(proposal_id=proposal.pk, user=reviewer, edits={"confidence": 1})


def test_an_update_existing_proposal_can_be_added_to_its_similar_task(reviewer) -> None:
    existing = TaskFactory(title="Login crash", description="Seen on Android.")
    proposal = TaskProposalFactory(
        project=existing.project, similar_task=existing, recommendation="update_existing"
    )
    task = approve_proposal(proposal_id=proposal.pk, user=reviewer, add_to_task=True)
    assert task == existing
    assert f"From proposal {proposal.pk}" in Task.objects.get(pk=existing.pk).description
    assert Task.objects.count() == 1
    assert proposal.review_events.get().action == "add_to_task"


def test_rejecting_needs_a_reason(proposal, reviewer) -> None:
    with pytest.raises(DomainError, match="Give a reason"):
        reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="  ")
    rejected = reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="Already fixed")
    assert (rejected.status, rejected.review_note) == ("rejected", "Already fixed")
    assert rejected.review_events.get().note == "Already fixed"


def test_merging_unites_the_sources_into_one_pending_proposal(reviewer) -> None:
    project = ProjectFactory()
    first = TaskProposalFactory(project=project, source_messages=[MessageFactory()])
    second = TaskProposalFactory(project=project, source_messages=[MessageFactory(), MessageFactory()])
    target = merge_proposals(proposal_ids=[first.pk, second.pk], user=reviewer)
    second.refresh_from_db()
    assert target.pk == first.pk and target.status == "pending"
    assert target.source_messages.count() == 3
    assert (second.status, second.merged_into) == ("merged", target)
    assert ReviewEvent.objects.filter(action="merge").count() == 2


def test_merging_across_projects_is_refused(reviewer) -> None:
    a, b = TaskProposalFactory(), TaskProposalFactory()
    with pytest.raises(DomainError, match="one project"):
        merge_proposals(proposal_ids=[a.pk, b.pk], user=reviewer)
    assert TaskProposal.objects.filter(status="pending").count() == 2


def test_splitting_divides_the_sources(reviewer) -> None:
    m1, m2 = MessageFactory(), MessageFactory()
    proposal = TaskProposalFactory(source_messages=[m1, m2], confidence=0.8)
    parts = split_proposal(
        proposal_id=proposal.pk,
        user=reviewer,
        parts=[
            {"title": "Part one", "source_message_ids": [m1.pk]},
            {"title": "Part two", "source_message_ids": [m2.pk]},
        ],
    )
    proposal.refresh_from_db()
    assert [list(p.source_messages.all()) for p in parts] == [[m1], [m2]]
    assert all(p.status == "pending" and p.confidence == 0.8 for p in parts)
    assert proposal.status == "merged"
    with pytest.raises(DomainError):
        split_proposal(
            proposal_id=parts[0].pk, user=reviewer, parts=[{"title": "x", "source_message_ids": [m1.pk]}]
        )


def test_a_split_must_give_every_source_to_a_part(reviewer) -> None:
    m1, m2 = MessageFactory(), MessageFactory()
    proposal = TaskProposalFactory(source_messages=[m1, m2])
    parts = [{"title": "a", "source_message_ids": [m1.pk]}, {"title": "b", "source_message_ids": [m1.pk]}]
    with pytest.raises(DomainError, match="Every source message"):
        split_proposal(proposal_id=proposal.pk, user=reviewer, parts=parts)
    assert TaskProposal.objects.count() == 1


def test_marking_a_duplicate(reviewer) -> None:
    original = TaskProposalFactory()
    duplicate = TaskProposalFactory(project=original.project)
    marked = mark_duplicate(proposal_id=duplicate.pk, of_id=original.pk, user=reviewer)
    assert (marked.status, marked.merged_into) == ("merged", original)
    with pytest.raises(DomainError):
        mark_duplicate(proposal_id=original.pk, of_id=original.pk, user=reviewer)


def test_undo_of_an_approval_removes_the_task_and_reopens(proposal, reviewer) -> None:
    approve_proposal(proposal_id=proposal.pk, user=reviewer)
    undone = undo_last_action(proposal_id=proposal.pk, user=reviewer)
    assert (undone.status, undone.task) == ("pending", None)
    assert Task.objects.count() == 0
    assert list(undone.review_events.order_by("created_at", "pk").values_list("action", flat=True)) == [
        "approve",
        "undo",
    ]
    with pytest.raises(DomainError, match="no review action to undo"):
        undo_last_action(proposal_id=proposal.pk, user=reviewer)


def test_undo_of_an_edit_restores_the_fields(proposal, reviewer) -> None:
    edit_proposal(proposal_id=proposal.pk, user=reviewer, edits={"title": "Renamed"})
    assert undo_last_action(proposal_id=proposal.pk, user=reviewer).title == "Fix the login crash"


def test_reopening_a_rejected_proposal(proposal, reviewer) -> None:
    reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="No")
    assert reopen_proposal(proposal_id=proposal.pk, user=reviewer).status == "pending"
    with pytest.raises(DomainError, match="only rejected or merged"):
        reopen_proposal(proposal_id=proposal.pk, user=reviewer)


def test_bulk_review_reports_what_it_refused(reviewer) -> None:
    a, b = TaskProposalFactory(), TaskProposalFactory()
    reject_proposal(proposal_id=b.pk, user=reviewer, reason="no")
    outcome = bulk_review(proposal_ids=[a.pk, b.pk], user=reviewer, action="approve")
    assert outcome.done == [a.pk]
    assert "only pending" in outcome.refused[b.pk]


def test_only_reviewers_and_the_projects_leads_may_review(proposal) -> None:
    # To someone not on the project, its proposals do not exist.
    with pytest.raises(DomainError) as error:
        approve_proposal(proposal_id=proposal.pk, user=UserFactory())
    assert error.value.status == 404
    lead = UserFactory()
    ProjectMembershipFactory(project=proposal.project, user=lead, role="lead")
    approve_proposal(proposal_id=proposal.pk, user=lead)
    member = UserFactory()
    ProjectMembershipFactory(project=proposal.project, user=member, role="member")
    other = TaskProposalFactory(project=proposal.project)
    with pytest.raises(DomainError) as error:
        reject_proposal(proposal_id=other.pk, user=member, reason="x")
    assert error.value.status == 403
    reviewer = ProjectMembershipFactory(project=proposal.project, role="reviewer").user
    reject_proposal(proposal_id=other.pk, user=reviewer, reason="x")
    other.refresh_from_db()
    assert (other.status, other.reviewer) == ("rejected", reviewer)


def test_closing_a_run_stores_its_review_figures(reviewer) -> None:
    run = AnalysisRunFactory(status=AnalysisRun.Status.COMPLETED)
    high = TaskProposalFactory(run=run, confidence=0.95)
    low = TaskProposalFactory(run=run, project=high.project, confidence=0.5)
    medium = TaskProposalFactory(run=run, project=high.project, confidence=0.8)
    with pytest.raises(DomainError, match="pending proposal"):
        close_run(run_id=run.pk)
    approve_proposal(proposal_id=high.pk, user=reviewer)
    reject_proposal(proposal_id=low.pk, user=reviewer, reason="noise")
    approve_proposal(proposal_id=medium.pk, user=reviewer)
    closed = close_run(run_id=run.pk)
    assert closed.status == "closed" and closed.closed_at
    stats = closed.review_stats
    assert (stats["approved"], stats["rejected"], stats["merged"]) == (2, 1, 0)
    assert stats["approval_rate"] == 0.667
    assert stats["bands"]["high"]["approval_rate"] == 1.0
    assert stats["bands"]["low"]["approval_rate"] == 0.0
