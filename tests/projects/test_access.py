"""Who sees which chats, which chats a lead may add to a configuration, and runs shared by
two projects (`projects.access`; every operation by role is walked in
tests/test_access_matrix.py)."""

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from projects.models import Project, ProjectConfig
from projects.services import bump_config, create_project
from tests.factories import (
    AnalysisRunFactory,
    ChatFactory,
    MessageFactory,
    ProjectMembershipFactory,
    UserFactory,
)
from tests.projects.helpers import form_data

pytestmark = pytest.mark.django_db


def api_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def other_chat() -> Any:
    return ChatFactory(title="Back office chat")


@pytest.fixture
def other_project(other_chat: Any) -> Project:
    """A project of someone else, reading a chat of its own."""
    return create_project(
        name="Back office", slug="back-office", user=UserFactory(), changes={"chats": [other_chat.pk]}
    )


def chat_ids(user: Any) -> list[int]:
    return [chat["id"] for chat in api_client(user).get("/api/v1/chats/").json()["results"]]


# Chats and messages


def test_a_member_sees_the_chats_their_projects_read_and_their_messages_only(
    project: Project, member: Any, chat: Any, other_chat: Any, other_project: Project
) -> None:
    mine, theirs = MessageFactory(chat=chat), MessageFactory(chat=other_chat)
    client = api_client(member)

    messages = client.get("/api/v1/messages/").json()["results"]

    assert chat_ids(member) == [chat.pk]
    assert [m["id"] for m in messages] == [mine.pk]
    assert client.get(f"/api/v1/messages/?chat={other_chat.pk}").json()["results"] == []
    assert client.get(f"/api/v1/messages/{theirs.pk}/").status_code == 404
    assert client.get(f"/api/v1/chats/{other_chat.pk}/").status_code == 404


def test_a_user_on_no_project_sees_no_chat_and_staff_every_one(
    project: Project, chat: Any, other_chat: Any, other_project: Project
) -> None:
    MessageFactory(chat=chat)

    assert chat_ids(UserFactory()) == []
    assert api_client(UserFactory()).get("/api/v1/messages/").json()["results"] == []
    assert sorted(chat_ids(UserFactory(is_staff=True))) == sorted([chat.pk, other_chat.pk])


def test_a_chat_the_current_version_no_longer_reads_is_no_longer_seen(
    project: Project, lead: Any, member: Any, chat: Any
) -> None:
    message = MessageFactory(chat=chat)
    bump_config(project=project, user=lead, changes={"chats": []})

    assert chat_ids(member) == []
    assert api_client(member).get(f"/api/v1/messages/{message.pk}/").status_code == 404


# Which chats a lead may add


def test_a_lead_adding_another_projects_chat_gets_a_field_error_from_the_api(
    project: Project, lead: Any, chat: Any, other_chat: Any, other_project: Project
) -> None:
    response = api_client(lead).patch(
        "/api/v1/projects/acme-mobile/", {"chats": [chat.pk, other_chat.pk]}, format="json"
    )

    assert response.status_code == 400
    assert list(response.json()) == ["chats"]
    assert "a project you do not lead reads it" in response.json()["chats"][0]
    assert list(project.configs.values_list("major", "minor", "patch")) == [(1, 0, 0)]


def test_a_lead_adding_another_projects_chat_gets_a_form_error_on_the_config_page(
    project: Project, lead: Any, chat: Any, other_chat: Any, other_project: Project
) -> None:
    client = Client()
    client.force_login(lead)
    page = client.get(reverse("projects:project-edit", args=[project.slug]))
    data = form_data(page)
    data["chats"] = [str(chat.pk), str(other_chat.pk)]

    response = client.post(reverse("projects:project-edit", args=[project.slug]), data)

    assert response.status_code == 400
    errors = response.context["form"].errors["chats"]
    assert "a project you do not lead reads it" in errors[0]
    assert other_chat.title not in page.content.decode()  # not offered either
    assert ProjectConfig.objects.filter(project=project).count() == 1


def test_a_lead_adds_a_chat_no_project_reads_or_one_only_their_projects_read(
    project: Project, lead: Any, chat: Any
) -> None:
    free = ChatFactory()
    shared = ChatFactory()
    create_project(name="Acme Web", slug="acme-web", user=lead, changes={"chats": [shared.pk]})

    response = api_client(lead).patch(
        "/api/v1/projects/acme-mobile/", {"chats": [chat.pk, free.pk, shared.pk]}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert response.json()["current_config"]["chats"] == sorted([chat.pk, free.pk, shared.pk])


def test_staff_add_any_chat(project: Project, chat: Any, other_chat: Any, other_project: Project) -> None:
    staff = UserFactory(is_staff=True)

    config = bump_config(project=project, user=staff, changes={"chats": [chat.pk, other_chat.pk]})

    assert config is not None
    assert sorted(config.chats.values_list("pk", flat=True)) == sorted([chat.pk, other_chat.pk])


def test_a_chat_read_already_stays_when_another_project_reads_it_too(
    project: Project, lead: Any, chat: Any
) -> None:
    # Staff made a second project read the same chat: the lead keeps it on their own.
    create_project(
        name="Acme Web", slug="acme-web", user=UserFactory(is_staff=True), changes={"chats": [chat.pk]}
    )

    config = bump_config(project=project, user=lead, changes={"keywords": ["login"]})

    assert config is not None
    assert list(config.chats.values_list("pk", flat=True)) == [chat.pk]


# A run of two projects


def test_a_run_of_two_projects_is_seen_by_either_team_and_operated_by_a_lead_of_both(
    project: Project, lead: Any, member: Any, other_project: Project
) -> None:
    run = AnalysisRunFactory(projects=[project, other_project])
    other_member = ProjectMembershipFactory(project=other_project, role="member").user

    seen = [api_client(user).get(f"/api/v1/runs/{run.pk}/").status_code for user in (member, other_member)]
    cancel = api_client(lead).post(f"/api/v1/runs/{run.pk}/cancel/")
    ProjectMembershipFactory(project=other_project, user=lead, role="lead")
    cancelled = api_client(lead).post(f"/api/v1/runs/{run.pk}/cancel/")

    assert seen == [200, 200]
    assert api_client(UserFactory()).get(f"/api/v1/runs/{run.pk}/").status_code == 404
    assert cancel.status_code == 403
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
