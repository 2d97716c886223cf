"""Reading an answer: each item becomes a proposal or a reason it was rejected
(`read_item`), in the order its checks run; `read_answer` keeps the answer's order,
remembers the titles it accepted, and caps what is left."""

from typing import Any

import pytest

from agents.models import TaskConfig
from analysis import services
from analysis.models import AnalysisRun
from projects.models import Project, ProjectMembership
from proposals.services import NewProposal
from sources.models import Message
from tests.factories import (
    AnalysisRunFactory,
    MessageFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def item(**fields: Any) -> dict[str, Any]:
    """An item as a model answers it, citing the prompt's message 1 unless told."""
    return {"title": "Fix the login crash", "confidence": 0.8, "source_message_ids": [1], **fields}


@pytest.fixture
def lead() -> Any:
    return UserFactory(username="alice", first_name="Alice")


@pytest.fixture
def project(lead: Any) -> Project:
    project = ProjectFactory(name="Acme Mobile", slug="acme-mobile", default_assignee=lead)
    ProjectMembershipFactory(project=project, user=lead, role=ProjectMembership.Role.LEAD)
    return project


@pytest.fixture
def messages() -> dict[int, Message]:
    return {m.pk: m for m in (MessageFactory(), MessageFactory(), MessageFactory())}


@pytest.fixture
def numbers(messages: dict[int, Message]) -> dict[int, int]:
    """The prompt's numbers 1..3 for the three messages."""
    return dict(enumerate(messages, start=1))


def read(
    entry: dict[str, Any],
    *,
    projects: dict[str, Project],
    messages: dict[int, Message],
    numbers: dict[int, int],
    titles: frozenset[str] = frozenset(),
) -> NewProposal | str:
    return services.read_item(
        entry, index=4, projects=projects, messages=messages, numbers=numbers, titles=titles
    )


def test_an_item_becomes_a_proposal_with_defaults_for_what_it_leaves_out(
    project: Project, lead: Any, messages: dict[int, Message], numbers: dict[int, int]
) -> None:
    proposal = read(
        item(title="  Fix   the login\ncrash ", source_message_ids=[3, 1], assignee="@Alice"),
        projects={project.slug: project},
        messages=messages,
        numbers=numbers,
    )
    assert isinstance(proposal, NewProposal)
    assert proposal.project == project
    assert proposal.source_messages == [messages[numbers[3]], messages[numbers[1]]]
    assert proposal.suggested_assignee == lead
    data = proposal.data
    assert (data.title, data.priority, data.category, data.tags, data.due_date) == (
        "Fix the login crash",
        "medium",
        "feature",
        [],
        None,
    )
    assert (data.confidence, data.recommendation, data.assignee_name) == (0.8, "new_task", "@Alice")


def test_an_item_without_a_title_is_untitled(
    project: Project, messages: dict[int, Message], numbers: dict[int, int]
) -> None:
    proposal = read(item(title=None), projects={project.slug: project}, messages=messages, numbers=numbers)
    assert isinstance(proposal, NewProposal)
    assert proposal.data.title == "(untitled)"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"source_message_ids": []}, "proposal 4: message ids [] are not in the batch"),
        ({"source_message_ids": [1, 9]}, "proposal 4: message ids [9] are not in the batch"),
        ({"source_message_ids": ["1"]}, "proposal 4: message ids [] are not in the batch"),
        ({"project": "web"}, "proposal 4: project 'web' is not one of the run's"),
        ({"confidence": 1.5}, "proposal 4: confidence 1.5 is not between 0 and 1"),
        ({"confidence": "high"}, "proposal 4: confidence 'high' is not between 0 and 1"),
        ({"title": "fix THE login crash"}, "proposal 4: the title 'fix THE login crash' was already given"),
        # The first failing check is the reason.
        ({"source_message_ids": [9], "confidence": 2}, "proposal 4: message ids [9] are not in the batch"),
        ({"project": "web", "confidence": 2}, "proposal 4: project 'web' is not one of the run's"),
    ],
)
def test_an_item_is_rejected_with_the_reason_of_its_first_failed_check(
    project: Project,
    messages: dict[int, Message],
    numbers: dict[int, int],
    fields: dict[str, Any],
    reason: str,
) -> None:
    other = ProjectFactory(slug="backend")
    projects = {project.slug: project, other.slug: other}
    entry = item(**{"project": "acme-mobile", **fields})
    assert (
        read(
            entry,
            projects=projects,
            messages=messages,
            numbers=numbers,
            titles=frozenset({"fix the login crash"}),
        )
        == reason
    )


def test_a_run_of_one_project_takes_any_project_name(
    project: Project, messages: dict[int, Message], numbers: dict[int, int]
) -> None:
    proposal = read(
        item(project="nonsense"), projects={project.slug: project}, messages=messages, numbers=numbers
    )
    assert isinstance(proposal, NewProposal)
    assert proposal.project == project


def run_of(project: Project, **caps: Any) -> AnalysisRun:
    run = AnalysisRunFactory(projects=[project])
    TaskConfig.objects.filter(pk=run.assignment.task_config_id).update(**caps)
    return AnalysisRun.objects.get(pk=run.pk)


def test_reading_an_answer_keeps_its_order_and_refuses_a_title_given_twice(
    project: Project, messages: dict[int, Message], numbers: dict[int, int]
) -> None:
    answer = {
        "proposals": [
            item(title="Fix the login crash", source_message_ids=[1]),
            item(title="Add dark mode", confidence=7, source_message_ids=[2]),
            item(title="Add dark mode", source_message_ids=[2]),
            item(title="FIX the login crash", source_message_ids=[3]),
            item(title="", source_message_ids=[3]),
            item(title="", source_message_ids=[3]),
        ]
    }
    proposals, rejected = services.read_answer(
        run=run_of(project, max_proposals_per_batch=10), answer=answer, messages=messages, numbers=numbers
    )
    # A title refused for another reason was not given; untitled items are never repeats.
    assert [p.data.title for p in proposals] == [
        "Fix the login crash",
        "Add dark mode",
        "(untitled)",
        "(untitled)",
    ]
    assert rejected == [
        "proposal 1: confidence 7 is not between 0 and 1",
        "proposal 3: the title 'FIX the login crash' was already given",
    ]


def test_an_answer_without_proposals_reads_as_nothing(
    project: Project, messages: dict[int, Message], numbers: dict[int, int]
) -> None:
    assert services.read_answer(run=run_of(project), answer={}, messages=messages, numbers=numbers) == (
        [],
        [],
    )


def test_reading_an_answer_caps_what_it_accepted(
    project: Project, messages: dict[int, Message], numbers: dict[int, int]
) -> None:
    answer = {
        "proposals": [item(title=f"Task {n}", confidence=n / 10, source_message_ids=[1]) for n in range(4)]
    }
    proposals, rejected = services.read_answer(
        run=run_of(project), answer=answer, messages=messages, numbers=numbers
    )
    assert [p.data.title for p in proposals] == ["Task 2", "Task 3"]
    assert rejected == ["2 proposals citing a message already cited 2 times were cut"]
