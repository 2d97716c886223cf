"""Proposals and the tasks they become are written by one service each, whichever way a
reviewer goes (the API, the review pages, the admin): a split's parts are made by
`create_proposals`, so they are checked for duplicates like an answer's proposals; a task is
made, added to and deleted by `projects.services` (`create_task`, `append_to_task`,
`delete_task_if_unused`)."""

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from projects.models import Project, Task
from projects.services import append_to_task, create_task
from proposals.models import TaskProposal
from proposals.services import approve_proposal, undo_last_action
from sources.models import Message
from tasktracker.exceptions import DomainError
from tests.factories import MessageFactory, ProjectFactory, TaskFactory, TaskProposalFactory, UserFactory
from tests.proposals.helpers import review_every_project

pytestmark = pytest.mark.django_db

PROPOSALS = "/api/v1/proposals/"
TASK_FIELDS = [
    "project",
    "title",
    "description",
    "assignee",
    "status",
    "priority",
    "category",
    "tags",
    "due_date",
]


@pytest.fixture
def reviewer() -> Any:
    return review_every_project(UserFactory(username="rita"))


@pytest.fixture
def api(reviewer: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(reviewer)
    return client


@pytest.fixture
def pages(reviewer: Any) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


@pytest.fixture
def admin() -> Client:
    """Staff review every project; the admin's review buttons need nothing more."""
    client = Client()
    client.force_login(UserFactory(username="sam", is_staff=True))
    return client


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def stored_task(task_id: int) -> dict[str, Any]:
    return Task.objects.values(*TASK_FIELDS).get(pk=task_id)


# Splits: the parts are checked for duplicates


@dataclass
class SplitCase:
    proposal: TaskProposal
    other: TaskProposal
    checklist: Message
    crash: Message

    def parts(self) -> list[dict[str, Any]]:
        return [
            {"title": "Update the release checklist", "source_message_ids": [self.checklist.pk]},
            {"title": "Fix the login crash", "source_message_ids": [self.crash.pk]},
        ]


def split_case() -> SplitCase:
    """A proposal of two requests, one of which another pending proposal has already."""
    project = ProjectFactory()
    checklist = MessageFactory(text="Can someone update the release checklist?")
    crash = MessageFactory(text="The app crashes on login")
    other = TaskProposalFactory(project=project, title="Crash on log in", source_messages=[crash])
    proposal = TaskProposalFactory(
        project=project, title="Checklist and crash", source_messages=[checklist, crash]
    )
    return SplitCase(proposal, other, checklist, crash)


def marks(proposal: TaskProposal) -> tuple[Any, ...]:
    proposal.refresh_from_db()
    return (
        proposal.similar_proposal_id,
        proposal.similar_task_id,
        proposal.similarity_kind,
        proposal.similarity_score,
    )


def test_split_parts_from_the_api_and_the_review_page_are_marked_with_the_proposal_they_repeat(
    api: APIClient, pages: Client
) -> None:
    by_api, by_page = split_case(), split_case()

    response = api.post(f"{PROPOSALS}{by_api.proposal.pk}/split/", {"parts": by_api.parts()}, format="json")
    form = {"part-TOTAL_FORMS": 2, "part-INITIAL_FORMS": 0, "part-MIN_NUM_FORMS": 2, "part-MAX_NUM_FORMS": 6}
    for number, part in enumerate(by_page.parts()):
        form |= {f"part-{number}-title": part["title"], f"part-{number}-sources": part["source_message_ids"]}
    page = pages.post(reverse("proposals:split", args=[by_page.proposal.pk]), form)

    assert response.status_code == 201, response.json()
    assert page.status_code == 302
    for case in (by_api, by_page):
        checklist, crash = TaskProposal.objects.filter(
            reasoning__startswith=f"Split from proposal {case.proposal.pk}."
        ).order_by("pk")
        assert (checklist.title, crash.title) == ("Update the release checklist", "Fix the login crash")
        # The part that repeats the other proposal says so; neither repeats the proposal split.
        assert marks(crash) == (case.other.pk, None, TaskProposal.SimilarityKind.SAME_MESSAGES, 1.0)
        assert marks(checklist) == (None, None, "", None)


def test_a_split_part_that_repeats_a_task_is_marked_with_it(api: APIClient) -> None:
    case = split_case()
    task = TaskFactory(project=case.proposal.project, title="Update the release check-list")

    response = api.post(f"{PROPOSALS}{case.proposal.pk}/split/", {"parts": case.parts()}, format="json")

    assert response.status_code == 201, response.json()
    checklist = TaskProposal.objects.get(pk=response.json()[0]["id"])
    assert marks(checklist)[1:3] == (task.pk, "similar_title")


# Approvals: the task is made by `create_task`


def pending_proposal(project: Project, **fields: Any) -> TaskProposal:
    values = {
        "title": "Fix the login crash",
        "description": "Crash after tapping Log in.",
        "priority": "high",
        "category": "bug",
        "tags": ["android"],
        "due_date": date(2026, 12, 1),
        **fields,
    }
    return TaskProposalFactory(project=project, **values)


def test_the_api_the_review_page_and_the_admin_approve_into_the_same_task(
    api: APIClient, pages: Client, admin: Client
) -> None:
    project = ProjectFactory()
    by_api, by_page, by_admin = (pending_proposal(project) for _ in range(3))

    response = api.post(f"{PROPOSALS}{by_api.pk}/approve/", {}, format="json")
    pages.post(reverse("proposals:approve", args=[by_page.pk]))
    admin.post(reverse("admin:proposals_taskproposal_review", args=[by_admin.pk, "approve"]))

    assert response.status_code == 201, response.json()
    tasks = [TaskProposal.objects.get(pk=p.pk).task_id for p in (by_api, by_page, by_admin)]
    assert None not in tasks
    assert stored_task(tasks[0]) == stored_task(tasks[1]) == stored_task(tasks[2])
    assert stored_task(tasks[0]) | {"project": None} == {
        "project": None,
        "title": "Fix the login crash",
        "description": "Crash after tapping Log in.",
        "assignee": None,
        "status": "open",
        "priority": "high",
        "category": "bug",
        "tags": ["android"],
        "due_date": date(2026, 12, 1),
    }


def test_a_priority_no_task_has_is_refused_by_the_api_the_review_page_and_the_admin(
    api: APIClient, pages: Client, admin: Client
) -> None:
    # A task config's own schema may let the LLM answer with priorities a task has not.
    project = ProjectFactory()
    by_api, by_page, by_admin = (pending_proposal(project, priority="urgent") for _ in range(3))
    reason = "“urgent” is not a task priority; use one of low, medium, high, critical."

    response = api.post(f"{PROPOSALS}{by_api.pk}/approve/", {}, format="json")
    page = pages.post(reverse("proposals:approve", args=[by_page.pk]), follow=True)
    in_admin = admin.post(
        reverse("admin:proposals_taskproposal_review", args=[by_admin.pk, "approve"]), follow=True
    )

    assert (response.status_code, response.json()) == (400, {"detail": reason, "code": "invalid_priority"})
    assert reason in messages_of(page)
    assert reason in messages_of(in_admin)
    assert not Task.objects.exists()
    assert set(TaskProposal.objects.values_list("status", flat=True)) == {"pending"}


def test_only_the_projects_team_creates_its_tasks() -> None:
    project = ProjectFactory()

    with pytest.raises(DomainError) as refused:
        create_task(project=project, title="Rotate the keys", created_by=UserFactory())

    assert (refused.value.code, refused.value.status) == ("forbidden", 403)
    assert not Task.objects.exists()


# Additions to a task: appended by `append_to_task`


def test_adding_to_a_task_from_the_api_appends_to_its_description(api: APIClient) -> None:
    task = TaskFactory(description="Crash after tapping Log in.")
    proposal = pending_proposal(
        task.project, similar_task=task, title="Also on iOS", description="iPhone 15."
    )

    response = api.post(f"{PROPOSALS}{proposal.pk}/approve/", {"add_to_task": True}, format="json")

    assert response.status_code == 201, response.json()
    task.refresh_from_db()
    assert task.description == (
        f"Crash after tapping Log in.\n\nFrom proposal {proposal.pk}: Also on iOS\niPhone 15."
    )


def test_an_addition_goes_after_the_stored_description_not_a_stale_copy(reviewer: Any) -> None:
    task = TaskFactory(description="First.")
    stale = Task.objects.get(pk=task.pk)
    Task.objects.filter(pk=task.pk).update(description="First. Edited meanwhile.")

    append_to_task(task=stale, text="Added.", user=reviewer)

    task.refresh_from_db()
    assert task.description == "First. Edited meanwhile.\n\nAdded."


def test_adding_to_a_task_deleted_meanwhile_is_a_404(reviewer: Any) -> None:
    task = TaskFactory()
    Task.objects.filter(pk=task.pk).delete()

    with pytest.raises(DomainError) as refused:
        append_to_task(task=task, text="Added.", user=reviewer)

    assert (refused.value.code, refused.value.status) == ("not_found", 404)


# Undo: the task an approval made is deleted by `delete_task_if_unused`


def test_undoing_an_approval_from_the_api_and_the_admin_deletes_the_task_through_projects(
    api: APIClient, admin: Client, caplog: pytest.LogCaptureFixture
) -> None:
    project = ProjectFactory()
    by_api, by_admin = pending_proposal(project), pending_proposal(project)
    review = "admin:proposals_taskproposal_review"

    with caplog.at_level(logging.INFO, logger="projects.services"):
        api.post(f"{PROPOSALS}{by_api.pk}/approve/", {}, format="json")
        admin.post(reverse(review, args=[by_admin.pk, "approve"]))
        made = list(Task.objects.order_by("pk").values_list("pk", flat=True))
        undone = api.post(f"{PROPOSALS}{by_api.pk}/undo/", {}, format="json")
        admin.post(reverse(review, args=[by_admin.pk, "undo"]))

    assert undone.status_code == 200, undone.json()
    assert len(made) == 2
    assert not Task.objects.exists()
    assert set(TaskProposal.objects.values_list("status", "task")) == {("pending", None)}
    # What the projects app says about its tasks, whoever asked.
    said = [r.getMessage() for r in caplog.records if r.name == "projects.services"]
    assert [line.split(" ", 1)[1] for line in said] == [
        f"created task {made[0]} in {project}",
        f"created task {made[1]} in {project}",
        f"deleted task {made[0]}, which nothing used any more",
        f"deleted task {made[1]}, which nothing used any more",
    ]


def test_undoing_an_approval_keeps_a_task_another_proposal_was_added_to_since(reviewer: Any) -> None:
    project = ProjectFactory()
    first = pending_proposal(project)
    task = approve_proposal(proposal_id=first.pk, user=reviewer)
    second = pending_proposal(project, similar_task=task, title="Also on iOS")
    approve_proposal(proposal_id=second.pk, user=reviewer, add_to_task=True)

    undo_last_action(proposal_id=first.pk, user=reviewer)

    task.refresh_from_db()
    assert list(task.proposals.all()) == [second]
    assert f"From proposal {second.pk}: Also on iOS" in task.description
