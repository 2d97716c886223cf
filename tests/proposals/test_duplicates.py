"""A new proposal that repeats a live proposal or a task is marked with what it repeats."""

from typing import Any

import pytest

from proposals.models import TaskProposal
from proposals.services import ProposalData, create_proposal
from tests.factories import MessageFactory, ProjectFactory, TaskFactory, TaskProposalFactory

pytestmark = pytest.mark.django_db


def data(title: str = "Fix the login crash on Android", **changes: Any) -> ProposalData:
    values: dict[str, Any] = {
        "title": title,
        "description": "",
        "priority": "medium",
        "category": "bug",
        "tags": [],
        "due_date": None,
        "confidence": 0.8,
        "reasoning": "",
        "recommendation": "new_task",
        "assignee_name": "",
    }
    return ProposalData(**{**values, **changes})


def propose(project: Any, messages: list[Any], title: str = "Fix the login crash on Android") -> TaskProposal:
    return create_proposal(
        project=project, data=data(title), source_messages=messages, suggested_assignee=None
    )


def test_a_proposal_citing_the_same_messages_as_a_live_one_is_marked_same_messages() -> None:
    project = ProjectFactory()
    messages = [MessageFactory(), MessageFactory()]
    original = TaskProposalFactory(project=project, title="Something else entirely", source_messages=messages)
    proposal = propose(project, messages)
    assert proposal.similar_proposal == original
    assert proposal.similar_task is None
    assert (proposal.similarity_kind, proposal.similarity_score) == ("same_messages", 1.0)
    assert set(proposal.source_messages.all()) == set(messages)


def test_overlapping_messages_are_scored_by_jaccard_and_the_best_overlap_wins() -> None:
    project = ProjectFactory()
    a, b, c, d = (MessageFactory() for _ in range(4))
    TaskProposalFactory(project=project, title="One", source_messages=[a, d])
    closer = TaskProposalFactory(project=project, title="Two", source_messages=[a, b, d])
    proposal = propose(project, [a, b, c])
    assert proposal.similar_proposal == closer
    assert (proposal.similarity_kind, proposal.similarity_score) == ("overlapping_messages", 0.5)


def test_an_approved_proposal_brings_its_task() -> None:
    project = ProjectFactory()
    message = MessageFactory()
    task = TaskFactory(project=project, title="Unrelated title")
    original = TaskProposalFactory(project=project, status="approved", task=task, source_messages=[message])
    proposal = propose(project, [message])
    assert (proposal.similar_proposal, proposal.similar_task) == (original, task)


def test_rejected_proposals_and_other_projects_are_not_duplicates() -> None:
    project = ProjectFactory()
    message = MessageFactory()
    TaskProposalFactory(project=project, status="rejected", title="Fix the login crash on Android")
    TaskProposalFactory(project=project, status="rejected", source_messages=[message])
    TaskProposalFactory(project=ProjectFactory(), source_messages=[message])
    TaskProposalFactory(project=ProjectFactory(), title="Fix the login crash on Android")
    proposal = propose(project, [message])
    assert proposal.similar_proposal is None and proposal.similar_task is None
    assert (proposal.similarity_kind, proposal.similarity_score) == ("", None)


def test_a_close_title_marks_a_similar_title_when_no_message_is_shared() -> None:
    project = ProjectFactory()
    original = TaskProposalFactory(project=project, title="Fix the login crash on android!")
    TaskProposalFactory(project=project, title="Add dark mode")
    proposal = propose(project, [MessageFactory()], title="Fix the  Login crash on Android")
    assert proposal.similar_proposal == original
    assert proposal.similar_task is None
    assert proposal.similarity_kind == "similar_title"
    assert 0.85 <= proposal.similarity_score < 1


def test_a_task_with_a_close_title_is_found_and_cancelled_tasks_are_not() -> None:
    project = ProjectFactory()
    TaskFactory(project=project, title="Fix the login crash on Android", status="cancelled")
    assert propose(project, [MessageFactory()]).similar_task is None
    task = TaskFactory(project=project, title="Fix login crash on Android")
    proposal = propose(project, [MessageFactory()], title="Fix the login crash on Android.")
    # The proposal just made has a closer title than the task: it wins.
    assert proposal.similar_proposal is not None and proposal.similar_task is None
    TaskProposal.objects.filter(similar_task=None).update(status="rejected")
    proposal = propose(project, [MessageFactory()], title="Fix the login crash on Android.")
    assert (proposal.similar_proposal, proposal.similar_task) == (None, task)
    assert proposal.similarity_kind == "similar_title"


def test_shared_messages_win_over_a_close_title() -> None:
    project = ProjectFactory()
    message = MessageFactory()
    TaskProposalFactory(project=project, title="Fix the login crash on Android")
    by_message = TaskProposalFactory(
        project=project, title="Other words", source_messages=[message, MessageFactory()]
    )
    proposal = propose(project, [message])
    assert proposal.similar_proposal == by_message
    assert proposal.similarity_kind == "overlapping_messages"
