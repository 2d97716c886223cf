from typing import Any, Protocol, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from projects import access
from projects.models import Task
from proposals.forms import ProposalEditForm, RejectForm
from proposals.models import HIGH_CONFIDENCE, MEDIUM_CONFIDENCE, ReviewEvent, TaskProposal, confidence_band
from proposals.selectors import may_review_any, proposals_visible_to, source_context
from proposals.services import (
    EDITABLE_FIELDS,
    BulkOutcome,
    approve_proposal,
    bulk_review,
    edit_proposal,
    mark_duplicate,
    merge_proposals,
    reject_proposal,
    reopen_proposal,
    undo_last_action,
)
from tasktracker.exceptions import DomainError
from tasktracker.types import AuthedRequest

BAND_COLOURS: dict[str, str] = {
    TaskProposal.Band.HIGH: "#2e7d32",
    TaskProposal.Band.MEDIUM: "#b26a00",
    TaskProposal.Band.LOW: "#c62828",
}
# The change form's second submit button: save the edits and approve in one review.
APPROVE_BUTTON = "_approve"


class ConfidenceBandFilter(admin.SimpleListFilter):
    """The band each proposal was saved in: its run's thresholds, fixed (high above
    0.9, medium 0.7 to 0.9, low below 0.7) or calibrated on the project's reviews."""

    title = "confidence band"
    parameter_name = "band"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            (TaskProposal.Band.HIGH, f"High (fixed: > {HIGH_CONFIDENCE})"),
            (TaskProposal.Band.MEDIUM, f"Medium (fixed: {MEDIUM_CONFIDENCE} – {HIGH_CONFIDENCE})"),
            (TaskProposal.Band.LOW, f"Low (fixed: < {MEDIUM_CONFIDENCE})"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TaskProposal]) -> QuerySet[TaskProposal]:
        if self.value() in TaskProposal.Band.values:
            return queryset.filter(band=self.value())
        return queryset


class ReviewEventInline(admin.TabularInline):
    model = ReviewEvent
    fields = readonly_fields = ("created_at", "user", "action", "note", "before", "after", "task")
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReviewEvent]:
        return super().get_queryset(request).select_related("user", "task")

    def has_add_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        return False


class _Reviewed(Protocol):
    """What `save_model` leaves on a proposal for `response_change` to report."""

    review_refusal: str
    review_task: Task | None


@admin.register(TaskProposal)
class TaskProposalAdmin(admin.ModelAdmin):
    """The review UI of the admin. Proposals are made by runs, and every change to one is a
    review through the review services, which leave a `ReviewEvent`: the actions call them,
    and the change form edits only `EDITABLE_FIELDS`, through `edit_proposal` (or
    `approve_proposal` with "Save and approve"). Who sees and who reviews which proposals:
    `projects.access`; those who see but do not review get read-only pages and no actions."""

    form = ProposalEditForm
    list_display = ["title", "project", "confidence_badge", "recommendation", "status", "run", "created_at"]
    list_filter = [
        ConfidenceBandFilter,
        "status",
        "recommendation",
        ("project", admin.RelatedOnlyFieldListFilter),
        ("run", admin.RelatedOnlyFieldListFilter),
        ("reviewer", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["project", "run"]
    search_fields = ["title", "description", "source_messages__text"]
    date_hierarchy = "created_at"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "title",
                    "description",
                    "project",
                    "suggested_assignee",
                    "suggested_assignee_name",
                    "priority",
                    "category",
                    "tags",
                    "due_date",
                ]
            },
        ),
        ("The model's view", {"fields": ["confidence_badge", "recommendation", "reasoning"]}),
        ("Source messages in their chat", {"fields": ["sources"]}),
        ("Similar work", {"fields": ["similar_work"]}),
        (
            "Review",
            {
                "fields": [
                    "status",
                    "reviewer",
                    "reviewed_at",
                    "review_action",
                    "review_note",
                    "task",
                    "merged_into",
                ]
            },
        ),
        ("Origin", {"fields": ["run", "batch", "created_at", "updated_at"]}),
    ]
    readonly_fields = [field for field in flatten_fieldsets(fieldsets) if field not in EDITABLE_FIELDS]
    inlines = [ReviewEventInline]
    actions = ["approve_selected", "reject_selected", "merge_selected", "mark_duplicate_of_similar"]
    # `get_absolute_url` points back into the admin; "View on site" would be a loop.
    view_on_site = False

    # Permissions: reviewing follows `projects.access`, not the model permissions.

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskProposal]:
        return proposals_visible_to(request.user, super().get_queryset(request))

    def can_review(self, request: HttpRequest, obj: TaskProposal) -> bool:
        return access.can(request.user, obj.project_id, access.Action.REVIEW)

    def has_review_permission(self, request: HttpRequest) -> bool:
        return may_review_any(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or self.has_review_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        return super().has_view_permission(request, obj) or self.has_review_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        if obj is None:
            return self.has_review_permission(request)
        # Only a pending proposal's fields can change; a reviewed one is a read-only page.
        return obj.status == TaskProposal.Status.PENDING and self.can_review(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        # Deleting would take the audit trail with it; a proposal goes with its run.
        return False

    # Columns and read-only fields.

    @admin.display(description="Confidence", ordering="confidence")
    def confidence_badge(self, obj: TaskProposal) -> SafeString:
        band = obj.band or confidence_band(obj.confidence)
        return format_html(
            '<span class="confidence confidence-{}" title="{} confidence" '
            'style="background:{};color:#fff;padding:1px 8px;border-radius:9px;white-space:nowrap">'
            "{}</span>",
            band,
            TaskProposal.Band(band).label,
            BAND_COLOURS[band],
            f"{obj.confidence:.2f}",
        )

    @admin.display(description="Source messages")
    def sources(self, obj: TaskProposal) -> SafeString:
        return render_to_string("proposals/_excerpts.html", {"excerpts": source_context(obj)})

    @admin.display(description="Similar")
    def similar_work(self, obj: TaskProposal) -> SafeString:
        items = []
        # No query for an empty key: the descriptor answers None itself.
        similar = obj.similar_proposal
        if similar is not None:
            items.append(
                format_html(
                    'Proposal <a href="{}">{} “{}”</a> ({})',
                    reverse("admin:proposals_taskproposal_change", args=[similar.pk]),
                    similar.pk,
                    similar.title,
                    similar.get_status_display().lower(),
                )
            )
        task = obj.similar_task
        if task is not None:
            items.append(
                format_html(
                    'Task <a href="{}">#{} “{}”</a>',
                    reverse("admin:projects_task_change", args=[task.pk]),
                    task.pk,
                    task.title,
                )
            )
        if not items:
            return format_html('<span class="quiet">{}</span>', "Nothing similar found.")
        listed = format_html_join(" · ", "{}", ((item,) for item in items))
        if obj.similarity_score is None:
            return listed
        return format_html(
            '{} <span class="quiet">— score {}, {}</span>',
            listed,
            f"{obj.similarity_score:.2f}",
            obj.get_similarity_kind_display().lower(),
        )

    # The change form: edits go through the review services.

    def get_urls(self) -> list[URLPattern]:
        review_url = path(
            "<int:object_id>/review/<slug:verb>/",
            self.admin_site.admin_view(require_POST(self.review_view)),
            name="proposals_taskproposal_review",
        )
        return [review_url, *super().get_urls()]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: TaskProposal | None = None,
    ) -> HttpResponse:
        if obj is not None and self.can_review(request, obj):
            pending = obj.status == TaskProposal.Status.PENDING
            context["review"] = {
                "pending": pending,
                "similar_proposal": obj.similar_proposal if pending else None,
                "can_undo": bool(obj.review_action),
                "can_reopen": obj.status in (TaskProposal.Status.REJECTED, TaskProposal.Status.MERGED),
                "reject_form": RejectForm(auto_id="id_review_%s"),
                "queue_url": reverse("proposals:proposal", args=[obj.pk]),
            }
        return super().render_change_form(request, context, add, change, form_url, obj)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST" and object_id is not None:
            obj = self.get_object(request, object_id)
            if (
                obj is not None
                and obj.status != TaskProposal.Status.PENDING
                and self.can_review(request, obj)
            ):
                # Reviewed since the form was loaded (by a colleague, or in another tab): say
                # so rather than answer with the 403 of a read-only page.
                status = obj.get_status_display().lower()
                self.message_user(
                    request,
                    f"Proposal {obj.pk} was {status} meanwhile; your changes were not saved.",
                    messages.ERROR,
                )
                return HttpResponseRedirect(request.path)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(
        self, request: HttpRequest, obj: TaskProposal, form: ProposalEditForm, change: bool
    ) -> None:
        """Hand the form's changes to `edit_proposal`, or with "Save and approve" to
        `approve_proposal`, instead of saving the row: the services lock it, check that it
        is pending and leave the review event. A refusal is reported by `response_change`."""
        # The admin serves signed-in users only (`AdminSite.has_permission`).
        user = cast(AuthedRequest, request).user
        edits = form.edits()
        reviewed = cast(_Reviewed, obj)
        reviewed.review_refusal = ""
        reviewed.review_task = None
        try:
            if APPROVE_BUTTON in request.POST:
                reviewed.review_task = approve_proposal(proposal_id=obj.pk, user=user, edits=edits or None)
            elif edits:
                edit_proposal(proposal_id=obj.pk, user=user, edits=edits)
        except DomainError as exc:
            reviewed.review_refusal = exc.message

    def save_related(self, request: HttpRequest, form: ProposalEditForm, formsets: Any, change: bool) -> None:
        """Nothing to save: the edited fields are not relations, the inline is read-only."""

    def log_change(self, request: HttpRequest, obj: TaskProposal, message: Any) -> Any:
        if getattr(obj, "review_refusal", ""):
            return None
        return super().log_change(request, obj, message)

    def response_change(self, request: HttpRequest, obj: TaskProposal) -> HttpResponse:
        change_url = reverse("admin:proposals_taskproposal_change", args=[obj.pk])
        refusal = getattr(obj, "review_refusal", "")
        if refusal:
            self.message_user(request, refusal, messages.ERROR)
            return HttpResponseRedirect(change_url)
        task = getattr(obj, "review_task", None)
        if task is not None:
            self.message_user(request, f"Approved “{obj.title}”: task #{task.pk} created.", messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        return super().response_change(request, obj)

    def review_view(self, request: AuthedRequest, object_id: int, verb: str) -> HttpResponse:
        """The change page's review buttons: approve, reject (with a reason), mark as a
        duplicate of the similar proposal, undo the last action, reopen."""
        obj = self.get_object(request, str(object_id))
        if obj is None:
            raise Http404
        if not self.can_review(request, obj):
            raise PermissionDenied
        user = request.user
        try:
            match verb:
                case "approve":
                    task = approve_proposal(proposal_id=obj.pk, user=user)
                    done = f"Approved “{obj.title}”: task #{task.pk} created."
                case "reject":
                    reject_proposal(proposal_id=obj.pk, user=user, reason=request.POST.get("reason", ""))
                    done = f"Rejected “{obj.title}”."
                case "duplicate":
                    if obj.similar_proposal_id is None:
                        raise DomainError(f"Proposal {obj.pk} has no similar proposal.", code="no_similar")
                    mark_duplicate(proposal_id=obj.pk, of_id=obj.similar_proposal_id, user=user)
                    done = f"Marked “{obj.title}” as a duplicate of proposal {obj.similar_proposal_id}."
                case "undo":
                    status = undo_last_action(proposal_id=obj.pk, user=user).get_status_display().lower()
                    done = f"Undid the last review of “{obj.title}”: it is {status}."
                case "reopen":
                    reopen_proposal(proposal_id=obj.pk, user=user)
                    done = f"Reopened “{obj.title}”: it is pending again."
                case _:
                    raise Http404
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:proposals_taskproposal_change", args=[obj.pk]))

    # Actions on the selected proposals.

    def _report(self, request: HttpRequest, outcome: BulkOutcome, verb: str) -> None:
        if outcome.done:
            ids = ", ".join(str(pk) for pk in outcome.done)
            self.message_user(request, f"{verb} {len(outcome.done)} proposal(s): {ids}.", messages.SUCCESS)
        for reason in outcome.refused.values():
            self.message_user(request, reason, messages.ERROR)

    @admin.action(permissions=["review"], description="Approve the selected proposals")
    def approve_selected(self, request: AuthedRequest, queryset: QuerySet[TaskProposal]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        self._report(request, bulk_review(proposal_ids=ids, user=request.user, action="approve"), "Approved")

    @admin.action(permissions=["review"], description="Reject the selected proposals…")
    def reject_selected(
        self, request: AuthedRequest, queryset: QuerySet[TaskProposal]
    ) -> HttpResponse | None:
        """Like `delete_selected`: the first request shows the proposals and asks for the
        reason; the confirmation (`post`) rejects them."""
        form = RejectForm(request.POST if request.POST.get("post") else None)
        if form.is_bound and form.is_valid():
            ids = list(queryset.values_list("pk", flat=True))
            outcome = bulk_review(
                proposal_ids=ids, user=request.user, action="reject", reason=form.cleaned_data["reason"]
            )
            self._report(request, outcome, "Rejected")
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Reject proposals",
            "subtitle": None,
            "queryset": queryset.select_related("project"),
            "form": form,
            "opts": self.opts,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/proposals/taskproposal/reject_selected_confirmation.html", context
        )

    @admin.action(permissions=["review"], description="Merge the selected proposals into the first listed")
    def merge_selected(self, request: AuthedRequest, queryset: QuerySet[TaskProposal]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        try:
            target = merge_proposals(proposal_ids=ids, user=request.user, into_id=ids[0] if ids else None)
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        others = ", ".join(str(pk) for pk in ids if pk != target.pk)
        self.message_user(request, f"Merged {others} into “{target.title}” ({target.pk}).", messages.SUCCESS)

    @admin.action(permissions=["review"], description="Mark as duplicates of their similar proposals")
    def mark_duplicate_of_similar(self, request: AuthedRequest, queryset: QuerySet[TaskProposal]) -> None:
        done = []
        for pk, similar_id in queryset.values_list("pk", "similar_proposal_id"):
            if similar_id is None:
                self.message_user(request, f"Proposal {pk} has no similar proposal.", messages.ERROR)
                continue
            try:
                mark_duplicate(proposal_id=pk, of_id=similar_id, user=request.user)
            except DomainError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                done.append(f"{pk} of {similar_id}")
        if done:
            self.message_user(request, f"Marked as duplicates: {', '.join(done)}.", messages.SUCCESS)


@admin.register(ReviewEvent)
class ReviewEventAdmin(admin.ModelAdmin):
    """The audit trail: nobody adds, changes or deletes an event by hand."""

    list_display = ["created_at", "proposal", "action", "user", "task"]
    list_display_links = ["created_at", "action"]
    list_filter = ["action", ("user", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["proposal", "user", "task"]
    search_fields = ["proposal__title", "note", "user__username"]
    date_hierarchy = "created_at"
    fields = readonly_fields = ("created_at", "proposal", "user", "action", "note", "before", "after", "task")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReviewEvent]:
        return access.scope(super().get_queryset(request), request.user, via="proposal__project")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ReviewEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ReviewEvent | None = None) -> bool:
        return False
