import os
import signal
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from conftest import BASE_DIR, database_url_of_test_db
from sources.models import Message, PollingState
from tests.fakes.telegram import BOT_ID, FakeBotAPI
from tests.sources.telegram_payloads import edited_update, message_update, poll_answer_update

# The command reaches the database from asgiref's thread: the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


def test_polling_stores_updates_and_remembers_the_offset(fake_bot_api: FakeBotAPI) -> None:
    fake_bot_api.add_update(message_update(100, 1, "Crash on login"))
    fake_bot_api.add_update(edited_update(101, 1, "Crash on login (Android 14)"))
    fake_bot_api.add_update(poll_answer_update(102))
    call_command("poll_telegram", "--once")
    assert Message.objects.get().text == "Crash on login (Android 14)"
    assert PollingState.objects.get(bot_id=BOT_ID).last_update_id == 101
    assert "poll_answer" not in fake_bot_api.calls_of("getUpdates")[0]["allowed_updates"]


def test_a_restart_neither_loses_nor_repeats_updates(fake_bot_api: FakeBotAPI) -> None:
    fake_bot_api.add_update(message_update(100, 1, "one"))
    call_command("poll_telegram", "--once")
    fake_bot_api.add_update(message_update(101, 2, "two"))
    call_command("poll_telegram", "--once")
    offsets = [call.get("offset") for call in fake_bot_api.calls_of("getUpdates")]
    assert offsets[-1] == "101"
    assert sorted(Message.objects.values_list("text", flat=True)) == ["one", "two"]
    # Telegram dropped the confirmed update: it is never read twice.
    assert [u["update_id"] for u in fake_bot_api.updates] == [101]


def test_polling_without_a_token_exits_with_a_sentence(settings) -> None:
    settings.TELEGRAM_BOT_TOKEN = ""
    with pytest.raises(CommandError, match="TELEGRAM_BOT_TOKEN is not set"):
        call_command("poll_telegram", "--once")


def test_set_telegram_webhook_registers_the_url_with_the_secret(fake_bot_api: FakeBotAPI, settings) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = "hook-secret"
    call_command("set_telegram_webhook", "https://tasks.example.com/telegram/webhook/")
    assert fake_bot_api.webhook["url"] == "https://tasks.example.com/telegram/webhook/"
    assert fake_bot_api.webhook["secret_token"] == "hook-secret"


def test_set_telegram_webhook_refuses_without_a_secret(fake_bot_api: FakeBotAPI, settings) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = ""
    with pytest.raises(CommandError, match="without a secret"):
        call_command("set_telegram_webhook", "https://tasks.example.com/telegram/webhook/")
    assert fake_bot_api.webhook == {}


def test_polling_stops_cleanly_on_sigterm(fake_bot_api: FakeBotAPI) -> None:
    fake_bot_api.add_update(message_update(100, 1, "before the stop"))
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "SECRET_KEY": "test-secret-key-for-the-poller-0123456789",
        "TELEGRAM_API_BASE_URL": fake_bot_api.base_url,
        "TELEGRAM_BOT_TOKEN": "123456:TEST-TOKEN",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "poll_telegram", "--timeout", "1"],
        cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not Message.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "Stopped after storing 1 update(s)." in out
    assert Message.objects.get().text == "before the stop"
