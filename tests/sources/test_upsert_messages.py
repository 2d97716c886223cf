"""`upsert_messages` and the export import's write path: the id-range lookup, updates,
PostgreSQL's COPY meeting a message stored meanwhile, chunks committed on their own by
the import's writing thread."""

import gc
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from sources.models import Chat, Message, MessageEdit
from sources.services import (
    IMPORT_CHUNK_SIZE,
    MessageData,
    export_import,
    import_telegram_export,
    upsert_messages,
)
from tasktracker.exceptions import DomainError
from tests.factories import ChatFactory
from tests.sources.test_import_export import chat_export, message

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def data(telegram_id: int, text: str = "", **extra: Any) -> MessageData:
    return MessageData(
        telegram_id=telegram_id,
        sent_at=T0 + timedelta(seconds=telegram_id),
        text=text or f"message {telegram_id}",
        **extra,
    )


def counts(result: Any) -> tuple[int, int, int]:
    return (result.created, result.updated, result.unchanged)


def test_a_stored_message_between_the_chunks_ids_is_left_alone() -> None:
    chat = ChatFactory()
    upsert_messages(chat=chat, messages=[data(i) for i in range(1, 6)])

    again = upsert_messages(
        chat=chat, messages=[data(1, "edited", edited_at=T0 + timedelta(hours=1)), data(5)]
    )

    assert counts(again) == (0, 1, 1)
    texts = dict(Message.objects.values_list("telegram_id", "text"))
    assert texts == {1: "edited", 2: "message 2", 3: "message 3", 4: "message 4", 5: "message 5"}
    assert list(MessageEdit.objects.values_list("previous_text", flat=True)) == ["message 1"]


def test_sparse_ids_are_matched_with_their_stored_copies() -> None:
    chat = ChatFactory()
    sparse = [data(3), data(1_000_000), data(7_000_000_000)]
    upsert_messages(chat=chat, messages=sparse)

    again = upsert_messages(chat=chat, messages=[*sparse, data(5_000)])

    assert counts(again) == (1, 0, 3)
    assert Message.objects.count() == 4


def test_an_edit_without_a_raw_copy_keeps_the_stored_one() -> None:
    chat = ChatFactory()
    upsert_messages(chat=chat, messages=[data(1, "draft", raw={"id": 1, "text": "draft"})])

    upsert_messages(chat=chat, messages=[data(1, "final", edited_at=T0 + timedelta(hours=1))])

    stored = Message.objects.get()
    assert (stored.text, stored.raw) == ("final", {"id": 1, "text": "draft"})


def test_a_raw_copy_is_stored_as_the_json_field_writes_it() -> None:
    chat = ChatFactory()
    raw = {"update_id": 1, "big": 2**70, 7: "key that is not a string", "text": 'naïve ✓ "q" \\'}

    upsert_messages(chat=chat, messages=[data(1, raw=raw)])

    expected = {"update_id": 1, "big": 2**70, "7": "key that is not a string", "text": 'naïve ✓ "q" \\'}
    assert Message.objects.get().raw == expected


def test_the_same_message_twice_in_a_chunk_is_stored_once_as_its_last_copy() -> None:
    chat = ChatFactory()

    result = upsert_messages(chat=chat, messages=[data(1, "first"), data(1, "second")])

    assert counts(result) == (1, 0, 0)
    assert Message.objects.get().text == "second"


def test_an_export_read_from_a_stream_that_cannot_seek_is_imported(tmp_path: Path) -> None:
    export = chat_export([message(i, f"message {i}", minutes=i) for i in range(1, 4)])

    class Pipe(io.RawIOBase):
        def __init__(self, content: bytes) -> None:
            self.content = io.BytesIO(content)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, buffer: Any) -> int:
            chunk = self.content.read(min(len(buffer), 7))  # a pipe hands over little at a time
            buffer[: len(chunk)] = chunk
            return len(chunk)

    result = import_telegram_export(path_or_file=Pipe(json.dumps(export, indent=1).encode()))

    assert (result.created, result.chats) == (3, 1)
    assert Chat.objects.get().telegram_id == -1001876543210


def test_a_chat_without_messages_after_one_with_messages_is_registered_too(tmp_path: Path) -> None:
    account = {
        "chats": {
            "list": [
                {
                    "name": "A",
                    "type": "private_group",
                    "id": 11,
                    "messages": [message(1, "a"), message(2, "b")],
                },
                {"name": "B", "type": "private_group", "id": 22, "messages": []},
            ]
        }
    }
    path = tmp_path / "result.json"
    path.write_text(json.dumps(account))

    result = import_telegram_export(path_or_file=path)

    assert set(Chat.objects.values_list("telegram_id", flat=True)) == {-11, -22}
    assert (result.created, result.chats) == (2, 2)
    assert Message.objects.filter(chat__telegram_id=-11).count() == 2


@pytest.mark.django_db(transaction=True)
def test_chunks_committed_on_their_own_are_all_stored_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: what is counted across chunks does not depend on their size, and 20,000
    # messages imported twice took seconds. Full chunks are written by the progress test
    # below and by tests/sources/test_import_export.py.
    chunk = 50
    monkeypatch.setattr(export_import, "IMPORT_CHUNK_SIZE", chunk)
    count = 2 * chunk + 3
    path = tmp_path / "result.json"
    path.write_text(json.dumps(chat_export([message(i, f"message {i}") for i in range(1, count + 1)])))
    seen: list[int] = []

    result = import_telegram_export(path_or_file=path, progress=lambda r: seen.append(r.created))
    again = import_telegram_export(path_or_file=path)

    assert seen == [chunk, 2 * chunk, count]
    assert (result.created, again.unchanged) == (count, count)
    assert Message.objects.count() == count


@pytest.mark.django_db(transaction=True)
def test_a_message_stored_by_another_path_during_the_insert_is_not_counted_created() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes the write lock before the lookup: nothing can come in between.")
    chat = ChatFactory()
    importing_pid = connection.connection.info.backend_pid
    stored = threading.Event()
    waited: list[bool] = []

    def webhook() -> None:
        # Stores message 2 in a transaction that commits only once the import's insert
        # waits for it: between the import's lookup (which does not see it) and its insert.
        try:
            with transaction.atomic():
                upsert_messages(chat=chat, messages=[data(2)])
                stored.set()
                deadline = time.monotonic() + 10
                with connection.cursor() as cursor:
                    while time.monotonic() < deadline:
                        cursor.execute(
                            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [importing_pid]
                        )
                        if cursor.fetchone() == ("Lock",):
                            waited.append(True)
                            break
                        time.sleep(0.01)
        finally:
            connection.close()

    thread = threading.Thread(target=webhook)
    thread.start()
    assert stored.wait(10)
    result = upsert_messages(chat=chat, messages=[data(1), data(2), data(3)])
    thread.join()

    assert waited == [True]
    assert counts(result) == (2, 0, 1)
    assert sorted(Message.objects.values_list("telegram_id", flat=True)) == [1, 2, 3]


@pytest.mark.django_db(transaction=True)
def test_progress_sees_each_chunk_committed_and_may_query_the_database(tmp_path: Path) -> None:
    # Chunks are written by a thread of the import on the caller's connection; `progress`
    # runs in the caller's thread between two chunks, when that connection is free.
    count = IMPORT_CHUNK_SIZE + 3
    path = tmp_path / "result.json"
    path.write_text(json.dumps(chat_export([message(i, f"message {i}") for i in range(1, count + 1)])))
    stored: list[int] = []

    import_telegram_export(path_or_file=path, progress=lambda r: stored.append(Message.objects.count()))

    assert stored == [IMPORT_CHUNK_SIZE, count]


def test_an_import_inside_a_transaction_is_undone_with_it(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(chat_export([message(i, f"message {i}") for i in range(1, 4)])))

    with pytest.raises(RuntimeError), transaction.atomic():
        import_telegram_export(path_or_file=path)
        assert Message.objects.count() == 3
        raise RuntimeError("the caller fails after the import")

    assert not Message.objects.exists()
    assert not Chat.objects.exists()


def test_the_garbage_collector_is_on_again_after_an_import_even_a_failed_one(tmp_path: Path) -> None:
    good = tmp_path / "result.json"
    good.write_text(json.dumps(chat_export([message(1, "hello")])))
    cut = tmp_path / "cut.json"
    cut.write_text(good.read_text()[:-20])

    import_telegram_export(path_or_file=good)
    assert gc.isenabled()
    with pytest.raises(DomainError):
        import_telegram_export(path_or_file=cut)
    assert gc.isenabled()
