import time
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.models import AgentTaskAssignment
from agents.services import ensure_default_task_config
from analysis.models import AnalysisRun
from projects.models import Project
from tests.factories import (
    AgentFactory,
    ChatFactory,
    LLMProviderFactory,
    MessageFactory,
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    UserFactory,
)

WINDOW_START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
WINDOW_END = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
CHAT_LINES = [
    "Morning all",
    "The Android app crashes on login since 2.3.1",
    "ok",
    "Can you please add dark mode to settings?",
    "👍",
    "Who's up for lunch?",
    "Please fix the flaky checkout test before Friday",
    "/start",
    "I think the crash comes from the token refresh",
    "Please update the release checklist",
    "thanks",
    "Let's discuss the roadmap tomorrow",
]


def make_setup(base_url: str, *, budget: int = 60, lines: list[str] | None = None) -> dict[str, Any]:
    """A project reading one chat of messages, an agent on the fake LLM, its assignment."""
    lead = UserFactory(username="alice", first_name="Alice")
    project = ProjectFactory(name="Acme Mobile", slug="acme-mobile", default_assignee=lead)
    ProjectMembershipFactory(project=project, user=lead, role="lead")
    chat = ChatFactory(title="Acme Mobile Team")
    ProjectConfigFactory(project=project, chats=[chat], keywords=["release"], exclude_keywords=["lunch"])
    messages = [
        MessageFactory(
            chat=chat, telegram_id=i + 1, text=text, sent_at=WINDOW_START + timedelta(minutes=10 * i)
        )
        for i, text in enumerate(lines or CHAT_LINES)
    ]
    provider = LLMProviderFactory(
        base_url=base_url, timeout_seconds=5, max_concurrency=2, requests_per_minute=6000
    )
    agent = AgentFactory(provider=provider, model="fake-model", batch_token_budget=budget)
    assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=ensure_default_task_config())
    return {"project": project, "chat": chat, "messages": messages, "assignment": assignment, "lead": lead}


def wait_for_status(run: AnalysisRun, *statuses: str, timeout: float = 60) -> AnalysisRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in statuses:
            return run
        time.sleep(0.1)
    raise AssertionError(f"Run {run.pk} is {run.status}, not {statuses}, after {timeout} s")


def projects(setup: dict[str, Any]) -> list[Project]:
    return [setup["project"]]
