"""The API of the `projects` app: projects and their configuration versions, and tasks.

Mounted under `/api/v1/` by `tasktracker.api_urls`. Views check permissions, validate the
shape of a request and call `projects.selectors` or `projects.services`; the rules of a
configuration (and their messages) are the services', as on the edit page.
"""

from typing import Any, Protocol, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import Prefetch, QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from projects import access
from projects.models import Project, ProjectConfig, ProjectMembership, Task, WebhookDelivery, WebhookEndpoint
from projects.selectors import (
    calibrations,
    config_history,
    get_config_version,
    projects_visible_to,
    tasks_visible_to,
)
from projects.services import (
    AUTO_APPROVE_BANDS,
    MAX_BATCH_TIME_GAP_MINUTES,
    MIN_AUTO_APPROVE_RATE,
    MIN_AUTO_APPROVE_REVIEWS,
    UNSET,
    bump_config,
    create_project,
    error_field,
    rollback_config,
    update_task,
)
from projects.webhooks import create_webhook_endpoint, delete_webhook_endpoint
from sources.models import Chat
from tasktracker.api import IdField, IdFilter, help_texts
from tasktracker.exceptions import DomainError
from tasktracker.types import AuthedAPIRequest

VERSION_PATTERN = r"\d+\.\d+\.\d+"

# Each said twice: where a configuration is shown and where it is changed.
DESCRIPTION_HELP = "What the project is about, sent to the LLM as context."
EXCLUDE_KEYWORDS_HELP = "A message naming any of these is dropped before analysis."
PRIORITY_RULES_HELP = "Rules for choosing a task's priority: a condition (`when`) and the priority it gives."
ROLE_HELP = (
    "What the user may do: a member sees the project, its chats, runs, proposals and tasks and moves its "
    "tasks; a reviewer also reviews its proposals; a lead also changes its configuration, webhooks and runs."
)
BATCH_TIME_GAP_HELP = (
    "A pause in the chat longer than this many minutes starts a new batch, unless the message replies "
    "into the current one."
)
AUTO_APPROVE_BAND_HELP = (
    "Auto-approval: new-task proposals of this band (high or medium) that repeat no proposal or task are "
    "approved by the system while reviewers' record in the band allows it; empty for off (the default)."
)
AUTO_APPROVE_MIN_RATE_HELP = (
    "Auto-approval runs while reviewers approved at least this share (0.5 to 1) of the band's last "
    "`auto_approve_min_reviews` reviews."
)
AUTO_APPROVE_MIN_REVIEWS_HELP = (
    "How many of the band's last reviews by people (of this project and agent) the approval rate is taken "
    "over; auto-approval waits until there are this many (at least 10)."
)


def _field_errors(exc: DomainError, fields: set[str]) -> Exception:
    """A validation `DomainError` as a 400 with the message under its field, like
    serializer errors; any other stays a `DomainError` (its own status and code)."""
    field = error_field(exc)
    return ValidationError({field: [exc.message]}) if field in fields else exc


# Permissions


class CanCreateProjects(permissions.BasePermission):
    message = "Only staff users can create projects."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return getattr(view, "action", None) != "create" or access.can_create_projects(request.user)


# Serializers


class MemberSerializer(serializers.ModelSerializer):
    user_id = serializers.IntegerField(read_only=True, help_text="The member's user id.")
    username = serializers.CharField(
        source="user.username", read_only=True, help_text="The member's username."
    )

    class Meta:
        model = ProjectMembership
        fields = ["user_id", "username", "role"]
        read_only_fields = fields
        extra_kwargs = help_texts(role=ROLE_HELP)


class ConfigSerializer(serializers.ModelSerializer):
    version = serializers.CharField(read_only=True, help_text="Semantic version, e.g. 1.2.0.")
    chats: "serializers.PrimaryKeyRelatedField[Chat]" = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True, help_text="Ids of the chats the project reads."
    )
    default_assignee = serializers.IntegerField(
        source="default_assignee_id_snapshot",
        read_only=True,
        allow_null=True,
        help_text="User id of the project's default assignee in this version, or null.",
    )
    author: "serializers.SlugRelatedField[User]" = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Who saved this version; null if nobody did or the user was deleted.",
    )

    class Meta:
        model = ProjectConfig
        fields = [
            "version",
            "major",
            "minor",
            "patch",
            "is_current",
            "description",
            "language",
            "keywords",
            "exclude_keywords",
            "glossary",
            "components",
            "priority_rules",
            "chats",
            "team",
            "default_assignee",
            "batch_time_gap_minutes",
            "schedule",
            "auto_approve_band",
            "auto_approve_min_rate",
            "auto_approve_min_reviews",
            "author",
            "change_summary",
            "created_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            major="The version's first number, raised when `chats` or `team` change.",
            minor="The version's second number, raised when keywords, glossary, components or priority rules "
            "change.",
            patch="The version's third number, raised for any other change.",
            is_current="Whether this is the project's current configuration; one version is.",
            description=DESCRIPTION_HELP,
            language="The project's language code, e.g. en, de, pt-br.",
            keywords="A message naming any of these is kept by the prefilter even when it looks like noise.",
            exclude_keywords=EXCLUDE_KEYWORDS_HELP,
            priority_rules=PRIORITY_RULES_HELP,
            batch_time_gap_minutes=BATCH_TIME_GAP_HELP,
            auto_approve_band=AUTO_APPROVE_BAND_HELP,
            auto_approve_min_rate=AUTO_APPROVE_MIN_RATE_HELP,
            auto_approve_min_reviews=AUTO_APPROVE_MIN_REVIEWS_HELP,
            change_summary="What the author said changed in this version; may be empty.",
            created_at="When this version was saved.",
        )


class _ReadProject(Protocol):
    """A project as `projects_visible_to` reads it: `current_configs` is a prefetch's
    `to_attr`, which the ORM's types do not know."""

    current_configs: list[ProjectConfig]


class ProjectSerializer(serializers.ModelSerializer):
    team = MemberSerializer(
        source="memberships", many=True, read_only=True, help_text="Who is on the project, and their roles."
    )
    current_version = serializers.SerializerMethodField(
        help_text="The current configuration's version, e.g. 1.2.0; null before the first."
    )

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "slug",
            "is_active",
            "default_assignee",
            "team",
            "current_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            name="Unique display name.",
            slug="Unique name in URLs (/api/v1/projects/{slug}/) and in the LLM's answers.",
            is_active="Off: no new runs of the project, scheduled or not.",
            default_assignee="User id its proposals suggest when the LLM names nobody on the team; null "
            "for none.",
        )

    def get_current_version(self, project: _ReadProject) -> str | None:
        current = project.current_configs
        return current[0].version if current else None


class DecileSerializer(serializers.Serializer):
    range = serializers.CharField(help_text="The tenth of confidence, e.g. 0.8-0.9 (from inclusive).")
    reviews = serializers.IntegerField(help_text="Approved or rejected proposals in it.")
    approved = serializers.IntegerField(help_text="Of those, approved.")
    approval_rate = serializers.FloatField(allow_null=True, help_text="Approved over reviews; null for none.")
    mean_confidence = serializers.FloatField(
        allow_null=True, help_text="Their mean confidence; null for none."
    )


class BandFiguresSerializer(serializers.Serializer):
    reviews = serializers.IntegerField(help_text="Approved or rejected proposals in the band.")
    approved = serializers.IntegerField(help_text="Of those, approved.")
    approval_rate = serializers.FloatField(allow_null=True, help_text="Approved over reviews; null for none.")


class BandTableSerializer(serializers.Serializer):
    bands = serializers.DictField(
        child=BandFiguresSerializer(), help_text="Per band (high, medium, low): reviews and approval."
    )
    band_error = serializers.FloatField(
        allow_null=True,
        help_text="Review-weighted distance of each band's approval rate from the range it promises; 0 is "
        "kept promises.",
    )


class AgentCalibrationSerializer(serializers.Serializer):
    agent = serializers.CharField(help_text="The agent's name when last computed.")
    computed_at = serializers.DateTimeField(help_text="When a closed run last recomputed it.")
    reviews = serializers.IntegerField(help_text="Approved or rejected proposals of closed runs counted.")
    minimum_reviews = serializers.IntegerField(
        help_text="Reviews needed to calibrate (CALIBRATION_MIN_REVIEWS)."
    )
    calibrated = serializers.BooleanField(
        help_text="Whether the bands are set from reviews; fixed bands if not."
    )
    high = serializers.FloatField(help_text="High band: confidence above this.")
    low = serializers.FloatField(help_text="Low band: confidence below this; medium between.")
    ece = serializers.FloatField(
        allow_null=True, help_text="Expected calibration error of the confidences over deciles."
    )
    deciles = DecileSerializer(many=True, help_text="The reliability table, by tenth of confidence.")
    fixed = BandTableSerializer(help_text="The same reviews in the fixed bands (high > 0.9, low < 0.7).")
    current = BandTableSerializer(help_text="The same reviews in the bands in force now.")


class ProjectDetailSerializer(ProjectSerializer):
    current_config = serializers.SerializerMethodField(
        help_text="The current configuration in full; null before the first."
    )
    calibration = serializers.SerializerMethodField(
        help_text="Per agent, what reviews say of its confidence: the reliability table and the band "
        "thresholds in force (recomputed when a run closes)."
    )

    class Meta(ProjectSerializer.Meta):
        fields = [*ProjectSerializer.Meta.fields, "current_config", "calibration"]
        read_only_fields = fields

    @extend_schema_field(AgentCalibrationSerializer(many=True))
    def get_calibration(self, project: Project) -> list[dict[str, Any]]:
        return calibrations(project)

    @extend_schema_field(ConfigSerializer(allow_null=True))
    def get_current_config(self, project: _ReadProject) -> dict[str, Any] | None:
        current = project.current_configs
        return ConfigSerializer(current[0]).data if current else None


class GlossaryEntrySerializer(serializers.Serializer):
    term = serializers.CharField(
        max_length=200, help_text="A word or abbreviation of the project; once each."
    )
    meaning = serializers.CharField(max_length=1000, help_text="What the term means in the project.")


class ComponentSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=200, help_text="A part of the product, e.g. Android app; once each."
    )
    keywords = serializers.ListField(
        child=serializers.CharField(allow_blank=True),
        required=False,
        default=list,
        help_text="Words that point to this component; trimmed, lower-cased and deduplicated on save.",
    )


class PriorityRuleSerializer(serializers.Serializer):
    when = serializers.CharField(
        max_length=500, help_text="The condition, in plain words, e.g. the app crashes."
    )
    priority = serializers.ChoiceField(
        choices=Task.Priority.choices, help_text="The priority of a task that meets the condition."
    )


class TeamMemberSerializer(serializers.Serializer):
    user_id = IdField(help_text="The user's id.")
    role = serializers.ChoiceField(choices=ProjectMembership.Role.choices, help_text=ROLE_HELP)


class ConfigChangesSerializer(serializers.Serializer):
    """The fields to change; those left out keep their value."""

    description = serializers.CharField(
        allow_blank=True, trim_whitespace=False, required=False, help_text=DESCRIPTION_HELP
    )
    language = serializers.CharField(max_length=16, required=False, help_text="e.g. en, de, pt-br.")
    keywords = serializers.ListField(
        child=serializers.CharField(allow_blank=True),
        required=False,
        help_text="Trimmed, lower-cased and deduplicated on save.",
    )
    exclude_keywords = serializers.ListField(
        child=serializers.CharField(allow_blank=True), required=False, help_text=EXCLUDE_KEYWORDS_HELP
    )
    glossary = serializers.ListField(
        child=GlossaryEntrySerializer(),
        required=False,
        help_text="The project's terms and their meanings, sent to the LLM as context.",
    )
    components = serializers.ListField(
        child=ComponentSerializer(),
        required=False,
        help_text="The parts of the product and their keywords, sent to the LLM as context.",
    )
    priority_rules = serializers.ListField(
        child=PriorityRuleSerializer(), required=False, help_text=PRIORITY_RULES_HELP
    )
    chats = serializers.ListField(child=IdField(), required=False, help_text="Chat ids.")
    team = serializers.ListField(
        child=TeamMemberSerializer(), required=False, help_text="The whole team; at least one lead."
    )
    default_assignee = serializers.IntegerField(
        allow_null=True, required=False, help_text="A user id on the team, or null."
    )
    batch_time_gap_minutes = serializers.IntegerField(
        min_value=1, max_value=MAX_BATCH_TIME_GAP_MINUTES, required=False, help_text=BATCH_TIME_GAP_HELP
    )
    schedule = serializers.CharField(
        max_length=64, allow_blank=True, required=False, help_text="Five-field cron expression, or empty."
    )
    auto_approve_band = serializers.ChoiceField(
        choices=["", *AUTO_APPROVE_BANDS], allow_blank=True, required=False, help_text=AUTO_APPROVE_BAND_HELP
    )
    auto_approve_min_rate = serializers.FloatField(
        min_value=MIN_AUTO_APPROVE_RATE, max_value=1, required=False, help_text=AUTO_APPROVE_MIN_RATE_HELP
    )
    auto_approve_min_reviews = serializers.IntegerField(
        min_value=MIN_AUTO_APPROVE_REVIEWS, required=False, help_text=AUTO_APPROVE_MIN_REVIEWS_HELP
    )
    summary = serializers.CharField(
        max_length=500,
        allow_blank=True,
        required=False,
        default="",
        help_text="What changed, in a few words; kept as the new version's `change_summary`.",
    )
    base_version = serializers.RegexField(
        rf"^{VERSION_PATTERN}$",
        required=False,
        help_text="The version the change was made on; a 409 if another save came first.",
    )

    def changes(self) -> dict[str, Any]:
        data = dict(self.validated_data)
        data.pop("summary", None)
        data.pop("base_version", None)
        data.pop("name", None)
        data.pop("slug", None)
        return data


class ProjectCreateSerializer(ConfigChangesSerializer):
    name = serializers.CharField(max_length=200, help_text="Unique display name.")
    slug = serializers.SlugField(
        max_length=200,
        required=False,
        default="",
        allow_blank=True,
        help_text="Unique name in URLs: lower-case letters, digits, hyphens; left out, made from the name.",
    )


class ProjectUpdateResultSerializer(ProjectDetailSerializer):
    new_version = serializers.SerializerMethodField(help_text="The version made, or null: nothing changed.")

    class Meta(ProjectDetailSerializer.Meta):
        fields = [*ProjectDetailSerializer.Meta.fields, "new_version"]
        read_only_fields = fields

    def get_new_version(self, project: Project) -> str | None:
        return self.context.get("new_version")


class RollbackSerializer(serializers.Serializer):
    version = serializers.RegexField(rf"^{VERSION_PATTERN}$", help_text="The old version to restore.")


class TaskSerializer(serializers.ModelSerializer):
    project_slug = serializers.CharField(
        source="project.slug", read_only=True, help_text="The project's slug."
    )
    assignee_username = serializers.CharField(
        source="assignee.username",
        read_only=True,
        allow_null=True,
        help_text="The assignee's username; null when unassigned.",
    )

    class Meta:
        model = Task
        fields = [
            "id",
            "project",
            "project_slug",
            "title",
            "description",
            "assignee",
            "assignee_username",
            "status",
            "priority",
            "category",
            "tags",
            "due_date",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            project="The project's id.",
            title="Short summary of the work.",
            description="Details of the work; may be empty.",
            assignee="User id of who does it; null when unassigned.",
            status="Where the work stands; changed with PATCH along the legal transitions.",
            priority="How urgent the work is.",
            category="What kind of work it is.",
            tags="Free-form labels.",
            due_date="When it is due (YYYY-MM-DD); null for no date.",
            created_at="When the task was made, usually by approving a proposal.",
        )


class TaskUpdateSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=Task.Status.choices, required=False, help_text="open, in_progress, done or cancelled."
    )
    assignee = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.all(),
        allow_null=True,
        required=False,
        help_text="A user on the task's project team, or null to unassign.",
    )


class TaskFilter(filters.FilterSet):
    project = IdFilter(field_name="project_id", help_text="The project's id.")
    assignee = IdFilter(field_name="assignee_id", help_text="The assignee's user id.")

    class Meta:
        model = Task
        fields = ["project", "status", "assignee", "priority", "category"]


# Views


@extend_schema_view(
    list=extend_schema(summary="List projects", description="The projects you are on (all for staff)."),
    retrieve=extend_schema(
        summary="Get a project with its team and current configuration",
        description="The projects you are on (all for staff).",
        responses=ProjectDetailSerializer,
    ),
)
class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    # PATCH and no PUT: a change is a new version, and fields left out keep their value.
    serializer_class = ProjectSerializer
    permission_classes = [permissions.IsAuthenticated, CanCreateProjects]
    lookup_field = "slug"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    search_fields = ["name", "slug"]
    ordering_fields = ["name", "created_at"]
    filterset_fields = ["is_active"]

    def get_queryset(self) -> QuerySet[Project]:
        # A project the user is not on is a 404 for every action, as if it did not exist;
        # one they see but may not change is a 403 (`_editable`).
        projects = projects_visible_to(self.request.user).prefetch_related(
            Prefetch("memberships", queryset=ProjectMembership.objects.select_related("user"))
        )
        if self.action == "list":
            return projects  # the list shows no configuration's chats
        # `current_configs` is the `to_attr` of a prefetch of `projects_visible_to`, which the
        # plugin does not see.
        return projects.prefetch_related("current_configs__chats")  # type: ignore[misc]

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return ProjectDetailSerializer if self.action == "retrieve" else ProjectSerializer

    def _detail(self, project: Project, **context: Any) -> dict[str, Any]:
        fresh = self.get_queryset().get(pk=project.pk)
        serializer = ProjectUpdateResultSerializer if "new_version" in context else ProjectDetailSerializer
        return serializer(fresh, context={"request": self.request, **context}).data

    def _editable(self) -> Project:
        project = self.get_object()
        if not access.can(self.request.user, project, access.Action.CONFIGURE):
            raise PermissionDenied("Only the project's team leads and staff can change its configuration.")
        return project

    @extend_schema(
        summary="Create a project",
        description="Staff only. The creator becomes its team lead, and the configuration given "
        "(all fields optional) is its version 1.0.0.",
        request=ProjectCreateSerializer,
        responses={
            201: ProjectDetailSerializer,
            400: OpenApiResponse(description="Invalid fields, a taken name or slug."),
            403: OpenApiResponse(description="Not a staff user."),
        },
    )
    def create(self, request: AuthedAPIRequest) -> Response:
        payload = ProjectCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            project = create_project(
                name=data["name"],
                slug=data["slug"],
                user=request.user,
                changes=payload.changes(),
                summary=data["summary"],
            )
        except DomainError as exc:
            raise _field_errors(exc, set(payload.fields)) from exc
        return Response(self._detail(project), status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change the configuration: a new version",
        description="The project's team leads and staff. Fields left out keep their value. A change "
        "makes a new version: major when `chats` or `team` change, minor when `keywords`, "
        "`exclude_keywords`, `glossary`, `components` or `priority_rules` change, patch otherwise. "
        "No change makes no version (`new_version` is null). With `base_version`, a 409 when "
        "another save came after that version.",
        request=ConfigChangesSerializer,
        responses={
            200: ProjectUpdateResultSerializer,
            400: OpenApiResponse(description="Invalid fields, with the message under each."),
            403: OpenApiResponse(description="On the project, but not a team lead of it, nor staff."),
            404: OpenApiResponse(description="No such project, or not one you are on."),
            409: OpenApiResponse(description="`base_version` is no longer the current version."),
        },
    )
    def partial_update(self, request: AuthedAPIRequest, slug: str) -> Response:
        project = self._editable()
        payload = ConfigChangesSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            config = bump_config(
                project=project,
                user=request.user,
                changes=payload.changes(),
                summary=payload.validated_data["summary"],
                base_version=payload.validated_data.get("base_version"),
            )
        except DomainError as exc:
            raise _field_errors(exc, set(payload.fields)) from exc
        return Response(self._detail(project, new_version=config.version if config else None))

    @extend_schema(
        summary="Roll back to an old version",
        description="Saves a new version equal to the old one (versions never change); its number "
        "follows the versioning rule. Team leads and staff.",
        request=RollbackSerializer,
        responses={
            200: ProjectUpdateResultSerializer,
            400: OpenApiResponse(description="That version is the current configuration already."),
            403: OpenApiResponse(description="On the project, but not a team lead of it, nor staff."),
            404: OpenApiResponse(description="No such version or project, or not a project you are on."),
        },
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request: AuthedAPIRequest, slug: str) -> Response:
        project = self._editable()
        payload = RollbackSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        config = rollback_config(
            project=project, version=payload.validated_data["version"], user=request.user
        )
        return Response(self._detail(project, new_version=config.version))

    @extend_schema(
        summary="A project's configuration versions, newest first",
        description="Every version saved, the current one flagged `is_current`. The projects you are on "
        "(all for staff).",
        responses=ConfigSerializer(many=True),
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def configs(self, request: Request, slug: str) -> Response:
        versions = config_history(self.get_object()).prefetch_related("chats")
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(ConfigSerializer(page, many=True).data)

    @extend_schema(
        summary="One configuration version",
        description="The version by its number, e.g. 1.2.0; a 404 for a number the project never had. "
        "The projects you are on (all for staff).",
        responses=ConfigSerializer,
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=rf"configs/(?P<version>{VERSION_PATTERN})",
        url_name="config-detail",
        filter_backends=[],
        pagination_class=None,
    )
    def config_detail(self, request: Request, slug: str, version: str) -> Response:
        return Response(ConfigSerializer(get_config_version(self.get_object(), version)).data)


@extend_schema_view(
    list=extend_schema(
        summary="List tasks",
        description="Tasks of the projects you are on (all for staff), newest first. Filter by "
        "`project` (id), `status`, `assignee` (user id), `priority`, `category`; `search` looks in "
        "the title and description.",
    ),
    retrieve=extend_schema(
        summary="Get a task", description="Tasks of the projects you are on (all for staff)."
    ),
    partial_update=extend_schema(
        summary="Move a task or assign it",
        description="Anyone on the project's team (any role), and staff. `status` moves along the legal "
        "transitions (a done or cancelled task is reopened first: 409 otherwise); `assignee` is a "
        "user on the team, or null.",
        request=TaskUpdateSerializer,
        responses={
            200: TaskSerializer,
            400: OpenApiResponse(description="Invalid fields, or an assignee not on the team."),
            404: OpenApiResponse(description="No such task, or not of a project you are on."),
            409: OpenApiResponse(description="Not a legal status transition."),
        },
    ),
)
class TaskViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = TaskSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_class = TaskFilter
    search_fields = ["title", "description"]
    ordering_fields = ["created_at", "updated_at", "due_date", "priority"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Task]:
        return tasks_visible_to(self.request.user).order_by("-created_at", "-pk")

    def partial_update(self, request: AuthedAPIRequest, pk: str) -> Response:
        task = self.get_object()
        payload = TaskUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            task = update_task(
                task=task,
                user=request.user,
                status=data.get("status"),
                assignee=data.get("assignee", UNSET),
            )
        except DomainError as exc:
            raise _field_errors(exc, set(payload.fields)) from exc
        return Response(TaskSerializer(self.get_queryset().get(pk=task.pk)).data)


class WebhookSerializer(serializers.ModelSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEndpoint.Event.choices),
        required=False,
        help_text="Events to receive; empty for all.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "project", "url", "events", "is_active", "secret", "created_at"]
        read_only_fields = ["id", "secret", "created_at"]
        extra_kwargs = help_texts(
            project="Id of the project whose events are sent; one you lead, unless you are staff (one you "
            "are not on is an invalid id).",
            url="Where the signed JSON POSTs go: an http(s) URL whose host resolves to public addresses "
            "only, unless it is in WEBHOOK_ALLOWED_HOSTS. Redirects are not followed.",
            is_active="Off: no events are sent to it.",
            secret="HMAC-SHA256 key of X-Tasktracker-Signature.",  # noqa: S106
        )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        request = self.context.get("request")
        # A project the user is not on is no valid choice: its existence is not theirs to learn.
        # (The ignore: the stub's `RelatedField.queryset` includes a `Manager`, whose `__get__`
        # mypy then applies to the field, wrongly.)
        project = cast(serializers.PrimaryKeyRelatedField, fields["project"])
        project.queryset = access.projects(request.user if request is not None else None)  # type: ignore[arg-type]
        return fields


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event",
            "status",
            "attempts",
            "response_status",
            "error",
            "created_at",
            "delivered_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            event="The event sent: proposal.approved or task.status_changed.",
            status="pending (queued, being sent or waiting for a retry), delivered (answered 2xx) or failed "
            "(given up after the last attempt, or at once when the URL was refused or answered with a "
            "redirect).",
            attempts="Attempts made so far (a refused one sent nothing); a failed one is retried after a "
            "random wait of up to 10 s, then 20 s, 40 s… (WEBHOOK_RETRY_BACKOFF_SECONDS), "
            "WEBHOOK_MAX_ATTEMPTS attempts in all (6 by default).",
            response_status="HTTP status of the last answer; null when none came (refused, connection error "
            "or timeout) or before the first attempt.",
            error='Why the last attempt failed, in a few words: "HTTP 500", "HTTP 302: redirects are not '
            'followed.", "Timed out", "Could not connect: …", "Refused: 127.0.0.1 is not a public address.";'
            " never what the receiver answered. Empty once delivered.",
            created_at="When the event was queued.",
            delivered_at="When the receiver answered 2xx; null until then.",
        )


@extend_schema_view(
    list=extend_schema(
        summary="List the webhooks of the projects you lead (all for staff)",
        description="Each with its secret. Filter by `project` and `is_active`.",
    ),
    retrieve=extend_schema(
        summary="Get a webhook",
        description="With its secret. Webhooks of the projects you lead (all for staff).",
    ),
    destroy=extend_schema(
        summary="Delete a webhook",
        description="No more events are sent to it, and its deliveries are deleted with it. Webhooks of the "
        "projects you lead (all for staff).",
    ),
    create=extend_schema(
        summary="Register a webhook",
        description="The project receives signed JSON POSTs (`X-Tasktracker-Signature: sha256=<HMAC of the "
        "body with the secret>`) when a proposal is approved or a task changes status; failed deliveries are "
        "retried with backoff and logged. Leads of the project or staff.",
    ),
)
class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = WebhookSerializer
    permission_classes = [permissions.IsAuthenticated]
    # Behind `IsAuthenticated`: `perform_create` and `perform_destroy` act for a signed-in user.
    request: AuthedAPIRequest
    filterset_fields = ["project", "is_active"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        webhooks = WebhookEndpoint.objects.select_related("project").order_by("pk")
        if getattr(self, "swagger_fake_view", False):
            return webhooks.none()
        return access.scope(webhooks, self.request.user, access.Action.CONFIGURE)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = create_webhook_endpoint(
                user=self.request.user,
                project=data["project"],
                url=data["url"],
                events=data.get("events", []),
                is_active=data.get("is_active", True),
            )
        except DomainError as exc:
            raise _field_errors(exc, set(cast(WebhookSerializer, serializer).fields)) from exc

    def perform_destroy(self, instance: WebhookEndpoint) -> None:
        delete_webhook_endpoint(endpoint=instance, user=self.request.user)

    @extend_schema(
        summary="The webhook's latest deliveries",
        description="Its last 100 deliveries, newest first (not paginated), with the outcome of the last "
        "attempt of each. Webhooks of the projects you lead (all for staff).",
        responses={200: WebhookDeliverySerializer(many=True)},
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def deliveries(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        return Response(WebhookDeliverySerializer(endpoint.deliveries.all()[:100], many=True).data)


router = SimpleRouter()
router.register("projects", ProjectViewSet, basename="project")
router.register("tasks", TaskViewSet, basename="task")
router.register("webhooks", WebhookViewSet, basename="webhook")

app_name = "projects"
urlpatterns = router.urls
