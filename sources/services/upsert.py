"""`upsert_messages`, where every ingestion path ends, and the integrations' bulk ingest."""

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Required, TypedDict

import orjson
from django.db import IntegrityError, connection, transaction
from django.db.models import Field
from django.utils import timezone
from psycopg.types.json import set_json_dumps

from sources.models import Chat, Message, MessageEdit
from sources.services.chats import get_or_create_chat
from sources.services.storable import clean_json, has_dumped_nul, storable_json, strip_nul
from tasktracker.exceptions import DomainError

# The columns COPY writes, in order (`created_at` and `updated_at` are set explicitly).
_COPY_FIELDS = ("chat", *Message.TELEGRAM_FIELDS, "raw", "created_at", "updated_at")
# orjson leaves to `_dump_raw`'s fallback what json.dumps would write differently or refuse.
_ORJSON_STRICT = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# Message's UniqueConstraint on (chat, telegram_id).
_UNIQUE_MESSAGE_CONSTRAINT = "message_unique_per_chat"
# The text fields of `MessageData`, whose NUL characters `upsert_messages` drops.
_TEXT_FIELDS: Final = ("text", "author_name", "forwarded_from")


class MessageData(TypedDict, total=False):
    """One message in the shape `upsert_messages` writes, whatever its source."""

    telegram_id: Required[int]
    sent_at: Required[datetime]
    text: str
    author_id: int | None
    author_name: str
    edited_at: datetime | None
    reply_to_telegram_id: int | None
    forwarded_from: str
    raw: dict[str, Any]


@dataclass
class UpsertCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@transaction.atomic
def upsert_messages(*, chat: Chat, messages: list[MessageData]) -> UpsertCounts:
    """Store a chunk of messages of one chat in one transaction, idempotently.

    New messages are inserted in bulk. A stored message whose text or edit time differs
    is updated and its previous text recorded as a `MessageEdit`, unless the incoming
    copy is older than the stored one (an old export imported after the webhook saw a
    later edit), which is counted unchanged rather than rolling the text back. A message
    stored by another path (the webhook) between the lookup and the insert is compared
    with that copy like any stored one, not counted as created.

    NUL characters are dropped from the text, the names and the raw copy (see
    `sources.services.storable`): a message is stored alike on both databases.
    """
    # The last copy of a message wins when a chunk holds it twice.
    incoming = {m["telegram_id"]: _without_nul(m) for m in messages}
    stored = _stored_versions(chat_id=chat.pk, telegram_ids=incoming.keys())
    new = [data for telegram_id, data in incoming.items() if telegram_id not in stored]
    while new:
        try:
            _insert_messages(chat_id=chat.pk, messages=new)
            break
        except IntegrityError as exc:
            # PostgreSQL's COPY met a message stored by another path since the lookup, and
            # the savepoint undid it. The rows that took the keys are committed, so a new
            # lookup sees them: each retry has fewer messages to insert.
            diag = getattr(exc.__cause__, "diag", None)
            if getattr(diag, "constraint_name", None) != _UNIQUE_MESSAGE_CONSTRAINT:
                raise
            raced = _stored_versions(chat_id=chat.pk, telegram_ids={m["telegram_id"] for m in new})
            if not raced:
                raise
            stored.update(raced)
            new = [data for data in new if data["telegram_id"] not in raced]
    counts = _update_changed(stored=stored, incoming=incoming)
    counts.created = len(new)
    return counts


def _without_nul(data: MessageData) -> MessageData:
    """`data` with its text fields' NULs dropped; `data` itself when it has none. Its raw
    copy is cleaned where it is written (`storable_json`, or `_dump_raw` on PostgreSQL's
    COPY, which serialises it anyway)."""
    # Spelled out rather than looped over `_TEXT_FIELDS`: this runs for every message of an
    # export, and the loop costs more than the three searches.
    if not (
        "\x00" in data.get("text", "")
        or "\x00" in data.get("author_name", "")
        or "\x00" in data.get("forwarded_from", "")
    ):
        return data
    clean = data.copy()
    for name in _TEXT_FIELDS:
        if name in data:
            clean[name] = strip_nul(data[name])
    return clean


def _insert_messages(*, chat_id: int, messages: list[MessageData]) -> None:
    """Insert messages not stored yet. On PostgreSQL by COPY, in a savepoint: when a
    message was stored meanwhile by another path, it raises `IntegrityError` having
    written nothing."""
    now = timezone.now()
    if connection.vendor != "postgresql":
        # SQLite runs every transaction IMMEDIATE (see settings): nothing can be stored
        # between the lookup and this insert, so no conflict is ignored here.
        Message.objects.bulk_create(
            [
                Message(
                    chat_id=chat_id,
                    **dict(zip(Message.TELEGRAM_FIELDS, _telegram_values(data), strict=True)),
                    raw=storable_json(data.get("raw", {})),
                    created_at=now,
                    updated_at=now,
                )
                for data in messages
            ],
            ignore_conflicts=True,
        )
        return
    quote_name = connection.ops.quote_name
    copied = [_copy_column(name) for name in _COPY_FIELDS]
    columns = ", ".join(quote_name(column) for column, _ in copied)
    # Binary: the text format escapes every quote and backslash of the text and the JSON,
    # at twice the cost.
    statement = f"COPY {quote_name(Message._meta.db_table)} ({columns}) FROM STDIN (FORMAT BINARY)"
    # Django's cursor has no COPY; psycopg's under it does.
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(statement) as copy,
    ):
        # `raw` encoded by orjson, for this cursor only: a third of json.dumps's time.
        set_json_dumps(_dump_raw, context=cursor.cursor)
        copy.set_types([type_name for _, type_name in copied])
        write_row = copy.write_row
        for data in messages:
            write_row((chat_id, *_telegram_values(data), data.get("raw", {}), now, now))


def _telegram_values(data: MessageData) -> tuple[Any, ...]:
    """A message's `Message.TELEGRAM_FIELDS` values, in that order, with their defaults."""
    return (
        data["telegram_id"],
        data.get("author_id"),
        data.get("author_name", "")[:255],
        data.get("text", ""),
        data["sent_at"],
        data.get("edited_at"),
        data.get("reply_to_telegram_id"),
        data.get("forwarded_from", "")[:255],
    )


def _copy_column(name: str) -> tuple[str, str]:
    """The column of a field of `Message` and its type's name without modifiers: psycopg
    knows "varchar", not "varchar(255)"."""
    field = Message._meta.get_field(name)
    # A concrete field (never the reverse side of a relation): it has a column and a type.
    assert isinstance(field, Field) and field.column is not None
    db_type = field.db_type(connection)
    assert db_type is not None
    return field.column, db_type.split("(")[0]


def _dump_raw(value: Any) -> bytes | str:
    """JSON for a `raw` copy: orjson's, or json.dumps's (as the JSONField writes it) for what
    orjson refuses or would write otherwise, such as an int beyond 64 bits, a key that is
    not a string, a str or int subclass, a datetime. Both give jsonb the same value. NULs
    are dropped first, as `storable_json` does on the other paths, when there are any:
    jsonb refuses them."""
    try:
        dumped = orjson.dumps(value, option=_ORJSON_STRICT)
    except orjson.JSONEncodeError:
        return json.dumps(clean_json(value))
    return orjson.dumps(clean_json(value), option=_ORJSON_STRICT) if has_dumped_nul(dumped) else dumped


def _update_changed(
    *, stored: dict[int, tuple[int, str, datetime | None]], incoming: dict[int, MessageData]
) -> UpsertCounts:
    """Update the stored messages whose incoming copy is newer, keeping their previous
    text as a `MessageEdit`; count the others unchanged."""
    counts = UpsertCounts()
    with_raw: list[Message] = []
    without_raw: list[Message] = []
    edits: list[MessageEdit] = []
    now = timezone.now()
    for telegram_id, (pk, stored_text, stored_edited_at) in stored.items():
        data = incoming[telegram_id]
        text = data.get("text", "")
        edited_at = data.get("edited_at")
        is_stale = stored_edited_at is not None and (edited_at is None or edited_at < stored_edited_at)
        if is_stale or (stored_text == text and stored_edited_at == edited_at):
            counts.unchanged += 1
            continue
        edits.append(
            MessageEdit(
                message_id=pk,
                previous_text=stored_text,
                previous_edited_at=stored_edited_at,
                edited_at=edited_at,
            )
        )
        if "raw" in data:
            raw = storable_json(data["raw"])
            with_raw.append(Message(pk=pk, text=text, edited_at=edited_at, raw=raw, updated_at=now))
        else:
            without_raw.append(Message(pk=pk, text=text, edited_at=edited_at, updated_at=now))
    if with_raw:
        Message.objects.bulk_update(with_raw, ["text", "edited_at", "raw", "updated_at"])
    if without_raw:
        Message.objects.bulk_update(without_raw, ["text", "edited_at", "updated_at"])
    MessageEdit.objects.bulk_create(edits)
    counts.updated = len(edits)
    return counts


def _stored_versions(
    *, chat_id: int, telegram_ids: Collection[int]
) -> dict[int, tuple[int, str, datetime | None]]:
    """The pk, text and edit time of the stored messages among `telegram_ids`."""
    if not telegram_ids:
        return {}
    # Unordered: the model's ordering makes the planner walk the (chat, sent_at) index.
    rows = Message.objects.filter(chat_id=chat_id).order_by()
    low, high = min(telegram_ids), max(telegram_ids)
    # An export's chunk is a dense run of ids: a range scan of the unique index costs a
    # tenth of an `IN` of 1,000 parameters, and the few extra rows it may read are dropped.
    if high - low < 2 * len(telegram_ids):
        rows = rows.filter(telegram_id__range=(low, high))
    else:
        rows = rows.filter(telegram_id__in=list(telegram_ids))
    return {
        telegram_id: (pk, text, edited_at)
        for telegram_id, pk, text, edited_at in rows.values_list("telegram_id", "pk", "text", "edited_at")
        if telegram_id in telegram_ids
    }


# At most this many messages per `ingest_messages` call (and so per API request): one
# transaction stays short, and a client's retry of a failed batch stays cheap.
BULK_MAX_MESSAGES = 1000


class ChatData(TypedDict, total=False):
    """A chat in the shape `get_or_create_chat` takes, as an integration sends it."""

    telegram_id: Required[int]
    type: Required[str]
    title: str
    username: str


@transaction.atomic
def ingest_messages(*, chat: ChatData, messages: list[MessageData]) -> UpsertCounts:
    """Store messages of one chat sent by an integration: the chat is got or created (a
    changed title written over the stored one) and the messages upserted, all in one
    transaction, so a failure writes nothing. Idempotent like `upsert_messages`.

    Raises `DomainError` for more than `BULK_MAX_MESSAGES` messages or a Telegram id given
    twice: unlike an export, where the last copy wins, a batch naming one message twice
    says two different things about it. The API validates both before calling.
    """
    if len(messages) > BULK_MAX_MESSAGES:
        raise DomainError(
            f"At most {BULK_MAX_MESSAGES} messages per batch; {len(messages)} were given.",
            code="too_many_messages",
        )
    ids = [m["telegram_id"] for m in messages]
    if len(set(ids)) != len(ids):
        raise DomainError("A batch names a Telegram message id twice.", code="duplicate_message")
    stored_chat = get_or_create_chat(
        telegram_id=chat["telegram_id"],
        title=chat.get("title", ""),
        type=chat["type"],
        username=chat.get("username", ""),
    )
    return upsert_messages(chat=stored_chat, messages=messages)
