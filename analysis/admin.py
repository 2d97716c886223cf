from collections.abc import Callable

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from analysis.models import AnalysisRun, Batch
from analysis.selectors import RunToClose, can_operate_run, runs_to_close
from analysis.services import cancel_run, close_run, retry_failed_batches
from projects import access
from tasktracker.exceptions import DomainError
from tasktracker.types import AuthedRequest

# Runs and batches belong to the pipeline: they are started through `start_run` and
# every counter is written by the pipeline services, so the admin only shows them.

BATCH_FIELDS = (
    "index",
    "status",
    "attempts",
    "token_count",
    "message_count",
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
    "llm_seconds",
    "cost",
    "error",
    "started_at",
    "finished_at",
)


class BatchMessageCountMixin:
    @admin.display(description="Messages")
    def message_count(self, obj: Batch) -> int:
        return len(obj.message_ids)


class BatchInline(BatchMessageCountMixin, admin.TabularInline):
    model = Batch
    fields = BATCH_FIELDS
    readonly_fields = BATCH_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: AnalysisRun | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AnalysisRun | None = None) -> bool:
        return False


@admin.register(AnalysisRun)
class AnalysisRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "window",
        "agent",
        "trigger",
        "progress",
        "proposals_created",
        "cost",
        "created_at",
    ]
    list_filter = ["status", "trigger", ("assignment__agent", admin.RelatedOnlyFieldListFilter), "projects"]
    list_select_related = ["assignment__agent", "assignment__task_config"]
    search_fields = ["id__exact", "error"]
    date_hierarchy = "created_at"
    actions = ["cancel_runs", "retry_failed", "close_runs"]
    change_list_template = "admin/analysis/analysisrun/change_list.html"

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request: AuthedRequest, queryset: QuerySet[AnalysisRun]) -> None:
        self._apply(request, queryset, lambda run: cancel_run(run=run, user=request.user), "cancelled")

    @admin.action(description="Retry the failed batches of the selected runs")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[AnalysisRun]) -> None:
        self._apply(request, queryset, lambda run: retry_failed_batches(run=run), "queued again")

    @admin.action(description="Close the selected runs…")
    def close_runs(self, request: HttpRequest, queryset: QuerySet[AnalysisRun]) -> TemplateResponse | None:
        """Like `delete_selected`: the first request lists the runs with what closing each
        means, or why it cannot close; the confirmation (`post`) closes them through
        `close_run`, which decides again, as the runs may have changed meanwhile."""
        if request.POST.get("post"):
            for run in queryset.prefetch_related("projects"):
                if not self._may_operate(request, run):
                    continue
                try:
                    closed = close_run(run_id=run.pk)
                except DomainError as exc:
                    self.message_user(request, exc.message, messages.ERROR)
                    continue
                figures = closed.review_stats
                self.message_user(
                    request,
                    f"Run {run.pk} closed: {figures['approved']} approved, {figures['rejected']} rejected, "
                    f"{figures['merged']} merged.",
                    messages.SUCCESS,
                )
            return None
        runs = [(run, self._close_refusal(request, run)) for run in runs_to_close(queryset)]
        context = {
            **self.admin_site.each_context(request),
            "title": "Close runs",
            "subtitle": None,
            "runs": runs,
            "closable": [run for run, refusal in runs if not refusal],
            "opts": self.opts,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/analysis/analysisrun/close_runs_confirmation.html", context)

    def _close_refusal(self, request: HttpRequest, run: RunToClose) -> str:
        """Why the confirmation page says `run` will not close ("" when it will), as
        `close_run` and the permission check would refuse it; they decide on confirmation."""
        if not can_operate_run(request.user, run):
            return "Only a lead of each of its projects may close it."
        if AnalysisRun.Status.CLOSED not in AnalysisRun.TRANSITIONS[run.status]:
            return f"It is {run.get_status_display().lower()}; only completed runs close."
        if run.pending_count:
            return (
                f"{run.pending_count} of its proposals still wait{'s' if run.pending_count == 1 else ''} "
                "for review; a run closes once all of them are reviewed."
            )
        return ""

    def _may_operate(self, request: HttpRequest, run: AnalysisRun) -> bool:
        if can_operate_run(request.user, run):
            return True
        self.message_user(request, f"Run {run.pk}: only a lead of each of its projects may.", messages.ERROR)
        return False

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[AnalysisRun],
        action: Callable[[AnalysisRun], object],
        done: str,
    ) -> None:
        succeeded = 0
        for run in queryset:
            if not self._may_operate(request, run):
                continue
            try:
                action(run)
                succeeded += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        if succeeded:
            self.message_user(request, f"{succeeded} run(s) {done}.", messages.SUCCESS)

    fieldsets = [
        (
            None,
            {
                "fields": [
                    "status",
                    "trigger",
                    "window_start",
                    "window_end",
                    "projects",
                    "chats",
                    "assignment",
                    "started_by",
                    "proposals_link",
                ]
            },
        ),
        (
            "Progress",
            {
                "fields": [
                    "messages_fetched",
                    "messages_kept",
                    "prefilter_stats",
                    "batches_total",
                    "batches_done",
                    "batches_failed",
                    "proposals_created",
                    "event_seq",
                ]
            },
        ),
        ("Usage", {"fields": ["llm_calls", "prompt_tokens", "completion_tokens", "llm_seconds", "cost"]}),
        ("Outcome", {"fields": ["error", "review_stats"]}),
        ("Configuration", {"fields": ["config_versions", "config_snapshot"], "classes": ["collapse"]}),
        ("Timestamps", {"fields": ["created_at", "started_at", "finished_at", "closed_at"]}),
    ]
    # Every field shown is read-only; `messages` is left out on purpose, as a run can
    # hold thousands of them (`messages_fetched` and `messages_kept` count them).
    readonly_fields = flatten_fieldsets(fieldsets)
    inlines = [BatchInline]
    # `get_absolute_url` points back into the admin; "View on site" would be a loop.
    view_on_site = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[AnalysisRun]:
        return access.scope(super().get_queryset(request), request.user, via="projects")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AnalysisRun | None = None) -> bool:
        return False

    @admin.display(description="Window", ordering="window_start")
    def window(self, obj: AnalysisRun) -> str:
        start = timezone.localtime(obj.window_start)
        end = timezone.localtime(obj.window_end)
        return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M}"

    @admin.display(description="Agent", ordering="assignment__agent__name")
    def agent(self, obj: AnalysisRun) -> str:
        return obj.assignment.agent.name

    @admin.display(description="Batches")
    def progress(self, obj: AnalysisRun) -> str:
        text = f"{obj.batches_done}/{obj.batches_total}"
        return f"{text} ({obj.batches_failed} failed)" if obj.batches_failed else text

    @admin.display(description="Proposals")
    def proposals_link(self, obj: AnalysisRun) -> SafeString:
        url = reverse("admin:proposals_taskproposal_changelist")
        return format_html(
            '<a href="{}?run__id__exact={}">{} proposals</a>', url, obj.pk, obj.proposals_created
        )


@admin.register(Batch)
class BatchAdmin(BatchMessageCountMixin, admin.ModelAdmin):
    list_display = [
        "run",
        "index",
        "status",
        "attempts",
        "token_count",
        "message_count",
        "llm_calls",
        "cost",
        "started_at",
        "finished_at",
    ]
    list_display_links = ["run", "index"]
    list_filter = ["status"]
    list_select_related = ["run"]
    search_fields = ["run__id__exact", "error"]
    fieldsets = [
        (None, {"fields": ["run", "index", "status", "attempts", "error", "started_at", "finished_at"]}),
        ("Messages", {"fields": ["token_count", "message_count", "message_ids"]}),
        ("Usage", {"fields": ["llm_calls", "prompt_tokens", "completion_tokens", "llm_seconds", "cost"]}),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        return access.scope(super().get_queryset(request), request.user, via="run__projects")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Batch | None = None) -> bool:
        return False
