"""The database itself refuses what the schema forbids, whatever the code path."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from analysis.models import AnalysisRun
from projects.models import Project, ProjectConfig, Task
from proposals.models import TaskProposal
from sources.models import Chat, Message

pytestmark = pytest.mark.django_db


def test_a_message_is_stored_once_per_chat_and_telegram_id() -> None:
    chat = Chat.objects.create(telegram_id=-1001, title="Team")
    Message.objects.create(chat=chat, telegram_id=7, text="hi", sent_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(chat=chat, telegram_id=7, text="again", sent_at=timezone.now())
    other = Chat.objects.create(telegram_id=-1002, title="Other")
    Message.objects.create(chat=other, telegram_id=7, text="same id, other chat", sent_at=timezone.now())
    assert Message.objects.filter(telegram_id=7).count() == 2


def test_a_project_has_one_current_config_version() -> None:
    project = Project.objects.create(name="Acme", slug="acme")
    ProjectConfig.objects.create(project=project, major=1, is_current=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ProjectConfig.objects.create(project=project, major=2, is_current=True)
    ProjectConfig.objects.create(project=project, major=2, is_current=False)
    assert project.configs.filter(is_current=True).count() == 1


def test_confidence_outside_zero_to_one_is_refused() -> None:
    project = Project.objects.create(name="Acme", slug="acme")
    for bad in (-0.01, 1.01):
        with pytest.raises(IntegrityError), transaction.atomic():
            TaskProposal.objects.create(project=project, title="t", confidence=bad)
    TaskProposal.objects.create(project=project, title="ok", confidence=1.0)
    assert TaskProposal.objects.count() == 1


def test_unknown_status_values_are_refused() -> None:
    chat = Chat.objects.create(telegram_id=-1001, title="Team")
    with pytest.raises(IntegrityError), transaction.atomic():
        Chat.objects.filter(pk=chat.pk).update(type="forum")
    project = Project.objects.create(name="Acme", slug="acme")
    task = Task.objects.create(project=project, title="t")
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(status="finished")
    assert AnalysisRun.Status.PENDING in AnalysisRun.TRANSITIONS


def test_a_run_window_must_end_after_it_starts() -> None:
    provider = LLMProvider.objects.create(name="p", base_url="http://127.0.0.1:9/v1")
    agent = Agent.objects.create(name="a", provider=provider, model="m")
    config = TaskConfig.objects.create(name="c", instructions="i", response_schema={"type": "object"})
    assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=config)
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        AnalysisRun.objects.create(
            assignment=assignment, window_start=now, window_end=now - timedelta(hours=1)
        )
    AnalysisRun.objects.create(assignment=assignment, window_start=now - timedelta(hours=1), window_end=now)
    assert AnalysisRun.objects.count() == 1
