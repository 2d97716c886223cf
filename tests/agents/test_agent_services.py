"""The services that write agents and task configs: what they store, and only what they are given."""

from typing import Any

import pytest

from agents.models import Agent, TaskConfig
from agents.services import create_agent, create_task_config, update_agent, update_task_config
from tests.factories import AgentFactory, LLMProviderFactory, TaskConfigFactory

pytestmark = pytest.mark.django_db

AGENT_FIELDS = [
    "name",
    "provider",
    "model",
    "system_prompt",
    "temperature",
    "max_output_tokens",
    "batch_token_budget",
    "is_active",
]
TASK_CONFIG_FIELDS = ["name", "description", "instructions", "response_schema", "is_active"]
SCHEMA = {"type": "object", "properties": {"chores": {"type": "array", "items": {"type": "string"}}}}


def stored_agent(name: str) -> dict[str, Any]:
    return Agent.objects.values(*AGENT_FIELDS).get(name=name)


def stored_task_config(name: str) -> dict[str, Any]:
    return TaskConfig.objects.values(*TASK_CONFIG_FIELDS).get(name=name)


def test_creating_an_agent_stores_the_given_fields() -> None:
    provider = LLMProviderFactory()

    agent = create_agent(name="Extractor", provider=provider, model="fake-model", temperature=0.7)

    assert stored_agent("Extractor") == {
        "name": "Extractor",
        "provider": provider.pk,
        "model": "fake-model",
        "system_prompt": "",
        "temperature": 0.7,
        "max_output_tokens": 2048,
        "batch_token_budget": 3000,
        "is_active": True,
    }
    assert agent.pk == Agent.objects.get(name="Extractor").pk


def test_updating_an_agent_writes_only_the_fields_given() -> None:
    agent = AgentFactory(name="Before", temperature=0.2)
    other_copy = Agent.objects.get(pk=agent.pk)
    other_copy.name = "Renamed meanwhile"
    other_copy.save()

    update_agent(agent=agent, temperature=1.1)

    agent.refresh_from_db()
    assert (agent.name, agent.temperature) == ("Renamed meanwhile", 1.1)


def test_updating_an_agent_moves_its_updated_at() -> None:
    agent = AgentFactory()
    before = agent.updated_at

    update_agent(agent=agent, is_active=False)

    agent.refresh_from_db()
    assert agent.updated_at > before
    assert agent.is_active is False


def test_pointing_an_agent_at_another_provider_and_model() -> None:
    agent = AgentFactory()
    other = LLMProviderFactory()

    update_agent(agent=agent, provider=other, model="llama3.1:8b")

    agent.refresh_from_db()
    assert (agent.provider, agent.model) == (other, "llama3.1:8b")


def test_creating_a_task_config_stores_the_given_fields() -> None:
    task_config = create_task_config(name="Chores", instructions="List chores.", response_schema=SCHEMA)

    assert stored_task_config("Chores") == {
        "name": "Chores",
        "description": "",
        "instructions": "List chores.",
        "response_schema": SCHEMA,
        "is_active": True,
    }
    assert task_config.pk == TaskConfig.objects.get(name="Chores").pk


def test_updating_a_task_config_writes_only_the_fields_given() -> None:
    task_config = TaskConfigFactory(instructions="Old.")
    other_copy = TaskConfig.objects.get(pk=task_config.pk)
    other_copy.is_active = False
    other_copy.save()

    update_task_config(task_config=task_config, instructions="New.", response_schema=SCHEMA)

    task_config.refresh_from_db()
    assert (task_config.instructions, task_config.response_schema, task_config.is_active) == (
        "New.",
        SCHEMA,
        False,
    )


@pytest.mark.parametrize("field", ["created_at", "updated_at", "task_configs", "id"])
def test_an_agent_field_the_services_do_not_edit_is_a_programming_error(field: str) -> None:
    agent = AgentFactory(name="Untouched")

    with pytest.raises(TypeError, match=f"Not an editable agent field: {field}"):
        update_agent(agent=agent, name="Changed", **{field: None})
    with pytest.raises(TypeError, match="Not an editable agent field"):
        create_agent(name="New", provider=agent.provider, model="m", **{field: None})

    assert list(Agent.objects.values_list("name", flat=True)) == ["Untouched"]


@pytest.mark.parametrize("field", ["created_at", "agents", "assignments"])
def test_a_task_config_field_the_services_do_not_edit_is_a_programming_error(field: str) -> None:
    task_config = TaskConfigFactory(name="Untouched")

    with pytest.raises(TypeError, match=f"Not an editable task config field: {field}"):
        update_task_config(task_config=task_config, name="Changed", **{field: None})
    with pytest.raises(TypeError, match="Not an editable task config field"):
        create_task_config(name="New", instructions="x", response_schema=SCHEMA, **{field: None})

    assert not TaskConfig.objects.filter(name__in=["Changed", "New"]).exists()
