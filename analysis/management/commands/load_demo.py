"""Demo data for a first look: users, the "Acme Mobile" project, its chat and an agent.

Idempotent: every row is looked up before it is created and nothing that exists is
changed, so a second run reports that nothing changed.
"""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from agents.defaults import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_RESPONSE_SCHEMA,
    DEFAULT_TASK_CONFIG_DESCRIPTION,
    DEFAULT_TASK_CONFIG_NAME,
)
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from projects.models import Project, ProjectMembership
from projects.services import bump_config, create_project
from sources.models import Chat
from sources.services import bot_api_chat_id, import_telegram_export
from tasktracker.exceptions import DomainError

DEMO_EXPORT = settings.BASE_DIR / "demo" / "result.json"
DEMO_CHAT_ID = bot_api_chat_id(export_id=1876543210, chat_type=Chat.Type.SUPERGROUP)
DEMO_PASSWORD = "demo-pass-123"  # noqa: S105 -- demo accounts, documented
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"  # noqa: S105 -- the demo's documented login

# username, first name, last name, role; the names are those the demo chat uses.
DEMO_TEAM = [
    ("alice", "Alice", "Kim", ProjectMembership.Role.LEAD),
    ("bob", "Bob", "Martin", ProjectMembership.Role.MEMBER),
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
        User = get_user_model()
        if not User.objects.filter(username=ADMIN_USERNAME).exists():
            User.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
            self.changes.append(f"superuser: log in at /admin/ as {ADMIN_USERNAME} / {ADMIN_PASSWORD}")

        team: list[tuple[AbstractUser, str]] = []
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

        result = import_telegram_export(path_or_file=DEMO_EXPORT)
        if result.created or result.updated:
            self.changes.append(
                f"demo chat: {result.created} messages imported, {result.updated} updated "
                f"({result.skipped_total} service messages skipped)"
            )
        chat = Chat.objects.get(telegram_id=DEMO_CHAT_ID)

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
            self.changes.append(f"{project.name} config v{config.version}")

        task_config, created = TaskConfig.objects.get_or_create(
            name=DEFAULT_TASK_CONFIG_NAME,
            defaults={
                "description": DEFAULT_TASK_CONFIG_DESCRIPTION,
                "instructions": DEFAULT_INSTRUCTIONS,
                "response_schema": DEFAULT_RESPONSE_SCHEMA,
            },
        )
        if created:
            self.changes.append(f"task config {task_config.name}")

        provider = LLMProvider.objects.filter(name="Local fake (demo)").first()
        if provider is None:
            provider = LLMProvider(name="Local fake (demo)", base_url="http://127.0.0.1:8001/v1")
            provider.api_key = "demo-key"
            provider.save()
            self.changes.append(f"LLM provider {provider.name} at {provider.base_url}")
        agent, created = Agent.objects.get_or_create(
            name="Demo agent", defaults={"provider": provider, "model": "demo-model"}
        )
        if created:
            self.changes.append(f"agent {agent.name} ({agent.model})")
        _, created = AgentTaskAssignment.objects.get_or_create(agent=agent, task_config=task_config)
        if created:
            self.changes.append(f"{agent.name} assigned {task_config.name}")
