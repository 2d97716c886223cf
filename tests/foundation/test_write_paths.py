"""The admin and the API store the same row through the same service, model by model.

Each test writes one row by the admin (a superuser's POST to its add or change form) and
one by the API (POST or PATCH), then compares the stored rows' fields (not their ids or
timestamps) and something only the service does: a health check queued, a first
configuration version, a webhook delivery, or a refusal both paths give in the same words.

Where a path does not exist, the one that does is tested:
- Chat: no API create (chats come from ingestion), so a change, admin form against PATCH.
- Task: no API create (tasks come from approved proposals), so a move, admin form against
  PATCH; the admin's add goes through `create_task`, tested against that service's refusal.
- AgentTaskAssignment: the API never changes one, so a create; a repeated pair is refused
  by the admin's form (the unique constraint) before any service, so only the row is compared.
"""

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from projects.models import Project, ProjectMembership, Task, WebhookDelivery, WebhookEndpoint
from sources.models import Chat
from tests.factories import (
    AgentFactory,
    ChatFactory,
    LLMProviderFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskConfigFactory,
    TaskFactory,
    WebhookEndpointFactory,
)

pytestmark = pytest.mark.django_db

IGNORED = {"id", "created_at", "updated_at"}
SCHEMA = {"type": "object", "properties": {"chores": {"type": "array", "items": {"type": "string"}}}}


@pytest.fixture
def api(admin_user: User) -> APIClient:
    """The API as the same superuser the `admin_client` is signed in as."""
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def stored(model: type[Model], **lookup: Any) -> dict[str, Any]:
    """The row's fields, without its id and timestamps."""
    row = model.objects.filter(**lookup).values().get()
    return {name: value for name, value in row.items() if name not in IGNORED}


def admin_url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(page: Any) -> list[str]:
    return [str(message) for message in page.context["messages"]] if page.context else []


def form_errors(page: Any) -> str:
    return page.context["adminform"].form.errors.as_text()


NO_ASSIGNMENTS = {"assignments-TOTAL_FORMS": 0, "assignments-INITIAL_FORMS": 0}
NO_TEAM_OR_VERSIONS = {
    "memberships-TOTAL_FORMS": 0,
    "memberships-INITIAL_FORMS": 0,
    "configs-TOTAL_FORMS": 0,
    "configs-INITIAL_FORMS": 0,
}


# agents


def provider_in(name: str, base_url: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": base_url,
        "api_key": "sk-same-secret-4242",
        "timeout_seconds": 30,
        "max_concurrency": 2,
        "requests_per_minute": 60,
        "price_per_1k_input": "0.5",
        "price_per_1k_output": "1.5",
    }


def test_llm_provider_admin_and_api_store_the_same_row(
    admin_client: Client, api: APIClient, fake_openai: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as by_admin_checks:
        page = admin_client.post(
            admin_url(LLMProvider, "add"), provider_in("By admin", fake_openai.base_url) | {"is_active": "on"}
        )
    with django_capture_on_commit_callbacks() as by_api_checks:
        response = api.post(
            "/api/v1/providers/",
            provider_in("By API", fake_openai.base_url) | {"is_active": True},
            format="json",
        )

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 201, response.data
    by_admin, by_api = stored(LLMProvider, name="By admin"), stored(LLMProvider, name="By API")
    # The key is encrypted by the service, with a fresh nonce each time.
    encrypted = {"api_key_encrypted"}
    assert {k: v for k, v in by_api.items() if k not in encrypted} | {"name": "By admin"} == {
        k: v for k, v in by_admin.items() if k not in encrypted
    }
    # Only `create_provider` stores the key decryptable and queues the health check.
    for name in ("By admin", "By API"):
        provider = LLMProvider.objects.get(name=name)
        assert provider.api_key == "sk-same-secret-4242"
        assert provider.health == LLMProvider.Health.PENDING
    assert len(by_admin_checks) == len(by_api_checks) == 1


def agent_in(provider_id: int, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider_id,
        "model": "fake-model",
        "system_prompt": "You read team chat.",
        "temperature": 0.7,
        "max_output_tokens": 512,
        "batch_token_budget": 1500,
    }


def test_agent_admin_and_api_store_the_same_row(admin_client: Client, api: APIClient) -> None:
    provider = LLMProviderFactory()

    page = admin_client.post(
        admin_url(Agent, "add"), agent_in(provider.pk, "By admin") | {"is_active": "on"} | NO_ASSIGNMENTS
    )
    response = api.post(
        "/api/v1/agents/", agent_in(provider.pk, "By API") | {"is_active": True}, format="json"
    )

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 201, response.data
    assert stored(Agent, name="By API") | {"name": "By admin"} == stored(Agent, name="By admin")


def test_agent_admin_and_api_refuse_a_switched_off_provider_alike(
    admin_client: Client, api: APIClient
) -> None:
    switched_off = LLMProviderFactory(is_active=False)

    page = admin_client.post(admin_url(Agent, "add"), agent_in(switched_off.pk, "By admin") | NO_ASSIGNMENTS)
    response = api.post("/api/v1/agents/", agent_in(switched_off.pk, "By API"), format="json")

    assert page.status_code == 200
    assert response.status_code == 400
    # One rule, `check_agent_provider`, in the same words.
    assert page.context["adminform"].form.errors["provider"] == response.data["provider"]
    assert not Agent.objects.exists()


def test_agent_admin_and_api_keep_a_switched_off_provider_an_agent_has(
    admin_client: Client, api: APIClient
) -> None:
    provider = LLMProviderFactory()
    by_admin, by_api = AgentFactory(provider=provider), AgentFactory(provider=provider)
    LLMProvider.objects.filter(pk=provider.pk).update(is_active=False)

    page = admin_client.post(
        admin_url(Agent, "change", by_admin.pk),
        agent_in(provider.pk, "By admin") | {"is_active": "on"} | NO_ASSIGNMENTS,
    )
    response = api.put(
        f"/api/v1/agents/{by_api.pk}/", agent_in(provider.pk, "By API") | {"is_active": True}, format="json"
    )

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 200, response.data
    assert stored(Agent, name="By API") | {"name": "By admin"} == stored(Agent, name="By admin")


def task_config_in(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": "For the house.",
        "instructions": "List chores.",
        "response_schema": SCHEMA,
        "max_proposals_per_batch": 10,
        "max_proposals_per_message": 2,
        "review_examples": 2,
        "review_examples_tokens": 300,
    }


def test_task_config_admin_and_api_store_the_same_row(admin_client: Client, api: APIClient) -> None:
    form = task_config_in("By admin") | {"response_schema": json.dumps(SCHEMA), "is_active": "on"}

    page = admin_client.post(admin_url(TaskConfig, "add"), form | NO_ASSIGNMENTS)
    response = api.post(
        "/api/v1/task-configs/", task_config_in("By API") | {"is_active": True}, format="json"
    )

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 201, response.data
    assert stored(TaskConfig, name="By API") | {"name": "By admin"} == stored(TaskConfig, name="By admin")


def test_task_config_admin_and_api_delete_through_the_same_service(
    admin_client: Client, api: APIClient
) -> None:
    by_admin, by_api = TaskConfigFactory(), TaskConfigFactory()

    page = admin_client.post(admin_url(TaskConfig, "delete", by_admin.pk), {"post": "yes"})
    response = api.delete(f"/api/v1/task-configs/{by_api.pk}/")

    assert page.status_code == 302
    assert response.status_code == 204
    assert not TaskConfig.objects.filter(pk__in=[by_admin.pk, by_api.pk]).exists()


def test_assignment_admin_and_api_store_the_same_row(admin_client: Client, api: APIClient) -> None:
    task_config = TaskConfigFactory()
    by_admin, by_api = AgentFactory(), AgentFactory()

    page = admin_client.post(
        admin_url(AgentTaskAssignment, "add"),
        {"agent": by_admin.pk, "task_config": task_config.pk, "is_active": "on"},
    )
    response = api.post(
        "/api/v1/assignments/", {"agent": by_api.pk, "task_config": task_config.pk}, format="json"
    )

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 201, response.data
    assert stored(AgentTaskAssignment, agent=by_api) | {"agent_id": by_admin.pk} == stored(
        AgentTaskAssignment, agent=by_admin
    )


# projects


def test_project_admin_and_api_store_the_same_row(
    admin_client: Client, api: APIClient, admin_user: User
) -> None:
    page = admin_client.post(
        admin_url(Project, "add"), {"name": "By admin", "slug": "by-admin"} | NO_TEAM_OR_VERSIONS
    )
    response = api.post("/api/v1/projects/", {"name": "By API", "slug": "by-api"}, format="json")

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 201, response.data
    assert stored(Project, slug="by-api") | {"name": "By admin", "slug": "by-admin"} == stored(
        Project, slug="by-admin"
    )
    # Only `create_project` makes version 1.0.0 with its creator as team lead.
    for slug in ("by-admin", "by-api"):
        project = Project.objects.get(slug=slug)
        assert [config.version for config in project.configs.all()] == ["1.0.0"]
        assert list(project.memberships.values_list("user", "role")) == [
            (admin_user.pk, ProjectMembership.Role.LEAD)
        ]


def test_project_admin_and_api_refuse_a_reserved_slug_alike(admin_client: Client, api: APIClient) -> None:
    page = admin_client.post(
        admin_url(Project, "add"), {"name": "By admin", "slug": "new"} | NO_TEAM_OR_VERSIONS, follow=True
    )
    response = api.post("/api/v1/projects/", {"name": "By API", "slug": "new"}, format="json")

    assert response.status_code == 400
    assert response.data["slug"] == [message for message in messages_of(page) if "slug" in message]
    assert not Project.objects.exists()


def test_chat_admin_and_api_change_the_row_alike(admin_client: Client, api: APIClient) -> None:
    by_admin = ChatFactory(title="Before", telegram_id=-100_1)
    by_api = ChatFactory(title="Before", telegram_id=-100_1 - 1, type=by_admin.type)

    page = admin_client.post(admin_url(Chat, "change", by_admin.pk), {"title": "Renamed"})
    response = api.patch(
        f"/api/v1/chats/{by_api.pk}/", {"title": "Renamed", "is_active": False}, format="json"
    )

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 200, response.data
    assert stored(Chat, pk=by_api.pk) | {"telegram_id": by_admin.telegram_id} == stored(Chat, pk=by_admin.pk)


@pytest.fixture
def team_task_pair(admin_user: User, settings: Any) -> tuple[Task, Task]:
    """Two done tasks of one project, the superuser on its team, a webhook listening."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=admin_user, role=ProjectMembership.Role.LEAD)
    WebhookEndpointFactory(project=project, url="http://127.0.0.1:9/hook")
    by_admin = TaskFactory(project=project, title="By admin", status=Task.Status.DONE, created_by=admin_user)
    by_api = TaskFactory(project=project, title="By API", status=Task.Status.DONE, created_by=admin_user)
    return by_admin, by_api


def task_form(admin_client: Client, task: Task, **changes: Any) -> dict[str, Any]:
    page = admin_client.get(admin_url(Task, "change", task.pk))
    form = {key: value for key, value in page.context["adminform"].form.initial.items() if value is not None}
    return form | {"tags": json.dumps(task.tags), "assignee": ""} | changes


def test_task_admin_and_api_move_the_task_alike(
    admin_client: Client, api: APIClient, team_task_pair: tuple[Task, Task]
) -> None:
    by_admin, by_api = team_task_pair

    page = admin_client.post(
        admin_url(Task, "change", by_admin.pk), task_form(admin_client, by_admin, status="open")
    )
    response = api.patch(f"/api/v1/tasks/{by_api.pk}/", {"status": "open"}, format="json")

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 200, response.data
    assert stored(Task, pk=by_api.pk) | {"title": "By admin"} == stored(Task, pk=by_admin.pk)
    # Only `update_task` sends `task.status_changed`.
    sent = WebhookDelivery.objects.filter(event=WebhookEndpoint.Event.TASK_STATUS_CHANGED)
    assert sorted(d.payload["task"]["id"] for d in sent) == sorted([by_admin.pk, by_api.pk])


def test_task_admin_and_api_refuse_an_illegal_move_alike(
    admin_client: Client, api: APIClient, team_task_pair: tuple[Task, Task]
) -> None:
    by_admin, by_api = team_task_pair

    page = admin_client.post(
        admin_url(Task, "change", by_admin.pk), task_form(admin_client, by_admin, status="in_progress")
    )
    response = api.patch(f"/api/v1/tasks/{by_api.pk}/", {"status": "in_progress"}, format="json")

    assert page.status_code == 200
    assert response.status_code == 409
    assert page.context["adminform"].form.non_field_errors() == [response.data["detail"]]
    assert set(Task.objects.values_list("status", flat=True)) == {Task.Status.DONE}
    assert not WebhookDelivery.objects.exists()


def test_the_task_admin_adds_through_create_task(admin_client: Client, admin_user: User) -> None:
    project = ProjectFactory()

    page = admin_client.post(
        admin_url(Task, "add"),
        {"project": project.pk, "title": "Ship it", "priority": "high", "category": "bug", "tags": '["x"]'},
    )

    assert page.status_code == 302, form_errors(page)
    assert stored(Task, title="Ship it") | {"project_id": None} == {
        "project_id": None,
        "title": "Ship it",
        "description": "",
        "assignee_id": None,
        "status": Task.Status.OPEN,
        "priority": "high",
        "category": "bug",
        "tags": ["x"],
        "due_date": None,
        "created_by_id": admin_user.pk,
    }


def webhook_in(project_id: int, url: str) -> dict[str, Any]:
    return {"project": project_id, "url": url, "events": ["task.status_changed"]}


def webhook_form(project_id: int, url: str) -> dict[str, Any]:
    """As the admin's add form posts it: the events as JSON, a secret it offers."""
    return webhook_in(project_id, url) | {"events": '["task.status_changed"]', "secret": "s" * 40}


def test_webhook_endpoint_admin_and_api_store_the_same_row(
    admin_client: Client, api: APIClient, settings: Any
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    project = ProjectFactory()

    page = admin_client.post(
        admin_url(WebhookEndpoint, "add"),
        webhook_form(project.pk, "http://127.0.0.1:9/a") | {"is_active": "on"},
    )
    response = api.post("/api/v1/webhooks/", webhook_in(project.pk, "http://127.0.0.1:9/b"), format="json")

    assert page.status_code == 302, form_errors(page)
    assert response.status_code == 201, response.data
    by_admin = stored(WebhookEndpoint, url="http://127.0.0.1:9/a")
    by_api = stored(WebhookEndpoint, url="http://127.0.0.1:9/b")
    # The admin's form offers a secret, which it may change; the API's is made up.
    assert by_api | {"url": by_admin["url"], "secret": "s" * 40} == by_admin
    assert len(by_api["secret"]) >= 32


def test_webhook_endpoint_admin_and_api_refuse_an_internal_address_alike(
    admin_client: Client, api: APIClient
) -> None:
    project = ProjectFactory()

    page = admin_client.post(
        admin_url(WebhookEndpoint, "add"), webhook_form(project.pk, "http://10.1.2.3/hook")
    )
    response = api.post("/api/v1/webhooks/", webhook_in(project.pk, "http://10.1.2.3/hook"), format="json")

    assert page.status_code == 200
    assert response.status_code == 400
    # `check_webhook_endpoint`'s words, under the URL in both.
    assert page.context["adminform"].form.errors["url"] == response.data["url"]
    assert not WebhookEndpoint.objects.exists()


def test_the_project_admin_changes_through_update_project(admin_client: Client) -> None:
    taken = ProjectFactory(name="Mobile app", slug="mobile")
    project = ProjectFactory(name="Web", slug="web")
    form = {"name": "MOBILE APP", "slug": "web-2", "is_active": "on"} | NO_TEAM_OR_VERSIONS

    refused = admin_client.post(admin_url(Project, "change", project.pk), form, follow=True)
    renamed = admin_client.post(
        admin_url(Project, "change", project.pk), form | {"name": "Web shop"}, follow=True
    )

    # Two names differing in case only: `update_project` refuses it as `create_project` does.
    assert f"There is a project named {taken.name.upper()} already." in messages_of(refused)
    assert renamed.status_code == 200
    assert stored(Project, pk=project.pk) | {"default_assignee_id": None} == {
        "name": "Web shop",
        "slug": "web-2",
        "is_active": True,
        "default_assignee_id": None,
        "band_calibration": {},
    }


def test_update_project_is_for_team_leads(team_task_pair: tuple[Task, Task]) -> None:
    from projects.services import update_project
    from tasktracker.exceptions import DomainError

    project = team_task_pair[0].project
    member = ProjectMembershipFactory(project=project, role=ProjectMembership.Role.MEMBER).user

    with pytest.raises(DomainError) as refused:
        update_project(project=project, user=member, name="Taken over")

    assert refused.value.code == "forbidden"
    assert Project.objects.get(pk=project.pk).name == project.name


def test_the_task_admin_edits_details_through_update_task(
    admin_client: Client, team_task_pair: tuple[Task, Task]
) -> None:
    from projects.services import update_task
    from tasktracker.exceptions import DomainError

    task = team_task_pair[0]

    page = admin_client.post(
        admin_url(Task, "change", task.pk),
        task_form(admin_client, task, title="Renamed", priority="critical", status="open"),
    )
    with pytest.raises(DomainError) as blank:
        update_task(task=task, user=task.created_by, title="  ")
    with pytest.raises(DomainError) as unknown:
        update_task(task=task, user=task.created_by, category="epic")

    assert page.status_code == 302, form_errors(page)
    task.refresh_from_db()
    assert (task.title, task.priority, task.status) == ("Renamed", "critical", Task.Status.OPEN)
    assert (blank.value.code, unknown.value.code) == ("invalid_title", "invalid_category")
    assert WebhookDelivery.objects.filter(event=WebhookEndpoint.Event.TASK_STATUS_CHANGED).count() == 1
