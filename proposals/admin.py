from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from proposals.models import HIGH_CONFIDENCE, MEDIUM_CONFIDENCE, ReviewEvent, TaskProposal, confidence_band

BAND_COLOURS = {
    TaskProposal.Band.HIGH: "#2e7d32",
    TaskProposal.Band.MEDIUM: "#b26a00",
    TaskProposal.Band.LOW: "#c62828",
}


class ConfidenceBandFilter(admin.SimpleListFilter):
    """The bands of `confidence_band`, as database filters on `confidence`."""

    title = "confidence band"
    parameter_name = "band"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            (TaskProposal.Band.HIGH, f"High (> {HIGH_CONFIDENCE})"),
            (TaskProposal.Band.MEDIUM, f"Medium ({MEDIUM_CONFIDENCE} – {HIGH_CONFIDENCE})"),
            (TaskProposal.Band.LOW, f"Low (< {MEDIUM_CONFIDENCE})"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TaskProposal]) -> QuerySet[TaskProposal]:
        match self.value():
            case TaskProposal.Band.HIGH:
                return queryset.filter(confidence__gt=HIGH_CONFIDENCE)
            case TaskProposal.Band.MEDIUM:
                return queryset.filter(confidence__gte=MEDIUM_CONFIDENCE, confidence__lte=HIGH_CONFIDENCE)
            case TaskProposal.Band.LOW:
                return queryset.filter(confidence__lt=MEDIUM_CONFIDENCE)
        return queryset


class ReviewEventInline(admin.TabularInline):
    model = ReviewEvent
    fields = ["created_at", "user", "action", "note", "before", "after", "task"]
    readonly_fields = fields
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


@admin.register(TaskProposal)
class TaskProposalAdmin(admin.ModelAdmin):
    """Proposals are made by runs, and every change to one is a review that must leave a
    `ReviewEvent`: until the review actions call the review services, the admin shows
    proposals and changes nothing."""

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
        ("The model's view", {"fields": ["confidence_badge", "recommendation", "reasoning", "sources"]}),
        (
            "Similar work",
            {"fields": ["similar_proposal", "similar_task", "similarity_score", "similarity_kind"]},
        ),
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
    readonly_fields = [field for _, options in fieldsets for field in options["fields"]]
    inlines = [ReviewEventInline]
    # `get_absolute_url` points back into the admin; "View on site" would be a loop.
    view_on_site = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskProposal | None = None) -> bool:
        return False

    @admin.display(description="Confidence", ordering="confidence")
    def confidence_badge(self, obj: TaskProposal) -> SafeString:
        band = confidence_band(obj.confidence)
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
        messages = obj.source_messages.select_related("chat").order_by("sent_at")
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><b>{}</b> in {} at {}: {}</li>",
                (
                    (
                        message.author_name or "unknown",
                        message.chat,
                        f"{timezone.localtime(message.sent_at):%Y-%m-%d %H:%M}",
                        message.text,
                    )
                    for message in messages
                ),
            ),
        )


@admin.register(ReviewEvent)
class ReviewEventAdmin(admin.ModelAdmin):
    """The audit trail: nobody adds, changes or deletes an event by hand."""

    list_display = ["created_at", "proposal", "action", "user", "task"]
    list_display_links = ["created_at", "action"]
    list_filter = ["action", ("user", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["proposal", "user", "task"]
    search_fields = ["proposal__title", "note", "user__username"]
    date_hierarchy = "created_at"
    fields = ["created_at", "proposal", "user", "action", "note", "before", "after", "task"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ReviewEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ReviewEvent | None = None) -> bool:
        return False
