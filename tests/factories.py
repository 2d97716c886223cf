"""factory-boy factories, one per model.

Defaults make a valid row with the fewest surprises; pass what a test is about. Many-to-many
relations are set with a list: `AnalysisRunFactory(projects=[project])`,
`TaskProposalFactory(source_messages=[message])`.
"""

from collections.abc import Sequence
from datetime import timedelta
from functools import cache
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from django.utils.text import slugify

from agents.crypto import encrypt
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from analysis.models import AnalysisRun, Batch
from projects.models import Project, ProjectConfig, ProjectMembership, Task, WebhookDelivery, WebhookEndpoint
from proposals.models import ReviewEvent, TaskProposal
from sources.models import Chat, Message, MessageEdit, PollingState, TelegramUpdate

TEST_API_KEY = "sk-test-1234567890"
TEST_PASSWORD = "correct-horse-battery-staple"

RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "confidence": {"type": "number"}},
                "required": ["title", "confidence"],
            },
        }
    },
    "required": ["tasks"],
}


def _set_many(field: str) -> factory.PostGeneration:
    """A post-generation hook that sets a many-to-many relation from a list passed in."""

    def hook(obj: Any, create: bool, extracted: Sequence[Any] | None, **kwargs: Any) -> None:
        if create and extracted:
            getattr(obj, field).set(extracted)

    return factory.PostGeneration(hook)


@cache
def _hash_password(raw: str | None) -> str:
    # Hashing is slow on purpose: one salted hash per password serves every test user.
    return make_password(raw)


class UserFactory(factory.django.DjangoModelFactory):
    """A user whose password is `TEST_PASSWORD`; `UserFactory(password="...")` hashes another."""

    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    first_name = factory.Sequence(lambda n: f"First{n}")
    last_name = factory.Sequence(lambda n: f"Last{n}")
    password = factory.django.Password(TEST_PASSWORD, transform=_hash_password)


# sources


class ChatFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Chat

    telegram_id = factory.Sequence(lambda n: -1001000000000 - n)
    title = factory.Sequence(lambda n: f"Team chat {n}")
    type = Chat.Type.SUPERGROUP
    is_active = True


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    chat = factory.SubFactory(ChatFactory)
    telegram_id = factory.Sequence(lambda n: n + 1)
    author_id = factory.Sequence(lambda n: 5000 + n)
    author_name = factory.Sequence(lambda n: f"Author {n}")
    text = factory.Sequence(lambda n: f"Message number {n}: please fix the login page")
    sent_at = factory.LazyFunction(timezone.now)


class MessageEditFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MessageEdit

    message = factory.SubFactory(MessageFactory)
    previous_text = factory.Sequence(lambda n: f"Earlier text {n}")
    edited_at = factory.LazyFunction(timezone.now)


class TelegramUpdateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TelegramUpdate

    update_id = factory.Sequence(lambda n: 100000 + n)
    kind = "message"


class PollingStateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PollingState

    bot_id = factory.Sequence(lambda n: 700000 + n)
    last_update_id = 0


# projects


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    slug = factory.LazyAttribute(lambda o: slugify(o.name))
    is_active = True


class ProjectMembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProjectMembership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = ProjectMembership.Role.MEMBER


class ProjectConfigFactory(factory.django.DjangoModelFactory):
    """Version 1.0.0, current. A project holds one current config: pass `is_current=False`
    and another version for the older ones."""

    class Meta:
        model = ProjectConfig
        skip_postgeneration_save = True

    project = factory.SubFactory(ProjectFactory)
    major = 1
    minor = 0
    patch = 0
    is_current = True
    description = factory.LazyAttribute(lambda o: f"Configuration of {o.project.name}")
    language = "en"
    keywords = factory.LazyFunction(lambda: ["bug", "deadline"])
    change_summary = "Initial version"
    chats = _set_many("chats")


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    project = factory.SubFactory(ProjectFactory)
    title = factory.Sequence(lambda n: f"Task {n}")
    description = "Something to do."


class WebhookEndpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WebhookEndpoint

    project = factory.SubFactory(ProjectFactory)
    url = factory.Sequence(lambda n: f"https://hooks.example.com/{n}")


class WebhookDeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WebhookDelivery

    endpoint = factory.SubFactory(WebhookEndpointFactory)
    event = "task.status_changed"
    payload = factory.LazyFunction(lambda: {"task": {"id": 1}})


# agents


class LLMProviderFactory(factory.django.DjangoModelFactory):
    """`api_key` is a parameter: `LLMProviderFactory(api_key="sk-other")`, or "" for none."""

    class Meta:
        model = LLMProvider

    class Params:
        api_key = TEST_API_KEY

    name = factory.Sequence(lambda n: f"Provider {n}")
    base_url = "http://127.0.0.1:9/v1"
    api_key_encrypted = factory.LazyAttribute(lambda o: encrypt(o.api_key) if o.api_key else "")


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    name = factory.Sequence(lambda n: f"Agent {n}")
    provider = factory.SubFactory(LLMProviderFactory)
    model = "gpt-4o-mini"
    system_prompt = "You extract tasks from team chat."


class TaskConfigFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TaskConfig

    name = factory.Sequence(lambda n: f"Task extraction {n}")
    description = "Find the tasks people agree on."
    instructions = "List every task the messages agree on, with a confidence from 0 to 1."
    response_schema = factory.LazyFunction(lambda: RESPONSE_SCHEMA)


class AgentTaskAssignmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentTaskAssignment

    agent = factory.SubFactory(AgentFactory)
    task_config = factory.SubFactory(TaskConfigFactory)


# analysis


class AnalysisRunFactory(factory.django.DjangoModelFactory):
    """A pending run over the last day. `projects=[...]` sets its projects (none by default)."""

    class Meta:
        model = AnalysisRun
        skip_postgeneration_save = True

    window_end = factory.LazyFunction(timezone.now)
    window_start = factory.LazyAttribute(lambda o: o.window_end - timedelta(days=1))
    assignment = factory.SubFactory(AgentTaskAssignmentFactory)
    projects = _set_many("projects")
    chats = _set_many("chats")


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Batch

    run = factory.SubFactory(AnalysisRunFactory)
    index = factory.Sequence(lambda n: n)
    message_ids = factory.LazyFunction(list)


# proposals


class TaskProposalFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TaskProposal
        skip_postgeneration_save = True

    run = factory.SubFactory(AnalysisRunFactory)
    project = factory.SubFactory(ProjectFactory)
    title = factory.Sequence(lambda n: f"Proposal {n}")
    description = "Fix the login page before the release."
    confidence = 0.8
    reasoning = "Two people agreed on it and set a date."
    source_messages = _set_many("source_messages")


class ReviewEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReviewEvent

    proposal = factory.SubFactory(TaskProposalFactory)
    user = factory.SubFactory(UserFactory)
    action = ReviewEvent.Action.APPROVE
