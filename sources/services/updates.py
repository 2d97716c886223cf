"""Bot API updates, delivered by the webhook or read by long polling."""

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from sources.models import PollingState, TelegramUpdate
from sources.services.chats import get_or_create_chat
from sources.services.upsert import upsert_messages
from sources.telegram import MESSAGE_KINDS, chat_fields, message_fields, parse_update, update_kind
from tasktracker.exceptions import DomainError


@dataclass(frozen=True)
class UpdateOutcome:
    """What one Bot API update did: `stored` (created or updated a message), `duplicate`
    (this update_id was seen before) or `skipped` (a kind that carries no chat message)."""

    result: str
    kind: str
    message_id: int | None = None


@transaction.atomic
def ingest_update(*, data: dict[str, Any]) -> UpdateOutcome:
    """Store one Bot API update, once per update_id (Telegram retries deliveries for a day).

    Messages, channel posts and their edits go through `upsert_messages`; an edit updates
    the text and `edited_at` and keeps the previous text. Other kinds are remembered as
    seen and skipped. Raises `DomainError` for a payload that is not an update.
    """
    if not isinstance(data, dict) or type(data.get("update_id")) is not int:
        raise DomainError("An update must be a JSON object with an integer update_id.", code="invalid_update")
    kind = update_kind(data)
    # Other kinds are not parsed at all: a newer Bot API shape of them must not fail us.
    message = None
    if kind in MESSAGE_KINDS:
        try:
            message = parse_update(data).effective_message
        except ValueError as exc:
            raise DomainError(str(exc), code="invalid_update") from exc
    _, created = TelegramUpdate.objects.get_or_create(update_id=data["update_id"], defaults={"kind": kind})
    if not created:
        return UpdateOutcome(result="duplicate", kind=kind)
    if message is None:
        return UpdateOutcome(result="skipped", kind=kind)
    chat = get_or_create_chat(**chat_fields(message.chat))
    upsert_messages(chat=chat, messages=[message_fields(message, raw=data)])
    return UpdateOutcome(result="stored", kind=kind, message_id=message.message_id)


@transaction.atomic
def ingest_polled_update(*, bot_id: int, data: dict[str, Any]) -> UpdateOutcome:
    """Store one update read by long polling and move the bot's offset past it, together:
    a restart resumes after the last stored update, neither losing nor repeating one."""
    outcome = ingest_update(data=data)
    state, _ = PollingState.objects.select_for_update().get_or_create(bot_id=bot_id)
    if data["update_id"] > state.last_update_id:
        state.last_update_id = data["update_id"]
        state.save(update_fields=["last_update_id", "updated_at"])
    return outcome


def polling_offset(*, bot_id: int) -> int | None:
    """The getUpdates offset that confirms every update stored so far (None: start afresh)."""
    last = PollingState.objects.filter(bot_id=bot_id).values_list("last_update_id", flat=True).first()
    return last + 1 if last else None
