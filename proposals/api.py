"""The API of the `proposals` app: the review queue and every review action.

Mounted under `/api/v1/` by `tasktracker.api_urls`. Views validate the shape of a request
and call `proposals.selectors` (reads) or `proposals.services` (writes). Who sees and who
reviews a proposal is `projects.access`'s to say: the members of its project see it, its
reviewers and leads review it. A proposal of a project you are not on is a 404, as if it
did not exist; one you see but do not review is a 403; an illegal move (approving twice,
approving a rejected proposal) a 409, each with the service's message, as on the review
pages and in the admin.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import filters as drf_filters
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from projects.api import TaskSerializer
from projects.models import Task
from proposals.models import ReviewEvent, TaskProposal
from proposals.selectors import (
    filter_band,
    filter_words,
    may_review_any,
    proposal_detail,
    proposal_list,
    proposal_summaries,
    proposals_visible_to,
)
from proposals.services import (
    EDITABLE_FIELDS,
    approve_proposal,
    bulk_review,
    edit_proposal,
    mark_duplicate,
    mark_duplicate_of_task,
    merge_proposals,
    reject_proposal,
    reopen_proposal,
    split_proposal,
    undo_last_action,
)
from sources.api import MessageSerializer
from sources.models import Message
from tasktracker.api import IdFilter, help_texts
from tasktracker.types import AuthedAPIRequest

# Each proposal of a bulk review is its own transaction (and webhook); a request stays short.
BULK_REVIEW_MAX_PROPOSALS = 500

FORBIDDEN = OpenApiResponse(description="You are on the project, but do not review its proposals.")
NOT_FOUND = OpenApiResponse(description="No such proposal, or not of a project you are on.")
ILLEGAL_MOVE = OpenApiResponse(
    description="Not a legal move from the proposal's status; the message says why."
)


# Serializers


class SourceMessageSerializer(serializers.ModelSerializer):
    chat_title = serializers.CharField(source="chat.title", read_only=True, help_text="The chat's title.")
    link = serializers.CharField(read_only=True, help_text="t.me link to the message; empty where none.")

    class Meta:
        model = Message
        fields = ["id", "chat", "chat_title", "author_id", "author_name", "text", "sent_at", "link"]
        read_only_fields = fields
        extra_kwargs = MessageSerializer.Meta.extra_kwargs


class ProposalRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskProposal
        fields = ["id", "title"]
        read_only_fields = fields
        extra_kwargs = help_texts(title="The proposal's title.")


class TaskRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = ["id", "title"]
        read_only_fields = fields
        extra_kwargs = help_texts(title="The task's title.")


class ReviewEventSerializer(serializers.ModelSerializer):
    username = serializers.CharField(
        source="user.username",
        read_only=True,
        allow_null=True,
        help_text="The reviewer's username; null if deleted.",
    )

    class Meta:
        model = ReviewEvent
        fields = ["id", "action", "user", "username", "note", "before", "after", "task", "created_at"]
        read_only_fields = fields
        extra_kwargs = help_texts(
            action="What the reviewer did to the proposal.",
            user="The reviewer's user id; null if the user was deleted.",
            note="A rejection's reason, or what a merge, split, duplicate or undo involved; may be empty.",
            before="The proposal's fields before the action.",
            after="The proposal's fields after the action.",
            task="The task an approval made or added to.",
            created_at="When the action was taken.",
        )


class ProposalSerializer(serializers.ModelSerializer):
    project_name = serializers.CharField(
        source="project.name", read_only=True, help_text="The project's name."
    )
    band = serializers.ChoiceField(
        choices=TaskProposal.Band.choices,
        read_only=True,
        help_text="The confidence band it was proposed in, by its run's thresholds: fixed (high above "
        "0.9, medium 0.7 to 0.9, low below 0.7) or calibrated on the project's reviews (the project's "
        "`calibration`).",
    )
    similar_proposal = ProposalRefSerializer(
        read_only=True,
        allow_null=True,
        help_text="The pending or approved proposal this one seems to repeat; null for none.",
    )
    similar_task = TaskRefSerializer(
        read_only=True, allow_null=True, help_text="The task this one seems to repeat; null for none."
    )
    # Declared: `read_only_fields` would drop the model field's `blank=True`, and the schema's
    # enum would miss the "" of every proposal not linked to a similar one.
    similarity_kind = serializers.ChoiceField(
        choices=TaskProposal.SimilarityKind.choices,
        allow_blank=True,
        read_only=True,
        help_text="How the similar proposal or task was found; empty when there is none.",
    )
    reviewer_username = serializers.CharField(
        source="reviewer.username",
        read_only=True,
        allow_null=True,
        help_text="The reviewer's username, or null.",
    )
    source_messages = SourceMessageSerializer(many=True, read_only=True, help_text="Oldest first.")
    auto_approved = serializers.BooleanField(
        read_only=True,
        help_text="Whether the system approved it under the project's auto-approval rule (and no reviewer "
        "has reviewed it since); the note says by which record.",
    )

    class Meta:
        model = TaskProposal
        fields = [
            "id",
            "project",
            "project_name",
            "run",
            "title",
            "description",
            "priority",
            "category",
            "tags",
            "due_date",
            "suggested_assignee",
            "suggested_assignee_name",
            "confidence",
            "band",
            "recommendation",
            "reasoning",
            "similar_proposal",
            "similar_task",
            "similarity_score",
            "similarity_kind",
            "status",
            "reviewer",
            "reviewer_username",
            "reviewed_at",
            "review_action",
            "review_note",
            "auto_approved",
            "task",
            "merged_into",
            "source_messages",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = help_texts(
            project="Id of the project the proposal is for.",
            run="Id of the analysis run that proposed it; null if it came from elsewhere.",
            title="Short summary of the proposed task, as the LLM wrote it or a reviewer edited it.",
            description="Details of the proposed task; may be empty.",
            priority="How urgent the proposed task is; copied to the task an approval makes.",
            category="What kind of work it is; copied to the task an approval makes.",
            tags="Free-form labels; copied to the task an approval makes.",
            due_date="Due date (YYYY-MM-DD) the chat gave; null for none.",
            suggested_assignee="User id of the team member the LLM named, else the project's default "
            "assignee; null for none.",
            suggested_assignee_name="The assignee as the LLM named them; may be empty.",
            confidence="The LLM's confidence that this is a real task, 0 to 1.",
            recommendation="What the LLM suggests doing with the proposal.",
            reasoning="Why the LLM proposes it; may be empty.",
            similarity_score="How close the similar proposal or task is, 0 to 1 (shared source messages or "
            "title likeness); null for none.",
            status="Where the review stands; merged means folded into another proposal (`merged_into`).",
            reviewer="User id of who last approved, rejected or merged it; null if nobody has.",
            reviewed_at="When it was last approved, rejected or merged; null if it never was.",
            review_action="The last review action: approve, auto_approve (by the system), add_to_task, "
            "reject, merge, split, mark_duplicate, undo or reopen; empty before any.",
            review_note="The reason of a rejection, why the system auto-approved it, or which proposals a "
            "merge, split or duplicate involved; may be empty.",
            merged_into="Id of the proposal it was merged into (by a merge, split or duplicate); null "
            "otherwise.",
            created_at="When the LLM's proposal was saved.",
        )


class ProposalDetailSerializer(ProposalSerializer):
    review_events = ReviewEventSerializer(many=True, read_only=True, help_text="Newest first.")

    class Meta(ProposalSerializer.Meta):
        fields = [*ProposalSerializer.Meta.fields, "review_events"]
        read_only_fields = fields


class ProposalEditSerializer(serializers.Serializer):
    """The fields a reviewer may change; those left out keep their value."""

    title = serializers.CharField(max_length=300, required=False, help_text="The new title; not empty.")
    description = serializers.CharField(
        allow_blank=True, trim_whitespace=False, required=False, help_text="The new description."
    )
    priority = serializers.ChoiceField(
        choices=Task.Priority.choices, required=False, help_text="The new priority."
    )
    category = serializers.ChoiceField(
        choices=Task.Category.choices,
        required=False,
        help_text="The new category.",
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        help_text="The new tags, replacing the old.",
    )
    due_date = serializers.DateField(
        allow_null=True, required=False, help_text="The new due date (YYYY-MM-DD), or null for none."
    )
    suggested_assignee = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.all(),
        allow_null=True,
        required=False,
        help_text="A user id, or null.",
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # DRF drops unknown keys; a client sending `status` or `confidence` would think it
        # changed them, so they are refused instead.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(EDITABLE_FIELDS))
            if unknown:
                editable = ", ".join(EDITABLE_FIELDS)
                raise serializers.ValidationError(
                    {name: [f"{name} cannot be edited; editable: {editable}."] for name in unknown}
                )
        return super().to_internal_value(data)


class ApproveSerializer(serializers.Serializer):
    edits = ProposalEditSerializer(required=False, help_text="Changes applied before approving.")
    add_to_task = serializers.BooleanField(
        default=False,
        help_text="Add the proposal to its similar task instead of creating a task.",
    )


class RejectSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="Why the proposal is not a task; kept with it.")


class MergeSerializer(serializers.Serializer):
    proposal_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        allow_empty=False,
        help_text="Two or more pending proposals.",
    )
    into = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text="The proposal that stays; the first of `proposal_ids` when left out.",
    )


class SplitPartSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=300, help_text="The new proposal's title.")
    description = serializers.CharField(
        allow_blank=True,
        trim_whitespace=False,
        required=False,
        default="",
        help_text="The new proposal's description; empty when left out.",
    )
    source_message_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        allow_empty=False,
        help_text="Some of the proposal's own source messages.",
    )


class SplitSerializer(serializers.Serializer):
    parts = SplitPartSerializer(
        many=True, help_text="Two or more parts; every source message goes to some part."
    )


class DuplicateSerializer(serializers.Serializer):
    of = serializers.IntegerField(
        min_value=1, required=False, help_text="The pending or approved proposal this one repeats."
    )
    of_task = serializers.IntegerField(
        min_value=1, required=False, help_text="Or the task of the same project that it repeats."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("of" in attrs) == ("of_task" in attrs):
            raise serializers.ValidationError("Give either `of` (a proposal) or `of_task` (a task).")
        return attrs


class BulkReviewSerializer(serializers.Serializer):
    proposal_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        allow_empty=False,
        max_length=BULK_REVIEW_MAX_PROPOSALS,
        help_text=f"1 to {BULK_REVIEW_MAX_PROPOSALS} proposals.",
    )
    action = serializers.ChoiceField(
        choices=[("approve", "Approve"), ("reject", "Reject")],
        help_text="What to do with every proposal given.",
    )
    reason = serializers.CharField(
        allow_blank=True, required=False, default="", help_text="Required to reject."
    )


class BulkOutcomeSerializer(serializers.Serializer):
    done = serializers.ListField(child=serializers.IntegerField(), help_text="The proposals reviewed.")
    refused = serializers.DictField(
        child=serializers.CharField(), help_text="Proposal id (a string key) to why it was refused."
    )


# Filters


class ProposalFilter(filters.FilterSet):
    project = IdFilter(field_name="project_id", help_text="The project's id.")
    run = IdFilter(field_name="run_id", help_text="The analysis run's id.")
    band = filters.ChoiceFilter(
        choices=TaskProposal.Band.choices,
        method="filter_band",
        help_text="The confidence band it was proposed in, by its run's thresholds: fixed (high above "
        "0.9, medium 0.7 to 0.9, low below 0.7) or calibrated on the project's reviews (the project's "
        "`calibration`).",
    )

    auto_approved = filters.BooleanFilter(
        method="filter_auto_approved",
        help_text="true: only proposals the system approved (auto-approval); false: all others.",
    )

    class Meta:
        model = TaskProposal
        fields = ["status", "project", "run", "band", "recommendation"]

    def filter_auto_approved(
        self, queryset: QuerySet[TaskProposal], name: str, value: bool | None
    ) -> QuerySet[TaskProposal]:
        auto = Q(status=TaskProposal.Status.APPROVED, review_action=ReviewEvent.Action.AUTO_APPROVE)
        if value is None:
            return queryset
        return queryset.filter(auto) if value else queryset.exclude(auto)

    def filter_band(self, queryset: QuerySet[TaskProposal], name: str, value: str) -> QuerySet[TaskProposal]:
        return filter_band(queryset, value)


class ProposalSearchFilter(drf_filters.SearchFilter):
    """DRF's `search` (its words, split its way), every one in the title or the description,
    through `filter_words`, which uses the title and description indexes."""

    def filter_queryset(self, request: Any, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        terms = self.get_search_terms(request)
        return filter_words(queryset, terms) if terms else queryset


# Views


@extend_schema_view(
    list=extend_schema(
        summary="List proposals",
        description="Proposals of the projects you are on (all for staff), most confident first, then "
        "oldest; reviewing them takes a reviewer or team lead of the project. "
        "Filter by `status`, `project`, `run`, `band` (high, medium, low), `recommendation` and "
        "`auto_approved`; "
        "`search` looks in the title and description; order by `confidence` or `created_at`.",
    ),
    retrieve=extend_schema(
        summary="Get a proposal with its sources and review history",
        description="Its source messages (with t.me links), the similar proposal or task it was "
        "linked to with the score and kind of the match, and its review events, newest first. "
        "Proposals of the projects you are on (all for staff).",
        responses={200: ProposalDetailSerializer, 404: NOT_FOUND},
    ),
    partial_update=extend_schema(
        summary="Edit a pending proposal",
        description="Changes the fields given; it stays pending. Only "
        f"{', '.join(EDITABLE_FIELDS)} can be edited: any other field is a 400.",
        request=ProposalEditSerializer,
        responses={
            200: ProposalDetailSerializer,
            400: OpenApiResponse(description="Invalid fields, or fields that cannot be edited."),
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: ILLEGAL_MOVE,
        },
    ),
)
class ProposalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    # PATCH and no PUT: a reviewer changes some fields, the others are the LLM's. The
    # actions pass the id to the services, which say 404 or 403 themselves.
    serializer_class = ProposalSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_class = ProposalFilter
    filter_backends = [
        filters.DjangoFilterBackend,
        drf_filters.OrderingFilter,
        ProposalSearchFilter,
    ]
    search_fields = ["title", "description"]
    ordering_fields = ["confidence", "created_at"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[TaskProposal]:
        if getattr(self, "swagger_fake_view", False):
            return proposal_list().none()
        if self.action == "list":
            return proposals_visible_to(self.request.user, proposal_summaries()).order_by(
                "-confidence", "created_at", "pk"
            )
        return proposals_visible_to(self.request.user, proposal_detail())

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return ProposalSerializer if self.action == "list" else ProposalDetailSerializer

    def _detail(self, proposal_id: int, *, code: int = status.HTTP_200_OK) -> Response:
        proposal = proposal_detail().get(pk=proposal_id)
        return Response(ProposalDetailSerializer(proposal).data, status=code)

    def partial_update(self, request: AuthedAPIRequest, pk: str) -> Response:
        payload = ProposalEditSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        if not payload.validated_data:
            raise serializers.ValidationError(
                {"non_field_errors": [f"Give some of: {', '.join(EDITABLE_FIELDS)}."]}
            )
        proposal = edit_proposal(proposal_id=int(pk), user=request.user, edits=dict(payload.validated_data))
        return self._detail(proposal.pk)

    @extend_schema(
        summary="Approve a proposal: it becomes a task",
        description="A pending proposal becomes a task of its project, with `edits` applied first. "
        "With `add_to_task`, it is added to the similar task it was linked to instead (its title and "
        "description appended). Returns the task.",
        request=ApproveSerializer,
        responses={
            201: TaskSerializer,
            400: OpenApiResponse(description="Invalid edits, or no similar task to add to."),
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: ILLEGAL_MOVE,
        },
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: AuthedAPIRequest, pk: str) -> Response:
        payload = ApproveSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        task = approve_proposal(
            proposal_id=int(pk),
            user=request.user,
            edits=dict(payload.validated_data.get("edits") or {}) or None,
            add_to_task=payload.validated_data["add_to_task"],
        )
        return Response(TaskSerializer(task).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Reject a proposal",
        description="A pending proposal is rejected; the reason is required and kept.",
        request=RejectSerializer,
        responses={
            200: ProposalDetailSerializer,
            400: OpenApiResponse(description="No reason given."),
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: ILLEGAL_MOVE,
        },
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: AuthedAPIRequest, pk: str) -> Response:
        payload = RejectSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        proposal = reject_proposal(
            proposal_id=int(pk), user=request.user, reason=payload.validated_data["reason"]
        )
        return self._detail(proposal.pk)

    @extend_schema(
        summary="Merge proposals into one",
        description="Pending proposals of one project are merged into one of them (`into`, or the "
        "first given), which takes all their source messages and stays pending; the others are "
        "closed as merged into it. Returns the proposal that stays.",
        request=MergeSerializer,
        responses={
            200: ProposalDetailSerializer,
            400: OpenApiResponse(description="Fewer than two proposals, or proposals of several projects."),
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: ILLEGAL_MOVE,
        },
    )
    @action(detail=False, methods=["post"], filter_backends=[], pagination_class=None)
    def merge(self, request: AuthedAPIRequest) -> Response:
        payload = MergeSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        target = merge_proposals(
            proposal_ids=payload.validated_data["proposal_ids"],
            user=request.user,
            into_id=payload.validated_data.get("into"),
        )
        return self._detail(target.pk)

    @extend_schema(
        summary="Split a proposal into several",
        description="A pending proposal becomes two or more new pending proposals, each with a title "
        "and some of its source messages (every source to some part). The original is closed as "
        "merged into the first part. Returns the new proposals.",
        request=SplitSerializer,
        responses={
            201: ProposalSerializer(many=True),
            400: OpenApiResponse(
                description="Fewer than two parts, a part without a title, or sources "
                "that are not the proposal's or go to no part."
            ),
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: ILLEGAL_MOVE,
        },
    )
    @action(detail=True, methods=["post"])
    def split(self, request: AuthedAPIRequest, pk: str) -> Response:
        payload = SplitSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        created = split_proposal(
            proposal_id=int(pk), user=request.user, parts=payload.validated_data["parts"]
        )
        parts = proposal_list().filter(pk__in=[p.pk for p in created]).order_by("pk")
        return Response(ProposalSerializer(parts, many=True).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Mark a proposal as a duplicate of another proposal or of a task",
        description="A pending proposal is closed as merged into the pending or approved proposal "
        "it repeats (`of`), or linked to the task of its project that it repeats (`of_task`). "
        "Returns the proposal marked.",
        request=DuplicateSerializer,
        responses={
            200: ProposalDetailSerializer,
            400: OpenApiResponse(
                description="Neither or both of `of` and `of_task`; a proposal cannot duplicate itself; "
                "the task is another project's."
            ),
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: ILLEGAL_MOVE,
        },
    )
    @action(detail=True, methods=["post"])
    def duplicate(self, request: AuthedAPIRequest, pk: str) -> Response:
        payload = DuplicateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        if "of_task" in data:
            proposal = mark_duplicate_of_task(proposal_id=int(pk), task_id=data["of_task"], user=request.user)
        else:
            proposal = mark_duplicate(proposal_id=int(pk), of_id=data["of"], user=request.user)
        return self._detail(proposal.pk)

    @extend_schema(
        summary="Undo a proposal's last review action",
        description="Restores the proposal as it was before its last review action. Undoing an "
        "approval deletes the task it made when nothing else uses it; an addition to an existing "
        "task keeps that task.",
        request=None,
        responses={
            200: ProposalDetailSerializer,
            409: OpenApiResponse(description="No review action to undo."),
            403: FORBIDDEN,
            404: NOT_FOUND,
        },
    )
    @action(detail=True, methods=["post"])
    def undo(self, request: AuthedAPIRequest, pk: str) -> Response:
        proposal = undo_last_action(proposal_id=int(pk), user=request.user)
        return self._detail(proposal.pk)

    @extend_schema(
        summary="Reopen a rejected or merged proposal",
        description="The proposal is pending again.",
        request=None,
        responses={
            200: ProposalDetailSerializer,
            409: OpenApiResponse(description="The proposal is neither rejected nor merged."),
            403: FORBIDDEN,
            404: NOT_FOUND,
        },
    )
    @action(detail=True, methods=["post"])
    def reopen(self, request: AuthedAPIRequest, pk: str) -> Response:
        proposal = reopen_proposal(proposal_id=int(pk), user=request.user)
        return self._detail(proposal.pk)

    @extend_schema(
        summary="Approve or reject many proposals",
        description="Each proposal is reviewed on its own: one refused (not pending, not found, of a "
        "project you do not review) leaves the others done, and is reported with why. Rejecting "
        "takes a `reason`. A 403 for a user who reviews no project at all.",
        request=BulkReviewSerializer,
        responses={
            200: BulkOutcomeSerializer,
            400: OpenApiResponse(description="Invalid fields, or rejecting without a reason."),
            403: OpenApiResponse(description="You review no project's proposals."),
        },
    )
    @action(detail=False, methods=["post"], filter_backends=[], pagination_class=None)
    def bulk(self, request: AuthedAPIRequest) -> Response:
        if not may_review_any(request.user):
            raise PermissionDenied("You review no project's proposals.")
        payload = BulkReviewSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        outcome = bulk_review(
            proposal_ids=payload.validated_data["proposal_ids"],
            user=request.user,
            action=payload.validated_data["action"],
            reason=payload.validated_data["reason"],
        )
        return Response(BulkOutcomeSerializer(outcome).data)


router = SimpleRouter()
router.register("proposals", ProposalViewSet, basename="proposal")

app_name = "proposals"
urlpatterns = router.urls
