"""The API of the `agents` app: LLM providers, agents, task configs and their assignments.

Mounted under `/api/v1/` by `tasktracker.api_urls`. Views only check permissions,
validate and call `agents.selectors` (reads) or `agents.services` (writes). Any staff
user reads; writing takes the model's add, change or delete permission, as in the admin
(superusers hold them all). API keys are write-only: no response and no log holds one.
"""

from typing import Any, TypeVar, cast

from django.db.models import QuerySet
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from agents.prompts import PromptMessage
from agents.selectors import (
    agent_detail,
    agent_list,
    assignment_detail,
    assignment_list,
    provider_detail,
    provider_list,
    provider_live_models,
    task_config_detail,
    task_config_list,
    task_configs_for_testing,
)
from agents.services import (
    assign_task_config,
    check_agent_provider,
    check_provider_health,
    create_agent,
    create_provider,
    create_task_config,
    delete_configuration,
    sample_messages,
    test_agent,
    update_agent,
    update_provider,
    update_task_config,
)
from tasktracker.api import help_texts
from tasktracker.exceptions import DomainError

TEST_MAX_MESSAGES = 200
TEST_MAX_TEXT_LENGTH = 10_000

# Permissions


class IsStaffWithModelPermissions(permissions.DjangoModelPermissions):
    """Any signed-in staff user reads; adding, changing and deleting also take the model's
    permission, as in the admin. Superusers hold every permission."""

    message = "Only staff users see providers and agents; changing them takes the model's permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        return super().has_permission(request, view)


class IsStaffWithChangePermission(IsStaffWithModelPermissions):
    """For actions on an existing row (check a provider, test an agent): the model's change
    permission whatever the method, as the admin's "Test agent" page asks."""

    perms_map = {
        method: ["%(app_label)s.change_%(model_name)s"]
        for method in ("GET", "OPTIONS", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    }


# Serializers


class ProviderSerializer(serializers.ModelSerializer):
    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=500,
        style={"input_type": "password"},
        help_text="Write-only: stored encrypted, never returned. Left out, the stored key stays; "
        "empty, the provider has no key (local servers such as Ollama need none).",
    )
    api_key_set = serializers.SerializerMethodField(help_text="Whether a key is stored.")
    api_key_masked = serializers.CharField(read_only=True, help_text="The key's last 4 characters at most.")
    available_models = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text="Models reported at the last health check."
    )

    class Meta:
        model = LLMProvider
        fields = [
            "id",
            "name",
            "base_url",
            "api_key",
            "api_key_set",
            "api_key_masked",
            "timeout_seconds",
            "max_concurrency",
            "requests_per_minute",
            "price_per_1k_input",
            "price_per_1k_output",
            "is_active",
            "health",
            "health_error",
            "health_checked_at",
            "available_models",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["health", "health_error", "health_checked_at", "created_at", "updated_at"]
        extra_kwargs = help_texts(
            name="Unique name, shown when choosing an agent's provider.",
            timeout_seconds="Seconds to wait for one answer before the call fails as a timeout; at least 1.",
            max_concurrency="Most requests in flight to this provider at once, across all workers.",
            requests_per_minute="Most requests started per minute to this provider, across all workers.",
            price_per_1k_input="Price of 1,000 prompt tokens, in the unit of every `cost`; 0 for free.",
            price_per_1k_output="Price of 1,000 completion tokens, in the unit of every `cost`; 0 for free.",
            is_active="Off: no agent may newly choose it, and runs of its agents are refused.",
            health="pending until checked, validating during a check, then connected or error.",
            health_error="Why the last check failed; empty unless `health` is error.",
            health_checked_at="When the last check finished; null before the first.",
        )

    def get_api_key_set(self, provider: LLMProvider) -> bool:
        return bool(provider.api_key_encrypted)


class ProviderModelsSerializer(serializers.Serializer):
    models = serializers.ListField(child=serializers.CharField(), help_text="Model ids, sorted.")


class AgentSerializer(serializers.ModelSerializer):
    # Every provider, so that choosing one switched off gets a reason, not "does not exist".
    provider = serializers.PrimaryKeyRelatedField(
        queryset=LLMProvider.objects.all(), help_text="An active provider's id."
    )
    provider_name = serializers.CharField(
        source="provider.name", read_only=True, help_text="The provider's name."
    )
    # Quoted: the field is generic in its stub only.
    task_configs: "serializers.PrimaryKeyRelatedField[TaskConfig]" = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True, help_text="Ids of the task configs assigned; change them at /assignments/."
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "provider",
            "provider_name",
            "model",
            "system_prompt",
            "temperature",
            "max_output_tokens",
            "batch_token_budget",
            "is_active",
            "task_configs",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = help_texts(
            name="Unique name, shown on runs.",
            model="Model id as the provider names it, e.g. gpt-4o-mini or llama3.1:8b.",
            system_prompt="Starts the system prompt, before the task config's instructions; may be empty.",
            temperature="Sampling temperature of every call, 0 to 2; lower gives steadier answers.",
            max_output_tokens="Most tokens an answer may have (max_tokens); a longer one fails as truncated.",
            is_active="Off: runs with this agent are refused.",
        )

    def validate_provider(self, provider: LLMProvider) -> LLMProvider:
        # The admin's rule, asked of the same function, so the message sits under the field.
        try:
            check_agent_provider(provider=provider, agent=self.instance)
        except DomainError as exc:
            raise serializers.ValidationError(exc.message, code=exc.code) from exc
        return provider


class TaskConfigSerializer(serializers.ModelSerializer):
    # `response_schema` keeps the model's validator (`validate_json_schema`): an invalid
    # schema is a field error that says where and why.

    class Meta:
        model = TaskConfig
        fields = [
            "id",
            "name",
            "description",
            "instructions",
            "response_schema",
            "max_proposals_per_batch",
            "max_proposals_per_message",
            "review_examples",
            "review_examples_tokens",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = help_texts(
            name="Unique name, shown when assigning it to an agent.",
            description="What the task is for, for people; not sent to the LLM.",
            instructions="What the LLM is asked to do, sent in the system prompt after the agent's own.",
            is_active="Off: runs with this task config are refused, and agent tests do not offer it.",
        )


class AssignmentSerializer(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True, help_text="The agent's name.")
    task_config_name = serializers.CharField(
        source="task_config.name", read_only=True, help_text="The task config's name."
    )

    class Meta:
        model = AgentTaskAssignment
        fields = ["id", "agent", "agent_name", "task_config", "task_config_name", "is_active", "created_at"]
        read_only_fields = ["is_active", "created_at"]
        extra_kwargs = help_texts(
            agent="The agent's id.",
            task_config="The task config's id.",
            is_active="Off: runs with this assignment are refused; switched in the admin.",
            created_at="When the task config was assigned to the agent.",
        )
        # No unique-together check here: `assign_task_config` answers a repeat with a 409.
        validators: list[Any] = []


class SampleMessageSerializer(serializers.Serializer):
    author = serializers.CharField(max_length=255, help_text="The sender's name, as the prompt shows it.")
    text = serializers.CharField(
        max_length=TEST_MAX_TEXT_LENGTH,
        help_text=f"The message's text, at most {TEST_MAX_TEXT_LENGTH} characters.",
    )


class AgentTestSerializer(serializers.Serializer):
    task_config = serializers.PrimaryKeyRelatedField(
        queryset=TaskConfig.objects.none(),
        required=False,
        allow_null=True,
        help_text="One of the agent's active task configs; left out, its first assigned one.",
        error_messages={"does_not_exist": "Task config {pk_value} is not one of this agent's active ones."},
    )
    # The stubs' serializers take no `max_length`, which DRF (3.15+) hands to the list.
    messages = SampleMessageSerializer(  # type: ignore[call-arg]
        many=True,
        required=False,
        allow_empty=False,
        max_length=TEST_MAX_MESSAGES,
        help_text=f"Up to {TEST_MAX_MESSAGES} chat messages, in order; left out, a built-in sample chat.",
    )

    def __init__(self, *args: Any, agent: Agent | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if agent is not None:
            task_config = cast(serializers.PrimaryKeyRelatedField, self.fields["task_config"])
            # The stub's `RelatedField.queryset` includes a `Manager`, whose `__get__` mypy then
            # applies to the field, wrongly.
            task_config.queryset = task_configs_for_testing(agent=agent)  # type: ignore[arg-type]

    def validate_messages(self, messages: list[dict[str, str]]) -> list[PromptMessage]:
        sent_at = sample_messages()[0].sent_at
        return [
            PromptMessage(id=number, sent_at=sent_at, author=message["author"], text=message["text"])
            for number, message in enumerate(messages, start=1)
        ]


class AgentTestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="Whether the agent gave an answer that fits the schema.")
    proposals = serializers.ListField(child=serializers.DictField(), help_text="The answer's proposals.")
    error = serializers.CharField(help_text="Why the test failed, with a hint; empty when ok.")
    error_kind = serializers.CharField(
        help_text="connection, timeout, auth, model_not_found, malformed, schema_invalid, truncated…"
    )
    latency_seconds = serializers.FloatField(help_text="Seconds spent inside LLM calls, retries included.")
    prompt_tokens = serializers.IntegerField(
        help_text="Prompt tokens the provider reported, retries included."
    )
    completion_tokens = serializers.IntegerField(
        help_text="Completion tokens the provider reported, retries included."
    )
    cost = serializers.DecimalField(max_digits=12, decimal_places=6, help_text="At the provider's prices.")
    attempts = serializers.IntegerField(help_text="Calls made, retries included.")


# Filters


class ProviderFilter(filters.FilterSet):
    class Meta:
        model = LLMProvider
        fields = ["is_active", "health"]


class AgentFilter(filters.FilterSet):
    class Meta:
        model = Agent
        fields = ["provider", "is_active"]


class TaskConfigFilter(filters.FilterSet):
    class Meta:
        model = TaskConfig
        fields = ["is_active"]


class AssignmentFilter(filters.FilterSet):
    class Meta:
        model = AgentTaskAssignment
        fields = ["agent", "task_config", "is_active"]


# Views

_READ = "Any staff user."
_WRITE = "Staff with the model's {perm} permission (superusers have all)."
_FORBIDDEN = OpenApiResponse(description="Not staff, or without the model's permission.")
_IN_USE = OpenApiResponse(description="Still in use; the message says by what.")

_Row = TypeVar("_Row", LLMProvider, Agent, TaskConfig)


def _stored(serializer: serializers.BaseSerializer[_Row]) -> _Row:
    """The row an update's serializer was built on: `UpdateModelMixin.update` always gives one."""
    assert serializer.instance is not None
    return serializer.instance


@extend_schema_view(
    list=extend_schema(
        summary="List LLM providers",
        description=f"Providers by name, with their health. Filter by `is_active` and `health`; `search` "
        f"looks in the name and base URL. {_READ} API keys are never returned, only whether one is set "
        "and its last characters.",
    ),
    retrieve=extend_schema(summary="Get an LLM provider", description=_READ),
    create=extend_schema(
        summary="Add an LLM provider",
        description="The base URL's host must be in LLM_ALLOWED_HOSTS. The key is stored encrypted. "
        "The provider starts `pending` and is checked in the background (its model list). "
        + _WRITE.format(perm="add"),
        responses={201: ProviderSerializer, 403: _FORBIDDEN},
    ),
    update=extend_schema(
        summary="Change an LLM provider",
        description="A new base URL or key makes the provider `pending` and checks it again in the "
        "background. `api_key` left out keeps the stored key. " + _WRITE.format(perm="change"),
        responses={200: ProviderSerializer, 403: _FORBIDDEN},
    ),
    partial_update=extend_schema(
        summary="Change some of an LLM provider's fields",
        description="As PUT, with only the fields given. " + _WRITE.format(perm="change"),
        responses={200: ProviderSerializer, 403: _FORBIDDEN},
    ),
    destroy=extend_schema(
        summary="Delete an LLM provider",
        description="Refused while agents use it: switch it off instead. " + _WRITE.format(perm="delete"),
        responses={204: None, 403: _FORBIDDEN, 409: _IN_USE},
    ),
)
@method_decorator(sensitive_post_parameters("api_key"), name="dispatch")
class ProviderViewSet(viewsets.ModelViewSet):
    serializer_class = ProviderSerializer
    permission_classes = [IsStaffWithModelPermissions]
    filterset_class = ProviderFilter
    search_fields = ["name", "base_url"]
    ordering_fields = ["name", "health", "created_at"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[LLMProvider]:
        return provider_list() if self.action == "list" else provider_detail()

    def perform_create(self, serializer: serializers.BaseSerializer[LLMProvider]) -> None:
        serializer.instance = create_provider(**serializer.validated_data)

    def perform_update(self, serializer: serializers.BaseSerializer[LLMProvider]) -> None:
        serializer.instance = update_provider(provider=_stored(serializer), **serializer.validated_data)

    def perform_destroy(self, instance: LLMProvider) -> None:
        delete_configuration(instance=instance)

    @extend_schema(
        summary="Check an LLM provider now",
        description="Asks the provider for its model list and waits for the answer (up to its "
        "timeout): `health` becomes `connected` with `available_models`, or `error` with "
        "`health_error` saying why. " + _WRITE.format(perm="change"),
        request=None,
        responses={200: ProviderSerializer, 403: _FORBIDDEN},
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[IsStaffWithChangePermission],
        filter_backends=[],
        pagination_class=None,
    )
    def check(self, request: Request, pk: int) -> Response:
        provider = self.get_object()
        provider = check_provider_health(provider_id=provider.pk)
        return Response(ProviderSerializer(provider).data)

    @extend_schema(
        summary="List the models an LLM provider offers now",
        description="Asks the provider (not the last health check's list). " + _READ,
        responses={
            200: ProviderModelsSerializer,
            502: OpenApiResponse(description="The provider cannot be asked; the message says why."),
        },
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def models(self, request: Request, pk: int) -> Response:
        models = provider_live_models(provider=self.get_object())
        return Response(ProviderModelsSerializer({"models": models}).data)


@extend_schema_view(
    list=extend_schema(
        summary="List agents",
        description=f"Agents by name. Filter by `provider` and `is_active`; `search` looks in the name "
        f"and model. {_READ}",
    ),
    retrieve=extend_schema(summary="Get an agent", description=_READ),
    create=extend_schema(
        summary="Add an agent",
        description="The provider must be active; temperature 0 to 2. " + _WRITE.format(perm="add"),
        responses={201: AgentSerializer, 403: _FORBIDDEN},
    ),
    update=extend_schema(
        summary="Change an agent",
        description="A newly chosen provider must be active. " + _WRITE.format(perm="change"),
        responses={200: AgentSerializer, 403: _FORBIDDEN},
    ),
    partial_update=extend_schema(
        summary="Change some of an agent's fields",
        description="As PUT, with only the fields given. " + _WRITE.format(perm="change"),
        responses={200: AgentSerializer, 403: _FORBIDDEN},
    ),
    destroy=extend_schema(
        summary="Delete an agent",
        description="Refused once analysis runs used it: switch it off instead. "
        + _WRITE.format(perm="delete"),
        responses={204: None, 403: _FORBIDDEN, 409: _IN_USE},
    ),
)
class AgentViewSet(viewsets.ModelViewSet):
    serializer_class = AgentSerializer
    permission_classes = [IsStaffWithModelPermissions]
    filterset_class = AgentFilter
    search_fields = ["name", "model"]
    ordering_fields = ["name", "created_at"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Agent]:
        return agent_list() if self.action == "list" else agent_detail()

    def perform_create(self, serializer: serializers.BaseSerializer[Agent]) -> None:
        serializer.instance = create_agent(**serializer.validated_data)

    def perform_update(self, serializer: serializers.BaseSerializer[Agent]) -> None:
        serializer.instance = update_agent(agent=_stored(serializer), **serializer.validated_data)

    def perform_destroy(self, instance: Agent) -> None:
        delete_configuration(instance=instance)

    @extend_schema(
        summary="Test an agent",
        description="Sends chat messages (given, or a built-in sample) to the agent with one of its "
        "task configs and reports what came back. The LLM's failures (unreachable provider, refused "
        "key, unknown model, malformed answer) are a 200 with `ok: false` and `error` saying why; an "
        "agent without any task config is a 400. Calls the provider: it may take up to its timeout, "
        "and costs what a batch would. " + _WRITE.format(perm="change"),
        request=AgentTestSerializer,
        responses={
            200: AgentTestResultSerializer,
            400: OpenApiResponse(description="Invalid body, or the agent has no task config."),
            403: _FORBIDDEN,
        },
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[IsStaffWithChangePermission],
        parser_classes=[JSONParser],
        filter_backends=[],
        pagination_class=None,
    )
    def test(self, request: Request, pk: int) -> Response:
        agent = self.get_object()
        payload = AgentTestSerializer(data=request.data, agent=agent)
        payload.is_valid(raise_exception=True)
        result = test_agent(
            agent=agent,
            task_config=payload.validated_data.get("task_config"),
            messages=payload.validated_data.get("messages"),
        )
        return Response(AgentTestResultSerializer(result).data)


@extend_schema_view(
    list=extend_schema(
        summary="List task configs",
        description=f"Task configs by name. Filter by `is_active`; `search` looks in the name and "
        f"description. {_READ}",
    ),
    retrieve=extend_schema(summary="Get a task config", description=_READ),
    create=extend_schema(
        summary="Add a task config",
        description="`response_schema` must be a valid JSON Schema (Draft 2020-12) of an object; "
        "an invalid one is a 400 that says where and why. " + _WRITE.format(perm="add"),
        responses={201: TaskConfigSerializer, 403: _FORBIDDEN},
    ),
    update=extend_schema(
        summary="Change a task config",
        description="Batches of a run in progress that have not been sent yet use the changed "
        "config: a run snapshots its projects' configuration, not its task config. "
        + _WRITE.format(perm="change"),
        responses={200: TaskConfigSerializer, 403: _FORBIDDEN},
    ),
    partial_update=extend_schema(
        summary="Change some of a task config's fields",
        description="As PUT, with only the fields given. " + _WRITE.format(perm="change"),
        responses={200: TaskConfigSerializer, 403: _FORBIDDEN},
    ),
    destroy=extend_schema(
        summary="Delete a task config",
        description="Refused once analysis runs used it: switch it off instead. "
        + _WRITE.format(perm="delete"),
        responses={204: None, 403: _FORBIDDEN, 409: _IN_USE},
    ),
)
class TaskConfigViewSet(viewsets.ModelViewSet):
    serializer_class = TaskConfigSerializer
    permission_classes = [IsStaffWithModelPermissions]
    filterset_class = TaskConfigFilter
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[TaskConfig]:
        return task_config_list() if self.action == "list" else task_config_detail()

    def perform_create(self, serializer: serializers.BaseSerializer[TaskConfig]) -> None:
        serializer.instance = create_task_config(**serializer.validated_data)

    def perform_update(self, serializer: serializers.BaseSerializer[TaskConfig]) -> None:
        serializer.instance = update_task_config(task_config=_stored(serializer), **serializer.validated_data)

    def perform_destroy(self, instance: TaskConfig) -> None:
        delete_configuration(instance=instance)


@extend_schema_view(
    list=extend_schema(
        summary="List assignments",
        description=f"Which agent does which task config: what a run uses. Filter by `agent`, "
        f"`task_config` and `is_active`. {_READ}",
    ),
    retrieve=extend_schema(summary="Get an assignment", description=_READ),
    create=extend_schema(
        summary="Assign a task config to an agent",
        description="Each pair once: a repeat is a 409. " + _WRITE.format(perm="add"),
        responses={
            201: AssignmentSerializer,
            403: _FORBIDDEN,
            409: OpenApiResponse(description="The agent already has this task config."),
        },
    ),
    destroy=extend_schema(
        summary="Remove an assignment",
        description="Refused once analysis runs used it. " + _WRITE.format(perm="delete"),
        responses={204: None, 403: _FORBIDDEN, 409: _IN_USE},
    ),
)
class AssignmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = AssignmentSerializer
    permission_classes = [IsStaffWithModelPermissions]
    filterset_class = AssignmentFilter
    ordering_fields = ["created_at"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[AgentTaskAssignment]:
        return assignment_list() if self.action == "list" else assignment_detail()

    def perform_create(self, serializer: serializers.BaseSerializer[AgentTaskAssignment]) -> None:
        serializer.instance = assign_task_config(**serializer.validated_data)

    def perform_destroy(self, instance: AgentTaskAssignment) -> None:
        delete_configuration(instance=instance)


router = SimpleRouter()
router.register("providers", ProviderViewSet, basename="provider")
router.register("agents", AgentViewSet, basename="agent")
router.register("task-configs", TaskConfigViewSet, basename="task-config")
router.register("assignments", AssignmentViewSet, basename="assignment")

app_name = "agents"
urlpatterns = router.urls
