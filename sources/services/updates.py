"""Bot API updates, delivered by the webhook or read by long polling."""

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from sources.models import PollingState, TelegramUpdate
from sources.services.chats import get_or_create_chat
from sources.services.storable import clean_json
from sources.services.upsert import upsert_messages
from sources.telegram import ID_RANGE, MESSAGE_KINDS, read_message, update_kind
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
    seen and skipped. Raises `DomainError` for a payload that is not an update, before
    writing anything: no integer update_id of 64 bits, or a message kind whose message
    has the wrong shape (no chat, an id beyond 64 bits, a field of the wrong type...).
    """
    if not isinstance(data, dict) or type(data.get("update_id")) is not int:
        raise DomainError("An update must be a JSON object with an integer update_id.", code="invalid_update")
    if data["update_id"] not in ID_RANGE:
        raise DomainError("The update_id is not an integer of 64 bits.", code="invalid_update")
    # Python's json reads "\ud800" into a lone surrogate, which no database stores.
    data = clean_json(data)
    kind = update_kind(data)
    # Other kinds are not parsed at all: a newer Bot API shape of them must not fail us.
    fields = None
    if kind in MESSAGE_KINDS:
        try:
            fields = read_message(data)
        except ValueError as exc:
            raise DomainError(str(exc), code="invalid_update") from exc
    _, created = TelegramUpdate.objects.get_or_create(update_id=data["update_id"], defaults={"kind": kind})
    if not created:
        return UpdateOutcome(result="duplicate", kind=kind)
    if fields is None:
        return UpdateOutcome(result="skipped", kind=kind)
    chat_data, message_data = fields
    chat = get_or_create_chat(**chat_data)
    upsert_messages(chat=chat, messages=[message_data])
    return UpdateOutcome(result="stored", kind=kind, message_id=message_data["telegram_id"])


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
