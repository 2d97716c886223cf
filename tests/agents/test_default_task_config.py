"""The default task config: short enough to send with every batch, and updated in stored
databases only where nobody edited it."""

import importlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import connection

from agents.defaults import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_RESPONSE_SCHEMA,
    DEFAULT_TASK_CONFIG_NAME,
    SMALL_INSTRUCTIONS,
)
from agents.models import TaskConfig
from agents.prompts import PromptMessage, numbered, render_messages
from agents.services import ensure_default_task_config, ensure_small_task_config
from analysis.pipeline import count_tokens

pytestmark = pytest.mark.django_db
migration = importlib.import_module("agents.migrations.0004_shorter_default_task_config")
small_migration = importlib.import_module("agents.migrations.0006_shorter_small_task_config")


def test_the_instructions_still_say_what_matters() -> None:
    for words in (
        "A task is",
        "above 0.9",
        "0.7 to 0.9",
        "below 0.7",
        "source_message_ids",
        "team member",
        "project's language",
    ):
        assert words in DEFAULT_INSTRUCTIONS
    assert count_tokens(DEFAULT_INSTRUCTIONS) < 350


def test_an_unedited_first_default_is_updated_and_an_edited_one_is_kept() -> None:
    config = ensure_default_task_config()
    TaskConfig.objects.filter(pk=config.pk).update(
        instructions=migration.FIRST_INSTRUCTIONS, response_schema=migration.FIRST_RESPONSE_SCHEMA
    )
    migration.shorten_default_task_config(apps, SimpleNamespace(connection=connection))
    config.refresh_from_db()
    assert (config.instructions, config.response_schema) == (DEFAULT_INSTRUCTIONS, DEFAULT_RESPONSE_SCHEMA)

    edited = migration.FIRST_INSTRUCTIONS + "\nAlways answer in French."
    TaskConfig.objects.filter(pk=config.pk).update(
        instructions=edited, response_schema=migration.FIRST_RESPONSE_SCHEMA
    )
    migration.shorten_default_task_config(apps, SimpleNamespace(connection=connection))
    config.refresh_from_db()
    assert config.instructions == edited
    assert config.name == DEFAULT_TASK_CONFIG_NAME


def test_an_unedited_first_small_config_is_shortened_and_an_edited_one_is_kept() -> None:
    config, _ = ensure_small_task_config()
    TaskConfig.objects.filter(pk=config.pk).update(instructions=small_migration.FIRST_SMALL_INSTRUCTIONS)
    small_migration.shorten_small_task_config(apps, SimpleNamespace(connection=connection))
    config.refresh_from_db()
    assert config.instructions == SMALL_INSTRUCTIONS
    assert "Each line is" not in config.instructions  # DATA_RULES gives the line format

    edited = small_migration.FIRST_SMALL_INSTRUCTIONS + "\nAnswer in French."
    TaskConfig.objects.filter(pk=config.pk).update(instructions=edited)
    small_migration.shorten_small_task_config(apps, SimpleNamespace(connection=connection))
    config.refresh_from_db()
    assert config.instructions == edited


def test_a_batch_is_numbered_from_one_with_replies_and_short_author_names() -> None:
    at = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    messages = [
        PromptMessage(id=4711, sent_at=at, author="Alice Martin", text="The login crashes"),
        PromptMessage(
            id=4712, sent_at=at + timedelta(minutes=1), author="Bob Chen", text="On it", reply_to=4711
        ),
        PromptMessage(
            id=4713, sent_at=at + timedelta(minutes=2), author="Bob Stone", text="Also", reply_to=99
        ),
    ]
    shown, ids = numbered(messages)
    assert ids == {1: 4711, 2: 4712, 3: 4713}
    assert render_messages(shown).splitlines() == [
        "== 2026-11-23 ==",
        "#1 09:00 Alice: The login crashes",
        "#2 >1 Bob Chen: On it",
        "#3 Bob Stone: Also",  # its parent is not in the batch: no mark that could read as #99
    ]
