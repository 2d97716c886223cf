"""The API of the `analysis` app: runs, their batches and usage; start, cancel, retry,
requeue stalled batches, close."""

from typing import Any, cast

from django.db.models import Prefetch, QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from agents.models import AgentTaskAssignment
from analysis.models import AnalysisRun, Batch
from analysis.selectors import can_operate_run, can_start_run_of, runs_visible_to
from analysis.services import (
    cancel_run,
    close_run,
    requeue_stalled_batches,
    retry_failed_batches,
    start_run,
)
from projects import access
from projects.models import Project
from sources.api import AwareDateTimeField
from sources.models import Chat
from tasktracker.api import IdFilter, help_texts
from tasktracker.types import AuthedAPIRequest


class BatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = Batch
        fields = [
            "id",
            "index",
            "status",
            "message_ids",
            "token_count",
            "review_example_ids",
            "attempts",
            "error",
            "error_kind",
            "llm_calls",
            "prompt_tokens",
            "completion_tokens",
            "llm_seconds",
            "cost",
            "started_at",
            "heartbeat_at",
            "finished_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            index="Position of the batch in its run, from 0, in the order of its messages.",
            status="Where the batch stands; running while a worker holds it.",
            message_ids="Ids of the messages sent to the LLM, in order; the first may repeat a message of "
            "the batch before, as the parent of a reply.",
            token_count="Tokens of the messages as the prompt renders them (cl100k_base).",  # noqa: S106
            review_example_ids="Ids of the past reviewed proposals its last prompt showed as examples (the "
            "task config's `review_examples`), most similar first; empty when none were.",
            attempts="Times a worker took the batch: more than 1 if a worker died holding it; `retry` resets "
            "it.",
            error="Why the batch failed, or why some of its proposals were dropped; empty otherwise.",
            error_kind="What failed: connection, timeout, auth, quota, model_not_found, malformed, "
            "schema_invalid, truncated, attempts, internal…; empty unless failed.",
            llm_calls="LLM calls made for this batch, retries included.",
            prompt_tokens="Prompt tokens the provider reported for this batch.",
            completion_tokens="Completion tokens the provider reported for this batch.",
            llm_seconds="Seconds spent inside LLM calls for this batch.",
            cost="Cost of this batch's calls at the provider's prices per 1,000 tokens.",
            started_at="When a worker last took the batch; null if none has yet.",
            heartbeat_at="When the worker holding the batch last said it is alive (every third of the "
            "batch lease while the LLM answers). A running batch whose heartbeat is older than the lease "
            "(BATCH_LEASE_SECONDS, 60 s by default) has stalled: its worker is gone.",
            finished_at="When the batch last ended, done or failed; null if it has not yet.",
        )


class RunSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(
        source="assignment.agent.name", read_only=True, help_text="The agent's name."
    )
    task_config = serializers.CharField(
        source="assignment.task_config.name", read_only=True, help_text="The task config's name."
    )
    progress_percent = serializers.IntegerField(
        read_only=True, help_text="Share of the batches done or failed, 0 to 100."
    )
    config_versions = serializers.SerializerMethodField(
        help_text="The configuration version of each project the run uses: `project` (slug) and `version`."
    )

    class Meta:
        model = AnalysisRun
        fields = [
            "id",
            "status",
            "window_start",
            "window_end",
            "projects",
            "chats",
            "assignment",
            "agent",
            "task_config",
            "trigger",
            "config_versions",
            "started_by",
            "messages_fetched",
            "messages_kept",
            "prefilter_stats",
            "batches_total",
            "batches_done",
            "batches_failed",
            "progress_percent",
            "proposals_created",
            "llm_calls",
            "prompt_tokens",
            "completion_tokens",
            "llm_seconds",
            "cost",
            "error",
            "review_stats",
            "event_seq",
            "created_at",
            "started_at",
            "finished_at",
            "closed_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            status="Where the run stands; closed means completed and all its proposals reviewed.",
            window_start="Start of the time window analysed: messages sent at or after it.",
            window_end="End of the time window analysed: messages sent before it.",
            projects="Ids of the projects analysed.",
            assignment="Id of the assignment (agent and task config) that does the analysis.",
            trigger="What started the run: a user or the API (manual), or a project's schedule.",
            started_by="Id of the user who started it; null for a scheduled run or a deleted user.",
            messages_fetched="Messages of the window in the projects' active chats.",
            messages_kept="Messages left after the prefilter, sent to the LLM in batches.",
            batches_total="Batches planned; 0 until the messages are fetched.",
            batches_done="Batches the LLM answered.",
            batches_failed="Batches that failed; `retry` queues them again.",
            proposals_created="Proposals saved from the LLM's answers.",
            llm_calls="LLM calls made, summed over the batches, retries included.",
            prompt_tokens="Prompt tokens the provider reported, summed over the batches.",
            completion_tokens="Completion tokens the provider reported, summed over the batches.",
            llm_seconds="Seconds spent inside LLM calls, summed over the batches.",
            cost="Cost of the calls at the provider's prices per 1,000 tokens, summed over the batches.",
            error="Why the run failed; empty otherwise.",
            review_stats="Set on close: approved (of which `auto_approved` by the project's auto-approval "
            "rule), rejected and merged counts and the approval rate, overall and per confidence band "
            "(`bands`); empty before.",
            event_seq="Number of the last event sent on /ws/runs/{id}/; events with a higher `seq` are "
            "newer.",
            created_at="When the run was requested.",
            started_at="When a worker began the run; null while pending.",
            finished_at="When the run completed, failed or was cancelled; null before and during a retry.",
            closed_at="When the run was closed after its review; null before.",
        )

    def get_config_versions(self, run: AnalysisRun) -> list[dict[str, str]]:
        return [
            {"project": p["slug"], "version": p["version"]} for p in run.config_snapshot.get("projects", [])
        ]


class RunCreateSerializer(serializers.Serializer):
    window_start = AwareDateTimeField(
        help_text="Start of the window: messages sent at or after it. ISO 8601 with a time zone."
    )
    window_end = AwareDateTimeField(
        help_text="End of the window, after its start: messages sent before it. ISO 8601 with a time zone."
    )
    projects = serializers.PrimaryKeyRelatedField(
        queryset=Project.objects.filter(is_active=True),
        many=True,
        allow_empty=False,
        help_text="Ids of active projects to analyse, each with a configuration, that you lead (any for "
        "staff); at least one.",
    )
    assignment = serializers.PrimaryKeyRelatedField(
        queryset=AgentTaskAssignment.objects.select_related("agent__provider", "task_config"),
        help_text="The agent × task config to run.",
    )
    chats = serializers.PrimaryKeyRelatedField(
        queryset=Chat.objects.all(), many=True, required=False, help_text="Restrict to these chats."
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        request = self.context.get("request")
        user = request.user if request is not None else None
        # Projects and chats the user does not see are no valid choice: their existence is
        # not theirs to learn. Whether they may start the run is a 403 after.
        # (The ignores: the stub's `RelatedField.queryset` includes a `Manager`, whose `__get__`
        # mypy then applies to the field, wrongly.)
        projects = cast(serializers.ManyRelatedField, fields["projects"]).child_relation
        projects.queryset = access.projects(user).filter(is_active=True)  # type: ignore[arg-type]
        chats = cast(serializers.ManyRelatedField, fields["chats"]).child_relation
        chats.queryset = access.visible_chats(user)  # type: ignore[arg-type]
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["window_end"] <= attrs["window_start"]:
            raise serializers.ValidationError({"window_end": "The window must end after it starts."})
        return attrs


class RunFilter(filters.FilterSet):
    project = IdFilter(field_name="projects", distinct=True)

    class Meta:
        model = AnalysisRun
        fields = ["status", "trigger", "project"]


@extend_schema_view(
    list=extend_schema(
        summary="List analysis runs", description="Runs of the projects you are on (all for staff)."
    ),
    retrieve=extend_schema(
        summary="Get a run with its counters and usage",
        description="Its progress, LLM usage and cost so far; /ws/runs/{id}/ sends each change as it "
        "happens. Runs of the projects you are on (all for staff).",
    ),
)
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = RunSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_class = RunFilter
    ordering_fields = ["created_at", "status"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[AnalysisRun]:
        # The run's own columns, its agent's and task config's names (not their prompts and
        # schemas) and the ids of its projects and chats: what RunSerializer shows.
        own = [field.attname for field in AnalysisRun._meta.concrete_fields]
        return (
            runs_visible_to(self.request.user)
            .select_related(None)
            .select_related("assignment__agent", "assignment__task_config")
            .only(*own, "assignment__agent__name", "assignment__task_config__name")
            .prefetch_related(
                Prefetch("projects", queryset=Project.objects.only("id")),
                Prefetch("chats", queryset=Chat.objects.only("id")),
            )
            .order_by("-created_at")
        )

    @extend_schema(
        summary="Start a run",
        description="Creates a pending run over the window and queues it. Staff, or a lead of every "
        "project given. A run overlapping a pending or running run of one of the projects is a 409.",
        request=RunCreateSerializer,
        responses={
            201: RunSerializer,
            400: OpenApiResponse(description="Invalid fields."),
            403: OpenApiResponse(description="Not allowed to start runs of these projects."),
            409: OpenApiResponse(description="An overlapping run is pending or running."),
        },
    )
    def create(self, request: AuthedAPIRequest) -> Response:
        payload = RunCreateSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        user = request.user
        if not can_start_run_of(user, data["projects"]):
            raise PermissionDenied("Only staff or the lead of every project can start this run.")
        run = start_run(
            window_start=data["window_start"],
            window_end=data["window_end"],
            projects=data["projects"],
            assignment=data["assignment"],
            chats=data.get("chats"),
            user=user,
        )
        return Response(
            RunSerializer(self.get_queryset().get(pk=run.pk)).data, status=status.HTTP_201_CREATED
        )

    def _operable(self) -> AnalysisRun:
        run = self.get_object()
        if not can_operate_run(self.request.user, run):
            raise PermissionDenied("Only staff or the leads of the run's projects can do this.")
        return run

    @extend_schema(
        summary="Cancel a pending or running run",
        description="Batches not yet taken by a worker are never sent to the LLM. Staff, or a lead of "
        "every project of the run; any other status is a 409.",
        request=None,
        responses={200: RunSerializer},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: AuthedAPIRequest, pk: str) -> Response:
        run = cancel_run(run=self._operable(), user=request.user)
        return Response(RunSerializer(self.get_queryset().get(pk=run.pk)).data)

    @extend_schema(
        summary="Queue a finished run's failed batches again",
        description="A completed or failed run's failed batches are pending again with fresh attempts, "
        "and the run is running until they finish. A run without failed batches is a 400. Staff, or a "
        "lead of every project of the run.",
        request=None,
        responses={202: RunSerializer},
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        run = self._operable()
        retry_failed_batches(run=run)
        return Response(
            RunSerializer(self.get_queryset().get(pk=run.pk)).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(
        summary="Queue a running run's stalled batches again",
        description="Batches still running whose worker sent no heartbeat for longer than the batch "
        "lease (its worker died) are pending again and queued now, rather than when the periodic "
        "resume_stale_runs task finds them (every 30 s). A run with no stalled batch is a 400, a run "
        "not running a 409. Staff, or a lead of every project of the run.",
        request=None,
        responses={
            202: RunSerializer,
            400: OpenApiResponse(description="No batch of the run has stalled."),
            403: OpenApiResponse(description="Neither staff nor a lead of every project of the run."),
            409: OpenApiResponse(description="The run is not running."),
        },
    )
    @action(detail=True, methods=["post"], url_path="requeue-stalled")
    def requeue_stalled(self, request: Request, pk: str) -> Response:
        run = self._operable()
        requeue_stalled_batches(run=run)
        return Response(
            RunSerializer(self.get_queryset().get(pk=run.pk)).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(
        summary="The run's batches",
        description="Every batch in order (not paginated): its messages, attempts, error and LLM usage.",
        responses={200: BatchSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def batches(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        return Response(BatchSerializer(run.batches.order_by("index"), many=True).data)

    @extend_schema(
        summary="Close a reviewed run",
        description="A completed run whose proposals are all reviewed is closed, and its review "
        "figures stored in `review_stats`: approved, rejected, merged and the approval rate, overall "
        "and per confidence band. Staff, or a lead of every project of the run.",
        request=None,
        responses={
            200: RunSerializer,
            403: OpenApiResponse(description="Neither staff nor a lead of every project of the run."),
            409: OpenApiResponse(description="The run is not completed, or some proposals are pending."),
        },
    )
    @action(detail=True, methods=["post"])
    def close(self, request: Request, pk: str) -> Response:
        run = close_run(run_id=self._operable().pk)
        return Response(RunSerializer(self.get_queryset().get(pk=run.pk)).data)


router = SimpleRouter()
router.register("runs", RunViewSet, basename="run")

app_name = "analysis"
urlpatterns = router.urls
