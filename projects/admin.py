from typing import Any, Protocol, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Count, Model, Prefetch, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from projects import access
from projects.models import Project, ProjectConfig, ProjectMembership, Task, WebhookDelivery, WebhookEndpoint
from projects.services import (
    check_task_change,
    create_project,
    create_task,
    error_field,
    update_project,
    update_task,
)
from projects.webhooks import (
    check_webhook_endpoint,
    create_webhook_endpoint,
    delete_webhook_endpoint,
    redeliver,
    update_webhook_endpoint,
)
from sources import admin as sources_admin
from sources.models import Chat, Message, MessageEdit
from tasktracker.exceptions import DomainError
from tasktracker.types import AuthedRequest

# Every admin here shows the rows `projects.access` lets the user see (all of them for
# staff, who alone reach the admin; the rule is asked all the same, so that it holds for
# whoever may reach it one day).


def _user(request: HttpRequest) -> User:
    """The admin's user, signed in: `AdminSite.admin_view` lets only active staff in. The
    admin's hooks declare a plain `HttpRequest`, so the type checker is told here."""
    return cast(AuthedRequest, request).user


class RefusalsAsMessages(admin.ModelAdmin):
    """A service's refusal at save time (a taken name, a title it refuses) becomes an error
    message on the form's page, not a 500. The admin's change view is one transaction, so
    nothing it wrote before the refusal (a log entry, an inline) stays."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class TeamIsVersioned:
    """The team and the default assignee are part of a project's configuration: a change of
    either is a new version, made by `bump_config` from the project's configuration page
    (staff may edit any project's). The admin shows them and does not change them, so that
    no change escapes the version history."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


MEMBERSHIP_INLINE_FIELDS = ("user", "role", "created_at")


class ProjectMembershipInline(TeamIsVersioned, admin.TabularInline):
    model = ProjectMembership
    fields = MEMBERSHIP_INLINE_FIELDS
    readonly_fields = MEMBERSHIP_INLINE_FIELDS
    extra = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProjectMembership]:
        return super().get_queryset(request).select_related("user")


CONFIG_INLINE_FIELDS = ("version", "is_current", "language", "change_summary", "author", "created_at")


class ProjectConfigInline(admin.TabularInline):
    """The version history. Versions are immutable: a change is a new version made by
    `bump_config`, never an edit of a row, so the inline only lists them."""

    model = ProjectConfig
    fields = CONFIG_INLINE_FIELDS
    readonly_fields = CONFIG_INLINE_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProjectConfig]:
        return super().get_queryset(request).select_related("author")

    def has_add_permission(self, request: HttpRequest, obj: Project | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Project | None = None) -> bool:
        return False


class _AdminProject(Protocol):
    """A project as `ProjectAdmin.get_queryset` reads it: `member_count` is an annotation and
    `current_configs` a prefetch's `to_attr`, which the ORM's types do not know."""

    member_count: int
    current_configs: list[ProjectConfig]


@admin.register(Project)
class ProjectAdmin(RefusalsAsMessages):
    list_display = [
        "name",
        "slug",
        "is_active",
        "default_assignee",
        "current_version",
        "member_count",
        "created_at",
    ]
    list_filter = ["is_active"]
    list_select_related = ["default_assignee"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    autocomplete_fields = ["default_assignee"]
    readonly_fields = ["configuration", "created_at", "updated_at"]
    fields = ["name", "slug", "is_active", "default_assignee", "configuration", "created_at", "updated_at"]
    inlines = [ProjectMembershipInline, ProjectConfigInline]
    # `get_absolute_url` points back into the admin; "View on site" would be a loop.
    view_on_site = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Project]:
        current = ProjectConfig.objects.filter(is_current=True)
        return (
            access.scope(super().get_queryset(request), request.user, via="pk")
            .annotate(member_count=Count("memberships", distinct=True))
            .prefetch_related(Prefetch("configs", queryset=current, to_attr="current_configs"))
        )

    # The default assignee is part of the versioned configuration (it must be on the team),
    # set on the project's configuration page; a new project starts active, as from the API.
    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> list[str]:
        extra = ["default_assignee"] if obj is not None else ["default_assignee", "is_active"]
        return [*self.readonly_fields, *extra]

    def save_model(self, request: HttpRequest, obj: Project, form: ModelForm, change: bool) -> None:
        """A new project is made by `create_project`, as from the API and the New project
        page: its first version, with its creator as team lead. A change of the name, slug or
        switch goes through `update_project`, with the same checks."""
        if change:
            data = form.cleaned_data
            saved = update_project(
                project=obj,
                user=_user(request),
                name=data["name"],
                slug=data["slug"],
                is_active=data["is_active"],
            )
        else:
            saved = create_project(name=obj.name, slug=obj.slug, user=_user(request))
        # The admin goes on with `obj` (the log entry, the redirect): it becomes the saved row.
        vars(obj).update(vars(saved))

    @admin.display(description="Team and configuration")
    def configuration(self, obj: Project) -> str:
        if obj.pk is None:
            return "Set on the project's configuration page once the project is saved."
        return format_html(
            '<a href="{}">Edit keywords, team and default assignee</a>: each save is a new version.',
            reverse("projects:project-edit", args=[obj.slug]),
        )

    @admin.display(description="Members", ordering="member_count")
    def member_count(self, obj: _AdminProject) -> int:
        return obj.member_count

    @admin.display(description="Current config")
    def current_version(self, obj: _AdminProject) -> str:
        configs = obj.current_configs
        return configs[0].version if configs else self.get_empty_value_display()


@admin.register(ProjectMembership)
class ProjectMembershipAdmin(TeamIsVersioned, admin.ModelAdmin):
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role", "project"]
    list_select_related = ["user", "project"]
    search_fields = ["user__username", "user__email", "user__first_name", "user__last_name", "project__name"]
    autocomplete_fields = ["project", "user"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProjectMembership]:
        return access.scope(super().get_queryset(request), request.user)


@admin.register(ProjectConfig)
class ProjectConfigAdmin(admin.ModelAdmin):
    """Read-only: versions are created by `bump_config`, and a version never changes."""

    list_display = ["project", "version", "is_current", "language", "author", "created_at"]
    list_display_links = ["project", "version"]
    list_filter = ["is_current", "language", "project"]
    list_select_related = ["project", "author"]
    search_fields = ["project__name", "change_summary", "description"]
    date_hierarchy = "created_at"
    fieldsets = [
        (None, {"fields": ["project", "version", "is_current", "author", "change_summary", "created_at"]}),
        (
            "What the analysis reads",
            {"fields": ["description", "language", "chats", "batch_time_gap_minutes", "schedule"]},
        ),
        (
            "What the analysis looks for",
            {"fields": ["keywords", "exclude_keywords", "glossary", "components", "priority_rules"]},
        ),
        ("Team snapshot", {"fields": ["team", "default_assignee_id_snapshot"]}),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProjectConfig]:
        return access.scope(super().get_queryset(request), request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ProjectConfig | None = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(RefusalsAsMessages):
    list_display = [
        "title",
        "project",
        "assignee",
        "status",
        "priority",
        "category",
        "due_date",
        "created_at",
    ]
    list_filter = ["status", "priority", "category", "project"]
    list_select_related = ["project", "assignee"]
    search_fields = ["title", "description"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["project", "assignee"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    fields = [
        "project",
        "title",
        "description",
        "assignee",
        "status",
        "priority",
        "category",
        "tags",
        "due_date",
        "created_by",
        "created_at",
        "updated_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        return access.scope(super().get_queryset(request), request.user)

    def has_change_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        allowed = obj is None or access.can(request.user, obj.project_id, access.Action.CHANGE_TASKS)
        return allowed and super().has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> list[str]:
        # A new task is open (`create_task`); a saved one stays in its project, whose team
        # and webhooks its history belongs to.
        return [*self.readonly_fields, "status" if obj is None else "project"]

    def get_form(
        self, request: HttpRequest, obj: Task | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        form = super().get_form(request, obj, change, **kwargs)
        return type("TaskAdminForm", (TaskChangeCheck, form), {"request": request})

    def save_model(self, request: HttpRequest, obj: Task, form: ModelForm, change: bool) -> None:
        """A new task is made by `create_task` (who may, a title, a known priority and
        category), as an approval makes one; a change goes through `update_task` (the
        transition and team checks, the `task.status_changed` webhook, the same checks of
        its other fields)."""
        if not change:
            data = form.cleaned_data
            saved = create_task(
                project=data["project"],
                title=data["title"],
                created_by=_user(request),
                description=data.get("description", ""),
                assignee=data.get("assignee"),
                priority=data.get("priority", Task.Priority.MEDIUM),
                category=data.get("category", Task.Category.FEATURE),
                tags=data.get("tags") or [],
                due_date=data.get("due_date"),
            )
            vars(obj).update(vars(saved))
            return
        changed = {name: form.cleaned_data[name] for name in form.changed_data}
        if changed:
            vars(obj).update(vars(update_task(task=obj, user=_user(request), **changed)))


# What a task's team changes through `update_task`, in the admin too.
TASK_MOVES = ("status", "assignee")


class TaskChangeCheck(ModelForm):
    """The admin's task form refuses, as a form error, a move or an assignee that
    `update_task` would refuse: the rule is `check_task_change`'s, asked here."""

    request: AuthedRequest

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        task = self.instance
        if task.pk is None:
            return cleaned
        moved = {
            name: cleaned[name]
            for name in ("status", "assignee")
            if name in self.changed_data and name in cleaned
        }
        if moved:
            stored = Task.objects.select_related("project").get(pk=task.pk)
            try:
                check_task_change(task=stored, user=self.request.user, **moved)
            except DomainError as exc:
                raise ValidationError(exc.message) from exc
        return cleaned


class WebhookEndpointForm(ModelForm):
    """The admin refuses, next to its field, what the API would refuse (a URL, an event):
    the rule is `check_webhook_endpoint`'s, asked here; `WebhookEndpointAdmin.save_model`
    then saves through the same services as the API."""

    request: AuthedRequest

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "events" in self.fields:
            self.fields["events"].required = False  # empty: all events

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if "project" not in cleaned or "url" not in cleaned:
            return cleaned  # the field's own error is shown already
        try:
            cleaned["events"] = check_webhook_endpoint(
                user=self.request.user,
                project=cleaned["project"],
                url=cleaned["url"],
                events=cleaned.get("events") or [],
                endpoint=WebhookEndpoint.objects.get(pk=self.instance.pk) if self.instance.pk else None,
            )
        except DomainError as exc:
            field = error_field(exc)
            self.add_error(
                field if field in self.fields else None, ValidationError(exc.message, code=exc.code)
            )
        return cleaned


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "project", "events", "is_active", "created_at"]
    list_filter = ["is_active", "project"]
    list_select_related = ["project"]
    search_fields = ["url", "project__name"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEndpoint]:
        return access.scope(super().get_queryset(request), request.user, access.Action.CONFIGURE)

    def get_form(
        self, request: HttpRequest, obj: WebhookEndpoint | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        form = super().get_form(request, obj, change, **kwargs)
        return type("WebhookEndpointAdminForm", (form,), {"request": request})

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: ModelForm, change: bool) -> None:
        """Saved by `create_webhook_endpoint` or `update_webhook_endpoint`, as from the API;
        `obj` is then the row saved."""
        data = form.cleaned_data
        fields = {
            name: data[name] for name in ("project", "url", "events", "is_active", "secret") if name in data
        }
        if change:
            saved = update_webhook_endpoint(endpoint=obj, user=_user(request), **fields)
        else:
            saved = create_webhook_endpoint(user=_user(request), **fields)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        delete_webhook_endpoint(endpoint=obj, user=_user(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            delete_webhook_endpoint(endpoint=endpoint, user=_user(request))


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "event",
        "endpoint",
        "status",
        "attempts",
        "response_status",
        "created_at",
        "delivered_at",
    ]
    list_filter = ["status", "event"]
    list_select_related = ["endpoint__project"]
    search_fields = ["endpoint__url", "error"]
    readonly_fields = [
        "endpoint",
        "event",
        "payload",
        "status",
        "attempts",
        "response_status",
        "error",
        "created_at",
        "delivered_at",
    ]
    actions = ["send_again"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        return access.scope(
            super().get_queryset(request), request.user, access.Action.CONFIGURE, via="endpoint__project"
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False  # a log: written by the deliveries only

    @admin.action(description="Send the selected deliveries again")
    def send_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        count = redeliver(delivery_ids=selected)
        self.message_user(request, f"{count} deliveries queued again.")
        if len(selected) > count:
            self.message_user(
                request,
                f"{len(selected) - count} still pending were left to their task, which is sending "
                "them or will retry them.",
                messages.WARNING,
            )


# The `sources` app's chats and messages, registered here: who sees a chat depends on the
# projects that read it (`projects.access`), and `sources` imports no other app.


@admin.register(Chat)
class ChatAdmin(sources_admin.ChatAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet[Chat]:
        return access.visible_chats(request.user, super().get_queryset(request))

    def has_change_permission(self, request: HttpRequest, obj: Chat | None = None) -> bool:
        return access.can_change_chats(request.user) and super().has_change_permission(request, obj)


@admin.register(Message)
class MessageAdmin(sources_admin.MessageAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return access.visible_messages(request.user, super().get_queryset(request))


@admin.register(MessageEdit)
class MessageEditAdmin(sources_admin.MessageEditAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet[MessageEdit]:
        return access.visible_messages(request.user, super().get_queryset(request), via="message__chat")
