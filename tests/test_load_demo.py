import re
from datetime import datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from jsonschema import Draft202012Validator

from agents.defaults import DEFAULT_RESPONSE_SCHEMA, DEFAULT_TASK_CONFIG_NAME, SMALL_TASK_CONFIG_NAME
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from projects.models import Project, ProjectConfig, ProjectMembership
from sources.models import Chat, Message
from tasktracker.embedded_llm import PARALLEL

pytestmark = pytest.mark.django_db

DEMO_MODELS = [
    get_user_model(),
    Project,
    ProjectMembership,
    ProjectConfig,
    Chat,
    Message,
    LLMProvider,
    Agent,
    TaskConfig,
    AgentTaskAssignment,
]


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in DEMO_MODELS}


def test_load_demo_twice_changes_nothing_the_second_time(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("load_demo")
    first = row_counts()
    capsys.readouterr()

    call_command("load_demo")

    assert row_counts() == first
    assert "nothing changed" in capsys.readouterr().out


def test_load_demo_builds_a_project_reading_the_demo_chat() -> None:
    call_command("load_demo")

    chat = Chat.objects.get(telegram_id=-1001876543210)
    assert chat.messages.count() > 50
    config = ProjectConfig.objects.get(project__slug="acme-mobile", is_current=True)
    assert config.version == "1.0.0"
    assert list(config.chats.all()) == [chat]
    assert ProjectMembership.objects.get(project=config.project, role="lead").user.username == "alice"
    assert get_user_model().objects.get(username="admin").is_superuser
    assert get_user_model().objects.get(username="bob").check_password("demo-pass-123")


def test_the_demo_agent_runs_the_small_task_config_on_the_embedded_model(settings: object) -> None:
    settings.EMBEDDED_LLM_PORT = 18089
    settings.EMBEDDED_LLM_MODEL = "smollm2-135m-instruct"

    call_command("load_demo")

    agent = Agent.objects.select_related("provider").get(name="Demo agent")
    assert agent.provider.base_url == "http://127.0.0.1:18089/v1"
    assert agent.provider.api_key == ""
    assert agent.provider.max_concurrency == PARALLEL  # the server's slots
    assert agent.model == "smollm2-135m-instruct"
    assert list(agent.task_configs.values_list("name", flat=True)) == [SMALL_TASK_CONFIG_NAME]


def test_a_demo_agent_of_an_earlier_demo_is_moved_to_the_embedded_model() -> None:
    call_command("load_demo")
    agent = Agent.objects.get(name="Demo agent")
    old = LLMProvider.objects.create(name="Local fake (demo)", base_url="http://127.0.0.1:8001/v1")
    Agent.objects.filter(pk=agent.pk).update(provider=old, model="demo-model")

    call_command("load_demo")

    agent.refresh_from_db()
    assert agent.provider.name == "Embedded model"
    assert agent.model != "demo-model"


def test_the_new_run_pages_defaults_cover_the_demo_chat_and_choose_the_demo_agent() -> None:
    call_command("load_demo")
    client = Client()
    client.login(username="alice", password="demo-pass-123")

    page = client.get("/runs/new/").content.decode()

    start, end = (
        timezone.make_aware(
            datetime.fromisoformat(re.search(rf'name="{name}" value="([^"]+)"', page).group(1))
        )
        for name in ("window_start", "window_end")
    )
    chat = Chat.objects.get(telegram_id=-1001876543210)
    in_window = chat.messages.filter(sent_at__gte=start, sent_at__lt=end).count()
    assert in_window == chat.messages.count() > 50
    project = Project.objects.get(slug="acme-mobile")
    assert re.search(rf'value="{project.pk}"[^>]*checked', page)
    assignment = AgentTaskAssignment.objects.get(agent__name="Demo agent")
    assert re.search(rf'<option value="{assignment.pk}" selected', page)


def test_the_default_task_config_exists_after_migrations_with_a_valid_schema() -> None:
    config = TaskConfig.objects.get(name=DEFAULT_TASK_CONFIG_NAME)

    Draft202012Validator.check_schema(config.response_schema)
    assert config.response_schema == DEFAULT_RESPONSE_SCHEMA
    assert "data" in config.instructions


def test_the_default_schema_accepts_a_proposal_and_refuses_one_without_sources() -> None:
    proposal = {
        "title": "Fix login crash on Android 14",
        "description": "Crash when biometric unlock is on and the session expired.",
        "project": "acme-mobile",
        "assignee": None,
        "priority": "critical",
        "category": "bug",
        "tags": ["android"],
        "due_date": "2026-11-25",
        "confidence": 0.95,
        "reasoning": "A reproducible crash called a release blocker.",
        "recommendation": "new_task",
        "source_message_ids": [3206],
    }
    validator = Draft202012Validator(DEFAULT_RESPONSE_SCHEMA)

    assert validator.is_valid({"proposals": [proposal]})
    assert not validator.is_valid({"proposals": [{**proposal, "source_message_ids": []}]})
    assert not validator.is_valid({"proposals": [{**proposal, "extra": 1}]})
