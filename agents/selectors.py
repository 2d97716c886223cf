"""Reads of the `agents` app: querysets with what their callers show already joined, so a
page of them costs the same few queries however long it is."""

from django.db.models import QuerySet

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from agents.usage import LLMError
from tasktracker.exceptions import DomainError


def provider_list() -> QuerySet[LLMProvider]:
    """Every provider by name; the id breaks ties so pages never repeat or skip one."""
    return LLMProvider.objects.order_by("name", "id")


def provider_detail() -> QuerySet[LLMProvider]:
    """Providers for a lookup by id: unordered, as ordering one row is wasted work."""
    return LLMProvider.objects.order_by()


def provider_live_models(*, provider: LLMProvider) -> list[str]:
    """The models the provider offers right now (asked, not the last health check's list).

    A provider that cannot be asked is a 502 that says why; the reason never holds the key.
    """
    from agents.llm import list_models  # the openai SDK, where a call is made (agents.usage)

    try:
        return list_models(provider=provider)
    except LLMError as exc:
        raise DomainError(exc.message, code=f"provider_{exc.kind}", status=502) from None


def agent_list() -> QuerySet[Agent]:
    """Every agent by name, with its provider and the ids of its task configs."""
    return Agent.objects.select_related("provider").prefetch_related("task_configs").order_by("name", "id")


def agent_detail() -> QuerySet[Agent]:
    return Agent.objects.select_related("provider").prefetch_related("task_configs").order_by()


def task_config_list() -> QuerySet[TaskConfig]:
    return TaskConfig.objects.order_by("name", "id")


def task_config_detail() -> QuerySet[TaskConfig]:
    return TaskConfig.objects.order_by()


def task_configs_for_testing(*, agent: Agent) -> QuerySet[TaskConfig]:
    """The task configs an agent may be tested with: its active ones, as in the admin."""
    return agent.task_configs.filter(is_active=True)


def assignment_list() -> QuerySet[AgentTaskAssignment]:
    """Every assignment with its agent and task config, by agent then task config name."""
    return AgentTaskAssignment.objects.select_related("agent", "task_config").order_by(
        "agent__name", "task_config__name", "id"
    )


def assignment_detail() -> QuerySet[AgentTaskAssignment]:
    return AgentTaskAssignment.objects.select_related("agent", "task_config").order_by()
