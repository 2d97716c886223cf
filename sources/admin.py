import logging
from typing import Protocol

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.text import Truncator

from sources.forms import ExportUploadForm
from sources.management.commands.import_telegram_export import describe_import
from sources.models import Chat, Message, MessageEdit, PollingState, TelegramUpdate
from sources.services import ImportResult, get_or_create_chat, import_telegram_export, update_chat
from tasktracker.exceptions import DomainError

logger = logging.getLogger(__name__)

# Messages, their edits and the Bot API bookkeeping are written by the ingestion services
# only (idempotent on (chat, Telegram message id), edits recorded as `MessageEdit` rows):
# an edit in the admin would silently diverge from Telegram and lose that history, so
# these admins are view-only. Deleting stays possible, e.g. to remove a message that
# should never have been stored.
#
# `ChatAdmin`, `MessageAdmin` and `MessageEditAdmin` are registered by `projects.admin`,
# narrowed to the chats a user sees: that depends on which projects read a chat, which
# only `projects.access` knows, and `sources` imports no other app.


class _CountedChat(Protocol):
    """A chat as `ChatAdmin.get_queryset` reads it: `message_count` is an annotation, which
    the ORM's types do not know."""

    message_count: int


class ChatAdmin(admin.ModelAdmin):
    list_display = ["title", "telegram_id", "type", "username", "is_active", "message_count", "created_at"]
    list_display_links = ["title", "telegram_id"]
    list_editable = ["is_active"]
    list_filter = ["is_active", "type"]
    search_fields = ["title", "username", "telegram_id__exact"]
    readonly_fields = ["created_at", "updated_at"]
    fields = ["telegram_id", "title", "type", "username", "is_active", "created_at", "updated_at"]
    # Telegram's to change once the chat exists (`get_or_create_chat` writes what it reports).
    telegram_fields = ["telegram_id", "type", "username"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Chat]:
        return super().get_queryset(request).annotate(message_count=Count("messages"))

    def get_readonly_fields(self, request: HttpRequest, obj: Chat | None = None) -> list[str]:
        return [*self.telegram_fields, *self.readonly_fields] if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Chat, form: ModelForm, change: bool) -> None:
        """Through the services the API and the ingestion paths use, from the change form and
        the list's switches alike: a change by `update_chat` (the title and the switch; only
        what differs from the stored row is written), a new chat by `get_or_create_chat`."""
        changes = {
            name: form.cleaned_data[name] for name in ("title", "is_active") if name in form.cleaned_data
        }
        if change:
            # `obj` holds the form's values already; the service compares with the stored row.
            saved = update_chat(chat=Chat.objects.get(pk=obj.pk), **changes)
        else:
            saved = get_or_create_chat(
                telegram_id=obj.telegram_id, title=obj.title, type=obj.type, username=obj.username
            )
            if not obj.is_active:
                saved = update_chat(chat=saved, is_active=False)
        # The admin goes on with `obj` (the log entry, the redirect): it becomes the saved row.
        vars(obj).update(vars(saved))

    @admin.display(description="Messages", ordering="message_count")
    def message_count(self, obj: _CountedChat) -> int:
        return obj.message_count

    def get_urls(self) -> list[URLPattern]:
        # Before the default URLs: their `<path:object_id>/` would take `import-export/`.
        return [
            path(
                "import-export/",
                self.admin_site.admin_view(self.import_export_view),
                name="sources_chat_import_export",
            ),
            *super().get_urls(),
        ]

    def import_export_view(self, request: HttpRequest) -> HttpResponse:
        """Upload a Telegram Desktop export and import it with the same service as the
        `import_telegram_export` command.

        The import runs within the request. Django spools a large upload to a temporary
        file, and the service streams it from there, so memory stays flat; but the counts
        are only shown at the end, and the progress per chunk goes to the log.
        """
        # Importing writes messages, which no one can add by hand: the permission says who may.
        if not request.user.has_perm("sources.add_message"):
            raise PermissionDenied
        form = (
            ExportUploadForm(request.POST, request.FILES) if request.method == "POST" else ExportUploadForm()
        )
        if form.is_bound and form.is_valid():
            uploaded = form.cleaned_data["export"]

            def log_progress(result: ImportResult) -> None:
                logger.info(
                    "Importing %s: %d messages read, %d new, %d updated, %d unchanged, %d skipped",
                    uploaded.name,
                    result.messages_read,
                    result.created,
                    result.updated,
                    result.unchanged,
                    result.skipped_total,
                )

            try:
                with uploaded.open("rb") as source:
                    result = import_telegram_export(
                        path_or_file=source,
                        chat_telegram_id=form.cleaned_data["chat_id"],
                        progress=log_progress,
                    )
            except DomainError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, describe_import(result), messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:sources_chat_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import Telegram export",
            "form": form,
        }
        return TemplateResponse(request, "admin/sources/chat/import_export.html", context)


EDIT_INLINE_FIELDS = ("previous_text", "previous_edited_at", "edited_at", "recorded_at")


class MessageEditInline(admin.TabularInline):
    model = MessageEdit
    fields = EDIT_INLINE_FIELDS
    readonly_fields = EDIT_INLINE_FIELDS
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False


MESSAGE_FIELDS = ("chat", "link", *Message.TELEGRAM_FIELDS, "raw", "created_at", "updated_at")


class MessageAdmin(admin.ModelAdmin):
    list_display = ["chat", "telegram_id", "author_name", "short_text", "sent_at", "edited_at"]
    list_display_links = ["telegram_id", "short_text"]
    list_filter = ["chat__is_active", "chat"]
    list_select_related = ["chat"]
    search_fields = ["text", "author_name"]
    date_hierarchy = "sent_at"
    inlines = [MessageEditInline]
    fields = MESSAGE_FIELDS
    readonly_fields = MESSAGE_FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    @admin.display(description="Text")
    def short_text(self, obj: Message) -> str:
        return Truncator(obj.text).chars(80)

    @admin.display(description="Link on Telegram")
    def link(self, obj: Message) -> str:
        return obj.link or self.get_empty_value_display()


MESSAGE_EDIT_FIELDS = ("message", "previous_text", "previous_edited_at", "edited_at", "recorded_at")


class MessageEditAdmin(admin.ModelAdmin):
    list_display = ["__str__", "message", "short_previous_text", "edited_at", "recorded_at"]
    list_select_related = ["message"]
    list_filter = ["message__chat"]
    search_fields = ["previous_text", "message__text"]
    date_hierarchy = "recorded_at"
    fields = MESSAGE_EDIT_FIELDS
    readonly_fields = MESSAGE_EDIT_FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: MessageEdit | None = None) -> bool:
        return False

    @admin.display(description="Previous text")
    def short_previous_text(self, obj: MessageEdit) -> str:
        return Truncator(obj.previous_text).chars(80)


@admin.register(TelegramUpdate)
class TelegramUpdateAdmin(admin.ModelAdmin):
    list_display = ["update_id", "kind", "received_at"]
    list_filter = ["kind"]
    search_fields = ["update_id__exact"]
    date_hierarchy = "received_at"
    readonly_fields = ["update_id", "kind", "received_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TelegramUpdate | None = None) -> bool:
        return False


@admin.register(PollingState)
class PollingStateAdmin(admin.ModelAdmin):
    list_display = ["bot_id", "last_update_id", "updated_at"]
    search_fields = ["bot_id__exact"]
    readonly_fields = ["bot_id", "last_update_id", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PollingState | None = None) -> bool:
        return False
