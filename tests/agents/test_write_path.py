"""Agents and task configs are written by one service each, whether by the API or the admin."""

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from agents.models import Agent, TaskConfig
from tests.agents.test_agent_services import AGENT_FIELDS, SCHEMA, TASK_CONFIG_FIELDS
from tests.factories import AgentFactory, LLMProviderFactory, TaskConfigFactory, UserFactory

pytestmark = pytest.mark.django_db

NO_INLINES = {"assignments-TOTAL_FORMS": 0, "assignments-INITIAL_FORMS": 0}


@pytest.fixture
def admin_api() -> APIClient:
    client = APIClient()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def stored_agent(name: str) -> dict[str, Any]:
    return Agent.objects.values(*AGENT_FIELDS).get(name=name)


def stored_task_config(name: str) -> dict[str, Any]:
    return TaskConfig.objects.values(*TASK_CONFIG_FIELDS).get(name=name)


def agent_in(provider_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "Extractor",
        "provider": provider_id,
        "model": "fake-model",
        "system_prompt": "You read team chat.",
        "temperature": 0.7,
        "max_output_tokens": 512,
        "batch_token_budget": 1500,
        "is_active": True,
        **overrides,
    }


def task_config_in(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Chores",
        "description": "For the house.",
        "instructions": "List chores.",
        "response_schema": SCHEMA,
        "max_proposals_per_message": 2,
        "review_examples": 0,
        "review_examples_tokens": 400,
        "is_active": True,
        **overrides,
    }


def as_admin_form(data: dict[str, Any]) -> dict[str, Any]:
    """The same values as the admin's change form posts them."""
    form = {**data, **NO_INLINES}
    if "response_schema" in form:
        form["response_schema"] = json.dumps(form["response_schema"])
    if form.pop("is_active"):
        form["is_active"] = "on"
    return form


# The API and the admin store the same rows


def test_the_api_and_the_admin_create_the_same_agent(admin_api: APIClient, admin_client: Client) -> None:
    provider = LLMProviderFactory()

    response = admin_api.post("/api/v1/agents/", agent_in(provider.pk, name="By API"), format="json")
    page = admin_client.post(
        reverse("admin:agents_agent_add"), as_admin_form(agent_in(provider.pk, name="By admin"))
    )

    assert response.status_code == 201, response.data
    assert page.status_code == 302
    assert stored_agent("By API") | {"name": "By admin"} == stored_agent("By admin")


def test_the_api_and_the_admin_change_an_agent_alike(admin_api: APIClient, admin_client: Client) -> None:
    by_api, by_admin = AgentFactory(), AgentFactory()
    provider = LLMProviderFactory()
    change = agent_in(provider.pk, temperature=1.5, is_active=False, system_prompt="")

    response = admin_api.put(f"/api/v1/agents/{by_api.pk}/", change | {"name": "By API"}, format="json")
    page = admin_client.post(
        reverse("admin:agents_agent_change", args=[by_admin.pk]),
        as_admin_form(change | {"name": "By admin"}),
    )

    assert response.status_code == 200, response.data
    assert page.status_code == 302
    assert stored_agent("By API") | {"name": "By admin"} == stored_agent("By admin")
    assert stored_agent("By admin")["temperature"] == 1.5


def test_the_api_and_the_admin_create_the_same_task_config(
    admin_api: APIClient, admin_client: Client
) -> None:
    response = admin_api.post("/api/v1/task-configs/", task_config_in(name="By API"), format="json")
    page = admin_client.post(
        reverse("admin:agents_taskconfig_add"), as_admin_form(task_config_in(name="By admin"))
    )

    assert response.status_code == 201, response.data
    assert page.status_code == 302
    assert stored_task_config("By API") | {"name": "By admin"} == stored_task_config("By admin")


def test_the_api_and_the_admin_change_a_task_config_alike(admin_api: APIClient, admin_client: Client) -> None:
    by_api, by_admin = TaskConfigFactory(), TaskConfigFactory()
    change = task_config_in(description="", instructions="Only chores.", is_active=False)

    response = admin_api.put(f"/api/v1/task-configs/{by_api.pk}/", change | {"name": "By API"}, format="json")
    page = admin_client.post(
        reverse("admin:agents_taskconfig_change", args=[by_admin.pk]),
        as_admin_form(change | {"name": "By admin"}),
    )

    assert response.status_code == 200, response.data
    assert page.status_code == 302
    assert stored_task_config("By API") | {"name": "By admin"} == stored_task_config("By admin")
    assert stored_task_config("By admin")["response_schema"] == SCHEMA


def test_a_partial_api_change_leaves_the_other_fields_alone(admin_api: APIClient) -> None:
    agent = AgentFactory(name="Kept", temperature=0.2)
    before = stored_agent("Kept")

    response = admin_api.patch(f"/api/v1/agents/{agent.pk}/", {"temperature": 0.9}, format="json")

    assert response.status_code == 200, response.data
    assert stored_agent("Kept") == before | {"temperature": 0.9}


def test_an_agent_added_in_the_admin_gets_its_inline_assignment(admin_client: Client) -> None:
    provider, task_config = LLMProviderFactory(), TaskConfigFactory()
    form = as_admin_form(agent_in(provider.pk))
    form |= {
        "assignments-TOTAL_FORMS": 1,
        "assignments-0-task_config": task_config.pk,
        "assignments-0-is_active": "on",
    }

    page = admin_client.post(reverse("admin:agents_agent_add"), form)

    assert page.status_code == 302
    agent = Agent.objects.get(name="Extractor")
    assert page.url == reverse("admin:agents_agent_changelist")
    assert list(agent.task_configs.all()) == [task_config]
