import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from sources.models import Chat, Message, MessageEdit
from sources.services import IMPORT_CHUNK_SIZE, ImportResult, import_telegram_export
from tasktracker.exceptions import DomainError

pytestmark = pytest.mark.django_db

MONDAY_9 = 1795424400  # 2026-11-23 09:00:00 UTC


def message(msg_id: int, text: Any, *, minutes: int = 0, **extra: Any) -> dict[str, Any]:
    unix = MONDAY_9 + minutes * 60
    return {
        "id": msg_id,
        "type": "message",
        "date": datetime.fromtimestamp(unix + 3600, tz=UTC).replace(tzinfo=None).isoformat(),
        "date_unixtime": str(unix),
        "from": "Carol Diaz",
        "from_id": "user603118752",
        **extra,
        "text": text,
        "text_entities": [],
    }


def chat_export(messages: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    return {"name": "Mobile", "type": "private_supergroup", "id": 1876543210, **header, "messages": messages}


def write(tmp_path: Path, data: Any, name: str = "result.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


SMALL_EXPORT = chat_export(
    [
        {
            "id": 1,
            "type": "service",
            "date": "2026-11-23T09:59:00",
            "date_unixtime": str(MONDAY_9 - 60),
            "actor": "Erin Walsh",
            "actor_id": "user829306614",
            "action": "join_group_by_link",
            "inviter": "Group",
            "text": "",
            "text_entities": [],
        },
        message(2, "Login crashes on Android 14 after the session expires"),
        message(
            3,
            [{"type": "bold", "text": "Reminder:"}, " update the ", {"type": "link", "text": "checklist"}],
            minutes=1,
            from_id="channel1500",
        ),
        message(4, "cut-off Pay button on iPhone SE", minutes=2, photo="photos/photo_1.jpg", width=750),
        message(5, "on it", minutes=3, reply_to_message_id=2, forwarded_from="Platform Team"),
    ]
)


def test_import_creates_the_chat_with_its_bot_api_id_and_the_messages(tmp_path: Path) -> None:
    result = import_telegram_export(path_or_file=write(tmp_path, SMALL_EXPORT))

    chat = Chat.objects.get()
    assert (chat.telegram_id, chat.type, chat.title) == (-1001876543210, Chat.Type.SUPERGROUP, "Mobile")
    texts = dict(Message.objects.values_list("telegram_id", "text"))
    assert texts == {
        2: "Login crashes on Android 14 after the session expires",
        3: "Reminder: update the checklist",
        4: "cut-off Pay button on iPhone SE",
        5: "on it",
    }
    reply = Message.objects.get(telegram_id=5)
    assert reply.reply_to_telegram_id == 2
    assert reply.forwarded_from == "Platform Team"
    assert reply.author_id == 603118752
    assert reply.author_name == "Carol Diaz"
    assert reply.sent_at == datetime(2026, 11, 23, 9, 3, tzinfo=UTC)
    assert Message.objects.get(telegram_id=3).author_id == 1500
    assert Message.objects.get(telegram_id=4).raw["photo"] == "photos/photo_1.jpg"
    assert (result.created, result.skipped, result.chats) == (4, {"service": 1}, 1)


def test_importing_twice_keeps_one_row_per_message(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL_EXPORT)
    import_telegram_export(path_or_file=path)

    again = import_telegram_export(path_or_file=path)

    assert Message.objects.count() == 4
    assert Chat.objects.count() == 1
    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)


def test_an_edit_updates_the_text_and_keeps_the_original(tmp_path: Path) -> None:
    import_telegram_export(path_or_file=write(tmp_path, chat_export([message(7, "RC on Tuesday")])))
    edited = message(7, "RC on Wednesday", edited="2026-11-23T10:30:00", edited_unixtime=str(MONDAY_9 + 1800))

    result = import_telegram_export(path_or_file=write(tmp_path, chat_export([edited]), "edited.json"))

    stored = Message.objects.get(telegram_id=7)
    assert stored.text == "RC on Wednesday"
    assert stored.edited_at == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    edit = MessageEdit.objects.get(message=stored)
    assert (edit.previous_text, edit.previous_edited_at) == ("RC on Tuesday", None)
    assert (result.updated, result.unchanged) == (1, 0)


def test_an_older_copy_does_not_roll_back_a_later_edit(tmp_path: Path) -> None:
    edited = message(7, "RC on Wednesday", edited_unixtime=str(MONDAY_9 + 1800))
    import_telegram_export(path_or_file=write(tmp_path, chat_export([edited])))

    result = import_telegram_export(path_or_file=write(tmp_path, chat_export([message(7, "RC on Tuesday")])))

    assert Message.objects.get(telegram_id=7).text == "RC on Wednesday"
    assert result.unchanged == 1
    assert not MessageEdit.objects.exists()


def test_a_full_account_export_imports_every_chat(tmp_path: Path) -> None:
    account = {
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": 42, "first_name": "Alice"},
        "chats": {
            "about": "This page lists all chats from this export.",
            "list": [
                {
                    "name": "Bob Martin",
                    "type": "personal_chat",
                    "id": 517204466,
                    "messages": [message(1, "hi")],
                },
                {
                    "name": "Release",
                    "type": "private_group",
                    "id": 4004004,
                    "messages": [message(1, "ship it"), message(2, "ok", minutes=1)],
                },
            ],
        },
    }

    result = import_telegram_export(path_or_file=write(tmp_path, account))

    chats = {c.telegram_id: c.type for c in Chat.objects.all()}
    assert chats == {517204466: Chat.Type.PRIVATE, -4004004: Chat.Type.GROUP}
    assert Message.objects.filter(chat__telegram_id=-4004004).count() == 2
    assert (result.chats, result.created) == (2, 3)


def test_chat_id_imports_only_that_chat_of_an_account_export(tmp_path: Path) -> None:
    account = {
        "chats": {
            "list": [
                {"name": "A", "type": "personal_chat", "id": 11, "messages": [message(1, "a")]},
                {"name": "B", "type": "public_channel", "id": 22, "messages": [message(1, "b")]},
            ]
        }
    }

    result = import_telegram_export(path_or_file=write(tmp_path, account), chat_telegram_id=-1000000000022)

    assert list(Chat.objects.values_list("telegram_id", "type")) == [(-1000000000022, Chat.Type.CHANNEL)]
    assert result.skipped == {"other_chat": 1}


def test_messages_are_written_in_chunks_with_progress(tmp_path: Path) -> None:
    count = IMPORT_CHUNK_SIZE + 5
    path = write(tmp_path, chat_export([message(i, f"message {i}") for i in range(1, count + 1)]))
    seen: list[int] = []

    def progress(result: ImportResult) -> None:
        seen.append(result.created)

    import_telegram_export(path_or_file=path, progress=progress)

    assert seen == [IMPORT_CHUNK_SIZE, count]
    assert Message.objects.count() == count


def test_a_file_that_is_not_json_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Meeting notes: ship on Friday\n")

    with pytest.raises(DomainError, match="not JSON"):
        import_telegram_export(path_or_file=path)

    assert not Chat.objects.exists()


def test_json_that_is_not_an_export_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "package", "version": "1.0.0", "dependencies": {"left-pad": "1"}})

    with pytest.raises(DomainError, match="no list of messages"):
        import_telegram_export(path_or_file=path)

    assert not Chat.objects.exists()
    assert not Message.objects.exists()


def test_a_truncated_export_is_refused(tmp_path: Path) -> None:
    text = json.dumps(SMALL_EXPORT, indent=1)
    path = tmp_path / "result.json"
    path.write_text(text[: len(text) // 2])

    with pytest.raises(DomainError, match="cut short"):
        import_telegram_export(path_or_file=path)

    # Less than a chunk was read: nothing was committed, not even the chat.
    assert not Chat.objects.exists()


def test_the_command_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("import_telegram_export", str(write(tmp_path, SMALL_EXPORT)))

    assert capsys.readouterr().out.strip() == (
        "Imported 4 new, updated 0, unchanged 0, skipped 1 (service 1) from 1 chat(s)."
    )


def test_the_command_fails_with_a_sentence_on_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"^No export file at .*missing\.json\.$"):
        call_command("import_telegram_export", str(tmp_path / "missing.json"))


def test_the_command_fails_with_a_sentence_on_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="is not a Telegram Desktop export"):
        call_command("import_telegram_export", str(write(tmp_path, [1, 2, 3])))


def test_a_rerun_after_a_failure_mid_file_continues_from_the_committed_chunks(tmp_path: Path) -> None:
    count = IMPORT_CHUNK_SIZE + 5
    text = json.dumps(chat_export([message(i, f"message {i}") for i in range(1, count + 1)]))
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.index(f'"id": {IMPORT_CHUNK_SIZE + 3},')])

    with pytest.raises(DomainError, match="cut short"):
        import_telegram_export(path_or_file=cut)
    assert Message.objects.count() == IMPORT_CHUNK_SIZE

    full = tmp_path / "full.json"
    full.write_text(text)
    result = import_telegram_export(path_or_file=full)

    assert (result.created, result.unchanged) == (5, IMPORT_CHUNK_SIZE)
    assert Message.objects.count() == count


def test_the_stored_raw_copy_is_the_export_message_without_its_text_entities(tmp_path: Path) -> None:
    exported = message(
        2,
        [{"type": "bold", "text": "Crash"}, ' on "Pay" \\ tap\n', {"type": "custom_emoji", "text": "🔥"}],
        forwarded_from="Équipe Paiements",
        reactions=[{"type": "emoji", "count": 3, "emoji": "👍", "recent": []}],
        duration_seconds=12.5,
        ratio=0.1,
        is_pinned=True,
        via_bot=None,
        tab="a\tb\u0001c",
    )
    exported["text_entities"] = [{"type": "bold", "text": "Crash"}]
    import_telegram_export(path_or_file=write(tmp_path, chat_export([exported])))

    expected = {key: value for key, value in exported.items() if key != "text_entities"}
    assert Message.objects.get(telegram_id=2).raw == expected
