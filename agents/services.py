"""Writes of the `agents` app: providers, agents, task configs, and their checks."""

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from django.db import IntegrityError, transaction
from django.db.models import Model, ProtectedError
from django.utils import timezone

from agents.defaults import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_RESPONSE_SCHEMA,
    DEFAULT_TASK_CONFIG_DESCRIPTION,
    DEFAULT_TASK_CONFIG_NAME,
    SMALL_INSTRUCTIONS,
    SMALL_RESPONSE_SCHEMA,
    SMALL_TASK_CONFIG_DESCRIPTION,
    SMALL_TASK_CONFIG_NAME,
)
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from agents.prompts import PromptMessage, system_prompt, user_prompt
from agents.usage import LLMError
from tasktracker.celery import app as celery_app
from tasktracker.exceptions import DomainError

ModelT = TypeVar("ModelT", bound=Model)

logger = logging.getLogger(__name__)
# The health check, queued by its name: `agents.tasks` imports these services.
HEALTH_TASK = "agents.check_provider_health"

SAMPLE_CHAT = [
    ("Alice", "The Android app crashes right after tapping Log in on Android 14, 100% reproducible."),
    ("Bob", "Confirmed on a Pixel 8. Stack trace points at the token refresh."),
    ("Carol", "Can someone update the release checklist before Friday's 2.4 release?"),
    ("Dave", "ok"),
    ("Erin", "Could we add dark mode to the settings screen? Customers keep asking."),
]


def ensure_default_task_config() -> TaskConfig:
    """The "Extract tasks" config that ships with the product (a migration creates it)."""
    task_config, _ = _ensure_task_config(
        name=DEFAULT_TASK_CONFIG_NAME,
        description=DEFAULT_TASK_CONFIG_DESCRIPTION,
        instructions=DEFAULT_INSTRUCTIONS,
        response_schema=DEFAULT_RESPONSE_SCHEMA,
    )
    return task_config


def ensure_small_task_config() -> tuple[TaskConfig, bool]:
    """The "Extract tasks (small models)" config, created the first time (an edited one is
    kept as it is); and whether it was created now."""
    return _ensure_task_config(
        name=SMALL_TASK_CONFIG_NAME,
        description=SMALL_TASK_CONFIG_DESCRIPTION,
        instructions=SMALL_INSTRUCTIONS,
        response_schema=SMALL_RESPONSE_SCHEMA,
    )


def _ensure_task_config(*, name: str, **fields: Any) -> tuple[TaskConfig, bool]:
    """The task config named `name`, created through `create_task_config` when missing; one
    that exists is returned as it is (a user may have edited it). Idempotent, for the
    defaults and the management commands; two callers at once are told apart by the unique
    name, the second getting the row the first created."""
    existing = TaskConfig.objects.filter(name=name).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            return create_task_config(name=name, **fields), True
    except IntegrityError:
        return TaskConfig.objects.get(name=name), False


def sample_messages() -> list[PromptMessage]:
    start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    return [
        PromptMessage(id=i + 1, sent_at=start + timedelta(minutes=3 * i), author=author, text=text)
        for i, (author, text) in enumerate(SAMPLE_CHAT)
    ]


def request_provider_check(*, provider: LLMProvider) -> None:
    """Mark a provider pending and check it in the background once this transaction commits."""
    LLMProvider.objects.filter(pk=provider.pk).update(health=LLMProvider.Health.PENDING, health_error="")
    transaction.on_commit(lambda: celery_app.send_task(HEALTH_TASK, args=[provider.pk]))


def check_provider_health(*, provider_id: int) -> LLMProvider:
    """Ask the provider for its model list: connected with the models, or error with why."""
    updated = LLMProvider.objects.filter(pk=provider_id).update(health=LLMProvider.Health.VALIDATING)
    if not updated:
        raise DomainError(f"There is no provider {provider_id}.", code="not_found", status=404)
    provider = LLMProvider.objects.get(pk=provider_id)
    from agents.llm import list_models  # the openai SDK, where a call is made (agents.usage)

    try:
        models = list_models(provider=provider)
    except LLMError as exc:
        provider.health, provider.health_error = LLMProvider.Health.ERROR, exc.message
    else:
        provider.health, provider.health_error, provider.available_models = (
            LLMProvider.Health.CONNECTED,
            "",
            models,
        )
    provider.health_checked_at = timezone.now()
    provider.save(
        update_fields=["health", "health_error", "available_models", "health_checked_at", "updated_at"]
    )
    return provider


@transaction.atomic
def assign_task_config(
    *, agent: Agent, task_config: TaskConfig, is_active: bool = True
) -> AgentTaskAssignment:
    """Assign a task config to an agent (switched off with `is_active=False`: runs refuse
    it); a second assignment of the same pair is a 409."""
    try:
        with transaction.atomic():
            return AgentTaskAssignment.objects.create(
                agent=agent, task_config=task_config, is_active=is_active
            )
    except IntegrityError:
        raise DomainError(
            f"{agent} already has the task config {task_config}.", code="already_assigned", status=409
        ) from None


@transaction.atomic
def update_assignment(*, assignment: AgentTaskAssignment, is_active: bool) -> AgentTaskAssignment:
    """Switch an assignment on or off; runs refuse one switched off. Its agent and task
    config never change: the runs that used it record what they ran by it."""
    assignment.is_active = is_active
    assignment.save(update_fields=["is_active"])
    return assignment


@dataclass
class AgentTestResult:
    ok: bool
    proposals: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    error_kind: str = ""
    latency_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    attempts: int = 0


def test_agent(
    *, agent: Agent, task_config: TaskConfig | None = None, messages: list[PromptMessage] | None = None
) -> AgentTestResult:
    """Send sample messages (given, or built in) to the agent and report what came back.

    Never raises for the LLM's failures: an unreachable provider, a refused key, an
    unknown model or a malformed answer come back as `error` sentences.
    """
    from agents.llm import complete_json  # the openai SDK, where a call is made (agents.usage)

    task_config = task_config or _default_task_config(agent)
    started = time.monotonic()
    try:
        result = complete_json(
            provider=agent.provider,
            model=agent.model,
            system_prompt=system_prompt(agent, task_config),
            user_prompt=user_prompt(messages or sample_messages()),
            schema=task_config.response_schema,
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
        )
    except LLMError as exc:
        usage = exc.usage
        return AgentTestResult(
            ok=False,
            error=_explain(exc),
            error_kind=exc.kind,
            latency_seconds=time.monotonic() - started,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
            attempts=usage.attempts,
        )
    usage = result.usage
    return AgentTestResult(
        ok=True,
        proposals=list(result.data.get("proposals", [])),
        latency_seconds=usage.latency_seconds,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost=usage.cost,
        attempts=usage.attempts,
    )


# `test_agent` is a service, not a pytest test.
test_agent.__test__ = False  # type: ignore[attr-defined]


def _default_task_config(agent: Agent) -> TaskConfig:
    assignment = agent.assignments.select_related("task_config").filter(is_active=True).first()
    if assignment is None:
        raise DomainError(f"{agent} has no task config assigned.", code="no_task_config")
    return assignment.task_config


def _explain(exc: LLMError) -> str:
    hints = {
        "connection": "Check the base URL and that the server is running.",
        "timeout": "The provider did not answer in time; raise its timeout or check the server.",
        "auth": "Check the API key.",
        "model_not_found": "Choose one of the provider's models.",
        "malformed": "The model's answer was not JSON; try a stronger model or a lower temperature.",
        "schema_invalid": "The model's answer did not match the task config's schema.",
        "truncated": "Raise the agent's max output tokens.",
        "redirect": "Set the base URL to the address the provider wants, if LLM_ALLOWED_HOSTS allows it.",
        "limiter_unavailable": "Try again once Redis is back.",
    }
    hint = hints.get(exc.kind, "")
    return f"{exc.message} {hint}".strip()


# Providers, agents and task configs: the API and the admin write them through these.

_PROVIDER_FIELDS = frozenset(
    {
        "name",
        "base_url",
        "timeout_seconds",
        "max_concurrency",
        "requests_per_minute",
        "price_per_1k_input",
        "price_per_1k_output",
        "is_active",
    }
)


def _check_fields(fields: dict[str, Any], *, editable: frozenset[str], kind: str) -> None:
    unknown = set(fields) - editable
    if unknown:
        # A programming error, not a user's: timestamps, health and keys are never set here.
        raise TypeError(f"Not an editable {kind} field: {', '.join(sorted(unknown))}")


def _save_fields(instance: ModelT, fields: dict[str, Any]) -> ModelT:
    """Set and write only `fields` (and `updated_at`): a change of another field made
    meanwhile is not undone."""
    for name, value in fields.items():
        setattr(instance, name, value)
    instance.save(update_fields=[*fields, "updated_at"])
    return instance


@transaction.atomic
def create_provider(*, api_key: str = "", **fields: Any) -> LLMProvider:
    """Create a provider (its key stored encrypted) and check it in the background once
    committed. `fields` are LLMProvider's editable fields, validated by the caller."""
    _check_fields(fields, editable=_PROVIDER_FIELDS, kind="provider")
    provider = LLMProvider(**fields)
    provider.api_key = api_key
    provider.save()
    request_provider_check(provider=provider)
    return provider


@transaction.atomic
def update_provider(*, provider: LLMProvider, api_key: str | None = None, **fields: Any) -> LLMProvider:
    """Change a provider's editable fields. `api_key` None keeps the stored key, "" removes it.

    A new base URL or key makes the provider pending and checks it again once committed.
    Only the fields given are written, so a health check finishing meanwhile is not undone.
    """
    _check_fields(fields, editable=_PROVIDER_FIELDS, kind="provider")
    recheck = ("base_url" in fields and fields["base_url"] != provider.base_url) or (
        api_key is not None and api_key != provider.api_key
    )
    for name, value in fields.items():
        setattr(provider, name, value)
    changed = [*fields, "updated_at"]
    if api_key is not None:
        provider.api_key = api_key
        changed.append("api_key_encrypted")
    provider.save(update_fields=changed)
    if recheck:
        request_provider_check(provider=provider)
        provider.health, provider.health_error = LLMProvider.Health.PENDING, ""
    return provider


_AGENT_FIELDS = frozenset(
    {
        "name",
        "provider",
        "model",
        "system_prompt",
        "temperature",
        "max_output_tokens",
        "batch_token_budget",
        "is_active",
    }
)

_TASK_CONFIG_FIELDS = frozenset(
    {
        "name",
        "description",
        "instructions",
        "response_schema",
        "max_proposals_per_batch",
        "max_proposals_per_message",
        "review_examples",
        "review_examples_tokens",
        "is_active",
    }
)


def check_agent_provider(*, provider: LLMProvider, agent: Agent | None = None) -> None:
    """The one rule for an agent's provider: a newly chosen one must be active. Keeping the
    provider an agent has already is allowed even when it is switched off, so that
    switching a provider off does not make its agents uneditable (a PUT, or the admin's
    form, sends the provider they already have). Raises `DomainError(code="invalid_provider")`;
    the API's serializer and the admin's form ask it to put the message under the field,
    and `create_agent`/`update_agent` ask it again for every other caller."""
    unchanged = agent is not None and agent.pk is not None and agent.provider_id == provider.pk
    if not provider.is_active and not unchanged:
        raise DomainError("This provider is switched off; choose an active one.", code="invalid_provider")


@transaction.atomic
def create_agent(**fields: Any) -> Agent:
    """Create an agent. `fields` are Agent's editable fields, validated by the caller
    (the temperature in range); the provider must be active (`check_agent_provider`)."""
    _check_fields(fields, editable=_AGENT_FIELDS, kind="agent")
    if "provider" in fields:
        check_agent_provider(provider=fields["provider"])
    agent = Agent(**fields)
    agent.save()
    return agent


@transaction.atomic
def update_agent(*, agent: Agent, **fields: Any) -> Agent:
    """Change an agent's editable fields, validated by the caller; a newly chosen provider
    must be active (`check_agent_provider`). Only the fields given are written, so a change
    of another field made meanwhile is not undone. `agent` must still hold the stored
    provider (the admin passes the stored row, not its form's copy)."""
    _check_fields(fields, editable=_AGENT_FIELDS, kind="agent")
    if "provider" in fields:
        check_agent_provider(provider=fields["provider"], agent=agent)
    return _save_fields(agent, fields)


@transaction.atomic
def create_task_config(**fields: Any) -> TaskConfig:
    """Create a task config. `fields` are TaskConfig's editable fields, validated by the
    caller (`response_schema` by the model's `validate_json_schema`)."""
    _check_fields(fields, editable=_TASK_CONFIG_FIELDS, kind="task config")
    task_config = TaskConfig(**fields)
    task_config.save()
    return task_config


@transaction.atomic
def update_task_config(*, task_config: TaskConfig, **fields: Any) -> TaskConfig:
    """Change a task config's editable fields, validated by the caller. Only the fields given
    are written, so a change of another field made meanwhile is not undone."""
    _check_fields(fields, editable=_TASK_CONFIG_FIELDS, kind="task config")
    return _save_fields(task_config, fields)


@transaction.atomic
def delete_configuration(*, instance: LLMProvider | Agent | TaskConfig | AgentTaskAssignment) -> None:
    """Delete a provider, agent, task config or assignment. One still in use (a provider's
    agents, an assignment's analysis runs) stays, and the 409 says what uses it."""
    try:
        instance.delete()
    except ProtectedError as exc:
        # Raised while collecting, before anything is deleted.
        counts = Counter(obj._meta for obj in exc.protected_objects)
        users = " and ".join(
            f"{n} {opts.verbose_name if n == 1 else opts.verbose_name_plural}"
            for opts, n in sorted(counts.items(), key=lambda item: item[0].label)
        )
        raise DomainError(
            f"{instance} is still used by {users}; switch it off instead, or delete those first.",
            code="in_use",
            status=409,
        ) from None
