import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from jsonschema import Draft202012Validator

from agents.defaults import DEFAULT_RESPONSE_SCHEMA, DEFAULT_TASK_CONFIG_NAME
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from projects.models import Project, ProjectConfig, ProjectMembership
from sources.models import Chat, Message

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
    provider = LLMProvider.objects.get(name="Local fake (demo)")
    assert provider.api_key == "demo-key"
    assert provider.api_key_encrypted != "demo-key"
    assert AgentTaskAssignment.objects.filter(
        agent__name="Demo agent", task_config__name=DEFAULT_TASK_CONFIG_NAME
    ).exists()


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
