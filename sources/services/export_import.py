"""The Telegram Desktop export import: streamed, written in committed chunks by a thread."""

import gc
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import ijson
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from sources.models import Chat
from sources.services.chats import get_or_create_chat
from sources.services.upsert import MessageData, UpsertCounts, upsert_messages
from tasktracker.exceptions import DomainError

# Messages written per transaction by the export import: a failure mid-file leaves every
# earlier chunk committed, and a rerun goes over them idempotently. Ten thousand, not one:
# each chunk costs round trips (lookup, COPY, commit) that the reading thread cannot hide,
# and two chunks are alive at once (one read, one written), about 30 MB each.
IMPORT_CHUNK_SIZE = 10_000

# Where Telegram Desktop puts a chat in its two export shapes: a single-chat export is the
# chat itself; a full-account export lists chats under `chats` (and `left_chats`).
_CHAT_PREFIXES = ("", "chats.list.item", "left_chats.list.item")
_MESSAGES_ARRAY = {f"{p}.messages" if p else "messages": p for p in _CHAT_PREFIXES}
_MESSAGE_ITEM = {f"{p}.messages.item" if p else "messages.item": p for p in _CHAT_PREFIXES}
_HEADER_FIELDS = {(f"{p}.{key}" if p else key): key for p in _CHAT_PREFIXES for key in ("name", "type", "id")}
_SCALAR_EVENTS = frozenset({"string", "number", "boolean", "null"})
# How far into a file the header of a single-chat export is looked for before its messages.
_SNIFF_BYTES = 1 << 20

_EXPORT_CHAT_TYPES = {
    "personal_chat": Chat.Type.PRIVATE,
    "bot_chat": Chat.Type.PRIVATE,
    "saved_messages": Chat.Type.PRIVATE,
    "private_group": Chat.Type.GROUP,
    "private_supergroup": Chat.Type.SUPERGROUP,
    "public_supergroup": Chat.Type.SUPERGROUP,
    "private_channel": Chat.Type.CHANNEL,
    "public_channel": Chat.Type.CHANNEL,
}
_PEER_ID = re.compile(r"^[a-z_]*(\d+)$")
# Bot API ids of supergroups and channels are -100 followed by the MTProto id.
_CHANNEL_ID_OFFSET = 1_000_000_000_000


@dataclass
class ImportResult:
    """What an export import did. `skipped` counts messages not stored, by reason."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    chats: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def messages_read(self) -> int:
        return self.created + self.updated + self.unchanged + self.skipped_total

    def add(self, counts: UpsertCounts) -> None:
        self.created += counts.created
        self.updated += counts.updated
        self.unchanged += counts.unchanged

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def bot_api_chat_id(*, export_id: int, chat_type: str) -> int:
    """The id the Bot API (and so the webhook) gives the chat an export calls `export_id`."""
    if export_id < 0:
        return export_id
    if chat_type in (Chat.Type.SUPERGROUP, Chat.Type.CHANNEL):
        return -(_CHANNEL_ID_OFFSET + export_id)
    if chat_type == Chat.Type.GROUP:
        return -export_id
    return export_id


def chat_type_from_export(export_type: str) -> str:
    if export_type in _EXPORT_CHAT_TYPES:
        return _EXPORT_CHAT_TYPES[export_type]
    # Types added by later Telegram versions: guess from the name rather than refuse the file.
    for marker, chat_type in (
        ("channel", Chat.Type.CHANNEL),
        ("supergroup", Chat.Type.SUPERGROUP),
        ("group", Chat.Type.GROUP),
    ):
        if marker in export_type:
            return chat_type
    return Chat.Type.PRIVATE


def export_text(value: Any) -> str:
    """The plain text of an export's `text`: a string, or a list of strings and entity
    objects (`{"type": "bold", "text": "..."}`) whose texts join into it."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join([part if isinstance(part, str) else export_text(part) for part in value])
    if isinstance(value, dict):
        return export_text(value.get("text", ""))
    return ""


def _export_time(message: dict[str, Any], unix_key: str, local_key: str) -> datetime | None:
    unix = message.get(unix_key)
    if unix not in (None, ""):
        try:
            return datetime.fromtimestamp(int(unix), tz=UTC)
        except (TypeError, ValueError, OverflowError):
            return None
    # Exports older than 2021 have only the exporting machine's local time; the best
    # reading of it is this installation's time zone.
    local = message.get(local_key)
    parsed = parse_datetime(local) if isinstance(local, str) else None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


def _peer_id(value: Any) -> int | None:
    match = _PEER_ID.match(value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def message_from_export(message: dict[str, Any]) -> MessageData | str:
    """A Telegram Desktop export message as `MessageData`, or the reason it is skipped."""
    kind = message.get("type", "message")
    if kind != "message":
        return "service" if kind == "service" else "unsupported_type"
    telegram_id = message.get("id")
    sent_at = _export_time(message, "date_unixtime", "date")
    # `type() is int`: JSON's true and false are ints to isinstance.
    if type(telegram_id) is not int or sent_at is None:
        return "invalid"
    text = export_text(message["text"]) if "text" in message else export_text(message.get("text_entities"))
    if not text:
        poll = message.get("poll")
        if isinstance(poll, dict):
            text = export_text(poll.get("question", ""))
    reply_to = message.get("reply_to_message_id")
    # A reply to a message of another chat carries that chat's id; the id alone would
    # point at an unrelated message of this one.
    if not isinstance(reply_to, int) or "reply_to_peer_id" in message:
        reply_to = None
    # `text_entities` repeats `text`; dropping it keeps a large export's raw copies half the size.
    raw = dict(message)
    raw.pop("text_entities", None)
    return MessageData(
        telegram_id=telegram_id,
        sent_at=sent_at,
        text=text,
        author_id=_peer_id(message.get("from_id")),
        author_name=message.get("from") or "",
        edited_at=_export_time(message, "edited_unixtime", "edited"),
        reply_to_telegram_id=reply_to,
        forwarded_from=message.get("forwarded_from") or "",
        raw=raw,
    )


class _ChatImport:
    """One chat of an export being imported: created at its first write, so that a file
    cut short before its first chunk leaves nothing behind."""

    def __init__(self, *, header: dict[str, Any], selected_id: int | None, result: ImportResult) -> None:
        export_id = header.get("id")
        if not isinstance(export_id, int) or isinstance(export_id, bool):
            raise DomainError(
                "The export names no chat id before the chat's messages, so they cannot be attributed.",
                code="export_no_chat_id",
            )
        self.type = chat_type_from_export(str(header.get("type") or ""))
        self.telegram_id = bot_api_chat_id(export_id=export_id, chat_type=self.type)
        self.title = str(header.get("name") or "")
        self.selected = selected_id is None or selected_id in (export_id, self.telegram_id)
        self.result = result
        self.chat: Chat | None = None
        self.pending: list[MessageData] = []

    def add(self, message: Any) -> None:
        if not self.selected:
            self.result.skip("other_chat")
            return
        data = message_from_export(message) if isinstance(message, dict) else "invalid"
        if isinstance(data, str):
            self.result.skip(data)
            return
        self.pending.append(data)

    def flush(self, writer: "_ChunkWriter") -> None:
        """Hand the pending messages, if any, to `writer`: one transaction of their own."""
        if not self.selected or not self.pending:
            return
        writer.write(chat_import=self, messages=self.pending)
        self.pending = []

    def write(self, messages: list[MessageData]) -> UpsertCounts:
        return upsert_messages(chat=self.ensure_chat(), messages=messages)

    def ensure_chat(self) -> Chat:
        if self.chat is None:
            self.chat = get_or_create_chat(telegram_id=self.telegram_id, title=self.title, type=self.type)
        return self.chat


class _ChunkWriter:
    """Writes an export's chunks in a thread of its own while the caller's thread reads the
    next one: the server inserts and commits chunk N (the COPY's end, the deferred foreign
    key checks, the WAL flush) while chunk N+1 is parsed, on the machine's other CPU.

    It writes on the caller's connection, shared with the thread, so each chunk is still a
    transaction of its own, or a savepoint of the caller's transaction when there is one.
    At most one chunk is in flight, and the caller's thread touches the connection (and
    runs `progress`) only once `wait` has returned: the two threads never use it at once.
    """

    def __init__(self, *, result: ImportResult, progress: Callable[[ImportResult], None] | None) -> None:
        self.result = result
        self.progress = progress
        self.connection = connections[DEFAULT_DB_ALIAS]
        self.executor: ThreadPoolExecutor | None = None
        self.in_flight: Future[UpsertCounts] | None = None

    def write(self, *, chat_import: _ChatImport, messages: list[MessageData]) -> None:
        self.wait()
        if self.executor is None:
            self.connection.inc_thread_sharing()
            self.executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="export-import", initializer=self._use_shared_connection
            )
        self.in_flight = self.executor.submit(chat_import.write, messages)

    def _use_shared_connection(self) -> None:
        connections[DEFAULT_DB_ALIAS] = self.connection

    def wait(self) -> None:
        """Wait until the chunk in flight, if any, is committed; count it, report progress."""
        if self.in_flight is None:
            return
        in_flight, self.in_flight = self.in_flight, None
        self.result.add(in_flight.result())
        if self.progress is not None:
            self.progress(self.result)

    def close(self) -> None:
        """Wait for the chunk in flight, also when reading failed after it (it was read
        whole, so it is committed like the chunks before it), and stop the thread."""
        try:
            self.wait()
        finally:
            if self.executor is not None:
                self.executor.shutdown()
                self.connection.dec_thread_sharing()
                self.executor = None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off during an import (it is process-wide): the message
    objects read from JSON form no cycles, yet with a chunk of them alive each collection
    walks them all again, a tenth of the import's time. On again afterwards."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Rewindable:
    """A binary stream read once, whose head can be read again after `rewind`: the shape of
    an export is sniffed from its first bytes, then the file is read from its start, be it
    seekable (a file) or not (an upload, a pipe)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.head = bytearray()
        self.replaying: memoryview | None = None

    def read(self, size: int = -1) -> bytes:
        if self.replaying:
            part = self.replaying if size < 0 else self.replaying[:size]
            self.replaying = self.replaying[len(part) :]
            return bytes(part) + (self._read_source(-1) if size < 0 else b"")
        data = self._read_source(size)
        if self.replaying is None:
            self.head += data
        return data

    def rewind(self) -> None:
        self.replaying = memoryview(bytes(self.head))
        self.head = bytearray()

    def _read_source(self, size: int) -> bytes:
        data = self.source.read(size)
        # A text-mode file: ijson would encode it as UTF-8 the same way, with a warning.
        return data.encode() if isinstance(data, str) else data


def _single_chat_header(source: _Rewindable) -> dict[str, Any] | None:
    """The header (name, type, id) of a single-chat export, read up to the start of its
    messages. None for any other file (a full-account export, or something that is not an
    export, which the event walk then reads or refuses as before); a file with messages at
    its top level is taken to hold no other chats, as Telegram Desktop writes it."""
    header: dict[str, Any] = {}
    try:
        for prefix, event, value in ijson.parse(source, use_float=True):
            if event == "start_array" and prefix == "messages":
                return header
            if event == "map_key" and prefix == "" and value in ("chats", "left_chats"):
                return None
            if event in _SCALAR_EVENTS and prefix in ("name", "type", "id"):
                header[prefix] = value
            if len(source.head) > _SNIFF_BYTES:
                return None
    except (ijson.JSONError, UnicodeDecodeError):
        pass
    return None


class _ExportStream:
    """Reads an export one message object at a time, chat by chat."""

    def __init__(
        self,
        *,
        selected_id: int | None,
        result: ImportResult,
        progress: Callable[[ImportResult], None] | None,
    ) -> None:
        self.selected_id = selected_id
        self.result = result
        self.writer = _ChunkWriter(result=result, progress=progress)
        self.started = False
        self.found_messages = False
        self.found_selected = False

    def run(self, source: IO[bytes]) -> None:
        rewindable = _Rewindable(source)
        header = _single_chat_header(rewindable)
        rewindable.rewind()
        try:
            if header is None:
                self._walk(rewindable)
            else:
                self._read_single_chat(rewindable, header)
        finally:
            self.writer.close()

    def _read_single_chat(self, source: _Rewindable, header: dict[str, Any]) -> None:
        """A single-chat export: its message objects built by ijson's C backend, twice as
        fast as the event walk with a Python builder."""
        self.started = True
        current = self._start_chat(header)
        messages: Iterator[Any] = ijson.items(source, "messages.item", use_float=True)
        for message in messages:
            current.add(message)
            if len(current.pending) >= IMPORT_CHUNK_SIZE:
                self._flush(current)
        self._end_chat(current)

    def _walk(self, source: _Rewindable) -> None:
        """Any shape of export, a full-account one included: its parse events, with each
        message object built by a Python `ObjectBuilder`."""
        header: dict[str, Any] = {}
        current: _ChatImport | None = None
        builder: ijson.ObjectBuilder | None = None
        item_prefix = ""
        # Floats, not Decimals: the raw copy of each message goes into a JSONField.
        for prefix, event, value in ijson.parse(source, use_float=True):
            self.started = True
            if current is not None and builder is not None:
                builder.event(event, value)
                if event == "end_map" and prefix == item_prefix:
                    current.add(builder.value)
                    builder = None
                    if len(current.pending) >= IMPORT_CHUNK_SIZE:
                        self._flush(current)
                continue
            if current is not None and prefix in _MESSAGE_ITEM:
                if event == "start_map":
                    builder = ijson.ObjectBuilder()
                    builder.event(event, value)
                    item_prefix = prefix
                elif event in _SCALAR_EVENTS:
                    current.add(value)
                continue
            if event in _SCALAR_EVENTS and prefix in _HEADER_FIELDS:
                header[_HEADER_FIELDS[prefix]] = value
            elif event == "start_map" and prefix in _CHAT_PREFIXES:
                header = {}
            elif event == "start_array" and prefix in _MESSAGES_ARRAY:
                current = self._start_chat(header)
            elif event == "end_array" and prefix in _MESSAGES_ARRAY and current is not None:
                self._end_chat(current)
                current = None

    def _start_chat(self, header: dict[str, Any]) -> _ChatImport:
        self.found_messages = True
        chat_import = _ChatImport(header=header, selected_id=self.selected_id, result=self.result)
        self.found_selected = self.found_selected or chat_import.selected
        return chat_import

    def _end_chat(self, chat_import: _ChatImport) -> None:
        self._flush(chat_import)
        if chat_import.selected:
            # A chat without messages is still registered, so the webhook finds it.
            self.writer.wait()
            chat_import.ensure_chat()
            self.result.chats += 1

    def _flush(self, chat_import: _ChatImport) -> None:
        chat_import.flush(self.writer)


def import_telegram_export(
    *,
    path_or_file: str | Path | IO[bytes],
    chat_telegram_id: int | None = None,
    progress: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import a Telegram Desktop JSON export (one chat, or a whole account), streaming it.

    The file is streamed with ijson, one message object at a time (built in C for a
    single-chat export, from parse events for other shapes), so memory stays flat for a
    gigabyte export. Messages are written in chunks of `IMPORT_CHUNK_SIZE`, each in its
    own transaction (so this service is deliberately not atomic), by a thread of the
    import on the caller's connection while the next chunk is read: a failure mid-file
    keeps the chunks already read whole, and a rerun continues idempotently. A file that
    is not an export writes nothing and raises `DomainError`. The cyclic garbage collector
    is off meanwhile (see `_collector_paused`).

    `chat_telegram_id`, as the export gives it or in Bot API form, imports that chat
    only; the others' messages are counted as skipped. `progress` is called with the
    running result after each chunk is committed, in the caller's thread, at a moment
    when the connection is free: it may query the database.
    """
    result = ImportResult()
    name = getattr(path_or_file, "name", None) or str(path_or_file)
    stream = _ExportStream(selected_id=chat_telegram_id, result=result, progress=progress)
    with ExitStack() as stack:
        if isinstance(path_or_file, str | Path):
            try:
                source: IO[bytes] = stack.enter_context(Path(path_or_file).open("rb"))
            except OSError as exc:
                raise DomainError(f"Cannot read {name}: {exc.strerror}.", code="export_unreadable") from exc
        else:
            source = path_or_file
        try:
            with _collector_paused():
                stream.run(source)
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            if not stream.started:
                raise DomainError(
                    f"{name} is not a Telegram Desktop export: it is not JSON.", code="export_not_json"
                ) from exc
            raise DomainError(
                f"{name} is cut short or malformed after {result.messages_read} messages; the chunks "
                "written before stay, and a rerun of the complete file continues from them.",
                code="export_truncated",
            ) from exc
    if not stream.found_messages:
        raise DomainError(
            f"{name} is not a Telegram Desktop export: it has no list of messages.", code="export_no_messages"
        )
    if chat_telegram_id is not None and not stream.found_selected:
        raise DomainError(f"The export has no chat with id {chat_telegram_id}.", code="export_chat_not_found")
    return result
