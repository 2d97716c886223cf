import json

import pytest
from django.test import Client

from sources.models import Chat, Message, MessageEdit, TelegramUpdate
from tests.sources.telegram_payloads import (
    channel_post_update,
    edited_update,
    message_update,
    photo_update,
    poll_answer_update,
    reply_update,
)

pytestmark = pytest.mark.django_db
SECRET = "s3cret-token_value"
URL = "/telegram/webhook/"


@pytest.fixture(autouse=True)
def webhook_secret(settings) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = SECRET


def post(client: Client, payload: object, secret: str | None = SECRET) -> object:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return client.post(URL, data=body, content_type="application/json", headers=headers)


def test_a_message_update_stores_the_message_and_its_chat(client: Client) -> None:
    response = post(client, message_update(1, 10, "Login crashes on Android 14"))
    assert response.status_code == 200
    assert response.json()["result"] == "stored"
    message = Message.objects.select_related("chat").get()
    assert message.text == "Login crashes on Android 14"
    assert (message.author_id, message.author_name) == (111, "Alice Ng")
    assert message.chat.telegram_id == -1001876543210
    assert (message.chat.title, message.chat.type) == ("Acme Mobile Team", Chat.Type.SUPERGROUP)
    assert message.sent_at.timestamp() == 1795000000
    assert message.raw["update_id"] == 1


def test_a_repeated_update_id_is_answered_200_and_changes_nothing(client: Client) -> None:
    post(client, message_update(1, 10, "first"))
    response = post(client, message_update(1, 10, "replayed with other text"))
    assert response.status_code == 200
    assert response.json()["result"] == "duplicate"
    assert Message.objects.get().text == "first"
    assert TelegramUpdate.objects.count() == 1


def test_an_edit_updates_the_text_and_keeps_the_original(client: Client) -> None:
    post(client, message_update(1, 10, "Release on Friday"))
    post(client, edited_update(2, 10, "Release on Monday"))
    message = Message.objects.get()
    assert message.text == "Release on Monday"
    assert message.edited_at.timestamp() == 1795000600
    assert list(MessageEdit.objects.values_list("previous_text", flat=True)) == ["Release on Friday"]


def test_a_caption_is_stored_as_the_text(client: Client) -> None:
    post(client, photo_update(3, 11, "Screenshot of the crash"))
    assert Message.objects.get().text == "Screenshot of the crash"


def test_a_reply_keeps_its_parent_id(client: Client) -> None:
    post(client, reply_update(4, 12, "I can reproduce it", parent_id=10))
    assert Message.objects.get().reply_to_telegram_id == 10


def test_a_channel_post_is_stored_under_the_channel(client: Client) -> None:
    post(client, channel_post_update(5, 1, "v2.3 is out"))
    message = Message.objects.select_related("chat").get()
    assert message.chat.type == Chat.Type.CHANNEL
    assert message.chat.username == "acme_news"
    assert message.author_name == "Acme Announcements"


def test_an_unknown_update_kind_is_acknowledged_and_skipped(client: Client) -> None:
    response = post(client, poll_answer_update(6))
    assert response.status_code == 200
    assert response.json() == {"ok": True, "result": "skipped", "kind": "poll_answer"}
    assert Message.objects.count() == 0


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x"])
def test_a_wrong_or_missing_secret_is_refused(client: Client, secret: str | None) -> None:
    response = post(client, message_update(1, 10, "hi"), secret=secret)
    assert response.status_code == 403
    assert Message.objects.count() == 0


def test_without_a_configured_secret_every_call_is_refused(client: Client, settings) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = ""
    assert post(client, message_update(1, 10, "hi"), secret="").status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        '{"message": {}}',
        '{"update_id": "1"}',
        '{"update_id": 1, "message": {"text": "x"}}',
    ],
)
def test_malformed_payloads_are_a_400_and_write_nothing(client: Client, body: str) -> None:
    response = post(client, body)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert Message.objects.count() == 0
    assert TelegramUpdate.objects.count() == 0


def test_an_oversized_payload_is_refused(client: Client) -> None:
    response = post(client, message_update(1, 10, "x" * (2 * 1024 * 1024)))
    assert response.status_code in (400, 413)
    assert Message.objects.count() == 0


def test_get_is_not_allowed(client: Client) -> None:
    assert client.get(URL).status_code == 405
