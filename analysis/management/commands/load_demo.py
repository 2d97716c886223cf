"""Demo data for a first look: users, the "Acme Mobile" project, its chat and an agent.

Idempotent: every row is looked up before it is created and nothing that exists is
changed, so a second run reports that nothing changed. The demo agent runs on the embedded
model that `make run` serves (tasktracker/embedded_llm.py); the chat's days are moved to
the two days before the first load, so the New run page's default window holds them.
"""

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from agents.models import Agent, LLMProvider, TaskConfig
from agents.services import (
    assign_task_config,
    create_agent,
    create_provider,
    ensure_default_task_config,
    ensure_small_task_config,
    update_agent,
)
from projects.models import Project, ProjectMembership
from projects.services import bump_config, create_project
from sources.models import Chat
from sources.services import bot_api_chat_id, import_telegram_export
from tasktracker.embedded_llm import PARALLEL, base_url
from tasktracker.exceptions import DomainError

DEMO_EXPORT = settings.BASE_DIR / "demo" / "result.json"
DEMO_CHAT_ID = bot_api_chat_id(export_id=1876543210, chat_type=Chat.Type.SUPERGROUP)
DEMO_PASSWORD = "demo-pass-123"  # noqa: S105 -- demo accounts, documented
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"  # noqa: S105 -- the demo's documented login

# username, first name, last name, role; the names are those the demo chat uses.
DEMO_TEAM = [
    ("alice", "Alice", "Kim", ProjectMembership.Role.LEAD),
    ("bob", "Bob", "Martin", ProjectMembership.Role.REVIEWER),
    ("carol", "Carol", "Diaz", ProjectMembership.Role.MEMBER),
    ("dave", "Dave", "Okafor", ProjectMembership.Role.MEMBER),
    ("erin", "Erin", "Walsh", ProjectMembership.Role.MEMBER),
]

DEMO_CONFIG: dict[str, Any] = {
    "description": "The Acme Mobile apps (Android and iOS) and the API they use.",
    "language": "en",
    "keywords": ["android", "ios", "login", "crash", "release", "api", "bug", "deploy"],
    "exclude_keywords": ["lunch"],
    "glossary": [
        {"term": "RC", "meaning": "Release candidate build, sent to TestFlight and the internal Play track."},
        {"term": "release checklist", "meaning": "The wiki page every store submission follows."},
        {"term": "platform team", "meaning": "The backend team that owns the API and staging."},
    ],
    "components": [
        {"name": "Android app", "keywords": ["android", "play", "apk", "pixel", "galaxy"]},
        {"name": "iOS app", "keywords": ["ios", "iphone", "testflight", "swiftui", "app store"]},
        {"name": "Checkout", "keywords": ["checkout", "pay", "promo", "orders"]},
    ],
    "priority_rules": [
        {"when": "release blocker or crash on login", "priority": "critical"},
        {"when": "regression from the previous version", "priority": "high"},
    ],
    "batch_time_gap_minutes": 60,
}
DEMO_SUMMARY = "First configuration, loaded with the demo."

EMBEDDED_PROVIDER = "Embedded model"
DEMO_AGENT = "Demo agent"
# What the embedded model is asked for (measured in bench/embedded_llm.py): a 135M model answers
# best for small batches, and the small task config's answers end well within 400 tokens.
DEMO_AGENT_SETTINGS: dict[str, Any] = {
    "temperature": 0.0,
    "max_output_tokens": 400,
    "batch_token_budget": 800,
}
# A CPU answer takes seconds; a loaded two-core machine serving two batches at once, more.
EMBEDDED_TIMEOUT_SECONDS = 120.0


def shifted_export(path: Path, *, now: datetime) -> io.BytesIO:
    """The demo export with its days moved so that its last message is before `now`, on the
    day before at the latest: whole days, so the chat keeps its times of day."""
    export = json.loads(path.read_text(encoding="utf-8"))
    last = max(int(m["date_unixtime"]) for m in export["messages"])
    days = (now - timedelta(days=1)).date() - datetime.fromtimestamp(last, tz=now.tzinfo).date()
    shift = timedelta(days=days.days)
    for message in export["messages"]:
        for unix_key, local_key in (("date_unixtime", "date"), ("edited_unixtime", "edited")):
            if unix_key in message:
                moved = datetime.fromtimestamp(int(message[unix_key]), tz=now.tzinfo) + shift
                message[unix_key] = str(int(moved.timestamp()))
                message[local_key] = moved.replace(tzinfo=None).isoformat()
    return io.BytesIO(json.dumps(export).encode())


class Command(BaseCommand):
    help = "Load the demo: users, the Acme Mobile project and its chat export, and a demo agent. Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        self.changes: list[str] = []
        try:
            with transaction.atomic():
                self.load()
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        if self.changes:
            for change in self.changes:
                self.stdout.write(f"- {change}")
            self.stdout.write(self.style.SUCCESS("Demo data loaded."))
        else:
            self.stdout.write("Demo data already loaded; nothing changed.")
        self.stdout.write(
            f"Team accounts: {', '.join(username for username, *_ in DEMO_TEAM)}, password {DEMO_PASSWORD}."
        )

    def load(self) -> None:
        if not User.objects.filter(username=ADMIN_USERNAME).exists():
            User.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
            self.changes.append(f"superuser: log in at /admin/ as {ADMIN_USERNAME} / {ADMIN_PASSWORD}")

        team: list[tuple[User, str]] = []
        for username, first_name, last_name, role in DEMO_TEAM:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = User.objects.create_user(
                    username,
                    f"{username}@acme.example",
                    DEMO_PASSWORD,
                    first_name=first_name,
                    last_name=last_name,
                )
                self.changes.append(f"user {username}")
            team.append((user, role))
        lead = team[0][0]

        chat = Chat.objects.filter(telegram_id=DEMO_CHAT_ID).first()
        if chat is None:
            export = shifted_export(DEMO_EXPORT, now=timezone.now())
            result = import_telegram_export(path_or_file=export)
            chat = Chat.objects.get(telegram_id=DEMO_CHAT_ID)
            days = chat.messages.dates("sent_at", "day")
            self.changes.append(
                f"demo chat: {result.created} messages imported, dated {days.first()} to {days.last()} "
                f"({result.skipped_total} service messages skipped)"
            )

        # The team and the first version go through the services, so the memberships and
        # the version agree; an existing project keeps its configuration.
        demo_config = {
            **DEMO_CONFIG,
            "chats": [chat.pk],
            "team": [{"user_id": user.pk, "role": role} for user, role in team],
            "default_assignee": lead.pk,
        }
        project = Project.objects.filter(slug="acme-mobile").first()
        if project is None:
            project = create_project(
                name="Acme Mobile", slug="acme-mobile", user=lead, changes=demo_config, summary=DEMO_SUMMARY
            )
            members = ", ".join(f"{user.get_username()} ({role})" for user, role in team)
            self.changes.append(f"project {project.name} with config v1.0.0, team {members}")
        elif not project.configs.exists():
            config = bump_config(project=project, user=lead, changes=demo_config, summary=DEMO_SUMMARY)
            assert config is not None, "a project without a version always gets one"
            self.changes.append(f"{project.name} config v{config.version}")

        ensure_default_task_config()
        task_config, created = ensure_small_task_config()
        if created:
            self.changes.append(f"task config {task_config.name}")
        self.load_agent(task_config)

    def load_agent(self, task_config: TaskConfig) -> None:
        """The embedded model's provider and the demo agent on it, assigned `task_config`.
        A demo agent left on another provider by an earlier demo is moved to the model."""
        url = base_url(settings.EMBEDDED_LLM_PORT)
        provider = LLMProvider.objects.filter(name=EMBEDDED_PROVIDER).first()
        if provider is None:
            provider = create_provider(
                name=EMBEDDED_PROVIDER,
                base_url=url,
                timeout_seconds=EMBEDDED_TIMEOUT_SECONDS,
                max_concurrency=PARALLEL,  # the server's slots: more requests would only queue
            )
            self.changes.append(f"LLM provider {provider.name} at {provider.base_url} (no key)")
        agent = Agent.objects.filter(name=DEMO_AGENT).first()
        if agent is None:
            agent = create_agent(
                name=DEMO_AGENT, provider=provider, model=settings.EMBEDDED_LLM_MODEL, **DEMO_AGENT_SETTINGS
            )
            self.changes.append(f"agent {agent.name} ({agent.model} on {provider.name})")
        elif agent.provider_id != provider.pk:
            agent = update_agent(
                agent=agent, provider=provider, model=settings.EMBEDDED_LLM_MODEL, **DEMO_AGENT_SETTINGS
            )
            self.changes.append(f"agent {agent.name} moved to {provider.name} ({agent.model})")
        if not agent.assignments.filter(task_config=task_config).exists():
            assign_task_config(agent=agent, task_config=task_config)
            self.changes.append(f"{agent.name} assigned {task_config.name}")
