"""The API pieces of the `sources` app: serializers and filters of chats and messages, and
the reading of a bulk ingestion request.

The views that serve them are `projects.chat_api`'s: who sees a chat depends on which
projects read it, and `sources` imports no other app (apps depend one way), so the
chats and messages API is mounted where `projects.access` can be asked.
"""

from datetime import datetime
from typing import Any

from django.core.validators import MaxLengthValidator, MinLengthValidator
from django.utils import timezone
from django_filters import rest_framework as filters
from rest_framework import serializers, status
from rest_framework.request import Request

from sources.models import Chat, Message, MessageEdit
from sources.services import BULK_MAX_MESSAGES
from tasktracker.api import IdFilter, help_texts
from tasktracker.exceptions import DomainError

# Telegram caps a message at 4096 characters and a caption at 1024; the headroom is for
# integrations bridging other chat tools. Longer text is refused, not cut.
BULK_MAX_TEXT_LENGTH = 10_000
# DRF parses the body without Django's DATA_UPLOAD_MAX_MEMORY_SIZE check, so the bulk
# endpoint bounds it itself: room for a full batch of long messages, not for abuse.
BULK_MAX_BODY_BYTES = 16 * 1024 * 1024
_BIGINT_MAX = 2**63 - 1
_BIGINT_MIN = -(2**63)


# Serializers


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 datetime that must carry its UTC offset. DRF would read a naive one in
    the server's time zone, shifting the messages of a client elsewhere by hours."""

    default_error_messages = {
        "naive": "Give the time zone, e.g. 2024-05-01T09:30:00Z or 2024-05-01T11:30:00+02:00.",
    }

    def enforce_timezone(self, value: datetime) -> datetime:
        # Also called on output, where values from the database are always aware.
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


class ChatSerializer(serializers.ModelSerializer):
    class Meta:
        model = Chat
        fields = ["id", "telegram_id", "title", "type", "username", "is_active", "created_at", "updated_at"]
        read_only_fields = fields
        extra_kwargs = help_texts(
            telegram_id="Telegram's id of the chat; negative for groups and channels.",
            title="The chat's title, from Telegram or set by staff; may be empty.",
            type="The kind of chat, as Telegram says.",
        )


class ChatUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(
        max_length=255,
        allow_blank=True,
        required=False,
        help_text="Kept until Telegram reports a new title for the chat.",
    )
    is_active = serializers.BooleanField(
        required=False, help_text="Off: the chat's messages are still stored, but runs skip it."
    )


class MessageEditSerializer(serializers.ModelSerializer):
    class Meta:
        model = MessageEdit
        fields = ["previous_text", "previous_edited_at", "edited_at", "recorded_at"]
        read_only_fields = fields
        extra_kwargs = help_texts(
            previous_text="The text the edit replaced.",
            previous_edited_at="When that text had been edited; null if it was the original text.",
            edited_at="When Telegram says the edit was made; null if it did not say.",
            recorded_at="When Tasktracker stored the edit.",
        )


class MessageSerializer(serializers.ModelSerializer):
    chat_title = serializers.CharField(source="chat.title", read_only=True, help_text="The chat's title.")
    link = serializers.CharField(read_only=True, help_text="t.me link to the message; empty where none.")

    class Meta:
        model = Message
        fields = ["id", "chat", "chat_title", *Message.TELEGRAM_FIELDS, "link", "created_at", "updated_at"]
        read_only_fields = fields
        extra_kwargs = help_texts(
            chat="The chat's id in Tasktracker.",
            telegram_id="Telegram's id of the message, unique within its chat.",
            author_id="Telegram's id of the sender (a user, or the chat of a channel post); null if unknown.",
            author_name="The sender's name as Telegram gave it; may be empty.",
            sent_at="When the message was sent.",
            edited_at="When the message was last edited; null if never.",
            reply_to_telegram_id="Telegram's id of the message this one replies to, in the same chat; null "
            "if not a reply.",
            forwarded_from="Who the message was forwarded from; empty if not forwarded.",
            created_at="When Tasktracker first stored the message.",
        )


class MessageDetailSerializer(MessageSerializer):
    edits = MessageEditSerializer(many=True, read_only=True, help_text="Earlier texts, oldest first.")

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "edits"]
        read_only_fields = fields


class ChatInSerializer(serializers.Serializer):
    telegram_id = serializers.IntegerField(
        min_value=_BIGINT_MIN, max_value=_BIGINT_MAX, help_text="The chat's Bot API id."
    )
    title = serializers.CharField(
        max_length=255, allow_blank=True, help_text="The chat's title; may be empty."
    )
    type = serializers.ChoiceField(choices=Chat.Type.choices, help_text="The kind of chat, as Telegram says.")
    username = serializers.RegexField(
        r"^[A-Za-z0-9_]*$",
        max_length=64,
        allow_blank=True,
        required=False,
        default="",
        help_text="Public username without the @, if the chat has one.",
        error_messages={"invalid": "Letters, digits and underscores only, without the @."},
    )


class MessageInSerializer(serializers.Serializer):
    telegram_id = serializers.IntegerField(
        min_value=1, max_value=_BIGINT_MAX, help_text="Telegram's message id, unique within the chat."
    )
    sent_at = AwareDateTimeField(help_text="ISO 8601 with a time zone.")
    text = serializers.CharField(
        max_length=BULK_MAX_TEXT_LENGTH,
        allow_blank=True,
        trim_whitespace=False,
        help_text=f"Text or caption, at most {BULK_MAX_TEXT_LENGTH} characters; empty for bare media. "
        "The message's whole current text: a different text with a later `edited_at` is an edit.",
    )
    author_id = serializers.IntegerField(
        min_value=_BIGINT_MIN,
        max_value=_BIGINT_MAX,
        allow_null=True,
        required=False,
        default=None,
        help_text="Telegram's id of the sender (a user, or the chat of a channel post); null if unknown.",
    )
    author_name = serializers.CharField(
        max_length=255, allow_blank=True, required=False, default="", help_text="The sender's name."
    )
    edited_at = AwareDateTimeField(
        allow_null=True, required=False, default=None, help_text="When last edited, if ever."
    )
    reply_to_telegram_id = serializers.IntegerField(
        min_value=1,
        max_value=_BIGINT_MAX,
        allow_null=True,
        required=False,
        default=None,
        help_text="Telegram's id of the message this one replies to, in the same chat; null if not a reply.",
    )
    forwarded_from = serializers.CharField(
        max_length=255,
        allow_blank=True,
        required=False,
        default="",
        help_text="Who the message was forwarded from; empty if not forwarded.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["edited_at"] is not None and attrs["edited_at"] < attrs["sent_at"]:
            raise serializers.ValidationError({"edited_at": "A message cannot be edited before it was sent."})
        return attrs


class MessageInListSerializer(serializers.ListSerializer):
    default_error_messages = {
        "empty": "Send at least one message.",
        "max_length": "At most {max_length} messages per request; send the rest in further requests.",
    }


class BulkMessagesSerializer(serializers.Serializer):
    chat = ChatInSerializer(help_text="Created on first sight; a new title is written over the stored one.")
    messages = MessageInListSerializer(
        child=MessageInSerializer(),
        allow_empty=False,
        max_length=BULK_MAX_MESSAGES,
        # Only for the schema's minItems and maxItems: the list checks both before its items.
        validators=[MinLengthValidator(1), MaxLengthValidator(BULK_MAX_MESSAGES)],
        help_text=f"1 to {BULK_MAX_MESSAGES} messages of the chat, each Telegram id once.",
    )

    def validate_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[int] = set()
        errors: list[dict[str, list[str]]] = []
        for message in messages:
            telegram_id = message["telegram_id"]
            duplicate = telegram_id in seen
            seen.add(telegram_id)
            errors.append({"telegram_id": [f"Message {telegram_id} is given twice."]} if duplicate else {})
        if any(errors):
            # One entry per message, like DRF's own list errors, so a client finds the culprits.
            raise serializers.ValidationError(errors)
        return messages


class IngestCountsSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Messages stored for the first time.")
    updated = serializers.IntegerField(help_text="Stored messages whose text changed; the old text is kept.")
    unchanged = serializers.IntegerField(help_text="Messages already stored as given (or given older).")


# Filters


class ChatFilter(filters.FilterSet):
    class Meta:
        model = Chat
        fields = ["is_active", "type"]


class MessageFilter(filters.FilterSet):
    chat = IdFilter(field_name="chat_id", help_text="The chat's id in Tasktracker.")
    chat_telegram_id = filters.NumberFilter(
        field_name="chat__telegram_id", help_text="The chat's Bot API id."
    )
    author_id = filters.NumberFilter(help_text="The author's Telegram user id.")
    sent_after = filters.IsoDateTimeFilter(
        field_name="sent_at", lookup_expr="gte", help_text="Sent at or after this time (ISO 8601)."
    )
    sent_before = filters.IsoDateTimeFilter(
        field_name="sent_at", lookup_expr="lt", help_text="Sent before this time (ISO 8601), exclusive."
    )

    class Meta:
        model = Message
        fields = ["chat", "chat_telegram_id", "author_id", "sent_after", "sent_before"]


# Reading a bulk request


def _content_length(request: Request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def read_bulk(request: Request) -> dict[str, Any]:
    """A bulk ingestion request's chat and messages, validated for `ingest_messages`. The
    body's size is checked before it is parsed; field errors are a 400."""
    if _content_length(request) > BULK_MAX_BODY_BYTES:
        raise DomainError(
            f"The body is over {BULK_MAX_BODY_BYTES} bytes; send fewer messages per request.",
            code="too_large",
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    payload = BulkMessagesSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    return payload.validated_data
