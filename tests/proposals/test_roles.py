"""Reviewing by role: a project's reviewers review its proposals and no other project's;
its members see its proposals and tasks, read only, and are told on the Review page who
reviews them."""

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from projects.models import ProjectMembership, Task
from proposals.models import TaskProposal
from tests.factories import (
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
PROPOSALS = "/api/v1/proposals/"


def api_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def alpha() -> Any:
    return ProjectFactory(name="Alpha")


@pytest.fixture
def bravo() -> Any:
    return ProjectFactory(name="Bravo")


def role_in(project: Any, role: str, **user: Any) -> Any:
    return ProjectMembershipFactory(project=project, role=role, user=UserFactory(**user)).user


def test_a_reviewer_reviews_their_projects_proposals_and_not_another_projects(alpha, bravo) -> None:
    reviewer = role_in(alpha, ProjectMembership.Role.REVIEWER)
    ours, theirs = TaskProposalFactory(project=alpha), TaskProposalFactory(project=bravo)
    client = api_client(reviewer)

    approved = client.post(f"{PROPOSALS}{ours.pk}/approve/", {}, format="json")
    refused = client.post(f"{PROPOSALS}{theirs.pk}/reject/", {"reason": "No"}, format="json")

    assert approved.status_code == 201
    assert Task.objects.get().project == alpha
    assert refused.status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == TaskProposal.Status.PENDING


def test_a_reviewer_reviews_on_the_review_pages_and_does_not_configure(alpha) -> None:
    reviewer = role_in(alpha, ProjectMembership.Role.REVIEWER)
    proposal = TaskProposalFactory(project=alpha, title="Fix the login crash")
    client = Client()
    client.force_login(reviewer)

    queue = client.get(reverse("proposals:queue"))
    approved = client.post(reverse("proposals:approve", args=[proposal.pk]))

    assert queue.status_code == 200
    assert queue.context["proposal"] == proposal
    assert approved.status_code == 302
    assert Task.objects.get().title == "Fix the login crash"
    assert client.get(reverse("projects:project-edit", args=[alpha.slug])).status_code == 403


def test_a_member_sees_tasks_and_proposals_and_moves_tasks_but_does_not_review(alpha) -> None:
    member = role_in(alpha, ProjectMembership.Role.MEMBER)
    task = TaskFactory(project=alpha)
    proposal = TaskProposalFactory(project=alpha)
    client = api_client(member)

    tasks = client.get("/api/v1/tasks/").json()["results"]
    moved = client.patch(f"/api/v1/tasks/{task.pk}/", {"status": "in_progress"}, format="json")
    listed = client.get(PROPOSALS).json()["results"]
    shown = client.get(f"{PROPOSALS}{proposal.pk}/")
    approve = client.post(f"{PROPOSALS}{proposal.pk}/approve/", {}, format="json")
    edit = client.patch(f"{PROPOSALS}{proposal.pk}/", {"title": "Mine now"}, format="json")

    assert [t["id"] for t in tasks] == [task.pk]
    assert moved.json()["status"] == "in_progress"
    assert [p["id"] for p in listed] == [proposal.pk]
    assert shown.status_code == 200
    assert (approve.status_code, edit.status_code) == (403, 403)
    proposal.refresh_from_db()
    assert (proposal.status, proposal.title) == (TaskProposal.Status.PENDING, shown.json()["title"])


def test_a_member_gets_a_page_saying_who_reviews_on_the_review_page(alpha) -> None:
    member = role_in(alpha, ProjectMembership.Role.MEMBER)
    role_in(alpha, ProjectMembership.Role.LEAD, username="alice", first_name="Alice", last_name="Kim")
    role_in(alpha, ProjectMembership.Role.REVIEWER, username="rita", first_name="Rita", last_name="Ng")
    proposal = TaskProposalFactory(project=alpha)
    client = Client()
    client.force_login(member)

    queue = client.get(reverse("proposals:queue"))
    page = client.get(reverse("proposals:proposal", args=[proposal.pk]))

    html = queue.content.decode()
    assert queue.status_code == 403
    assert [t.name for t in queue.templates][:2] == ["proposals/not_a_reviewer.html", "base.html"]
    assert "You review no project's proposals." in html
    assert "Alice Kim" in html and "team lead" in html
    assert "Rita Ng" in html and "reviewer" in html
    assert reverse("projects:project-detail", args=[alpha.slug]) in html
    assert page.status_code == 403
    assert "You review no project's proposals." in page.content.decode()


def test_a_json_caller_gets_a_bare_403_from_the_review_pages(alpha) -> None:
    member = role_in(alpha, ProjectMembership.Role.MEMBER)
    client = Client()
    client.force_login(member)

    queue = client.get(reverse("proposals:queue"), HTTP_ACCEPT="application/json")
    state = client.get(reverse("proposals:queue-state"))

    assert queue.status_code == 403
    assert "You review no project's proposals." not in queue.content.decode()
    assert state.status_code == 403
    assert "You review no project's proposals." not in state.content.decode()


def test_someone_on_no_project_is_told_to_ask_for_a_team() -> None:
    client = Client()
    client.force_login(UserFactory())

    response = client.get(reverse("proposals:queue"))

    assert response.status_code == 403
    assert "You are on no project's team with reviewers" in response.content.decode()


def test_a_reviewer_of_another_project_is_told_they_do_not_review_this_one(alpha, bravo) -> None:
    user = role_in(alpha, ProjectMembership.Role.MEMBER)
    ProjectMembershipFactory(project=bravo, user=user, role=ProjectMembership.Role.REVIEWER)
    proposal = TaskProposalFactory(project=alpha)
    client = Client()
    client.force_login(user)

    response = client.get(reverse("proposals:proposal", args=[proposal.pk]))

    assert response.status_code == 403
    assert "You do not review this project's proposals." in response.content.decode()
