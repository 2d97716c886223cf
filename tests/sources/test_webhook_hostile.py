"""Hostile bodies with the right secret: the webhook and the bulk messages API answer them
with 200 (stored) or 400 (refused, nothing written), never a 5xx that Telegram would retry.
NUL characters, which PostgreSQL cannot store, are dropped alike on every path and database."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from sources.models import Chat, Message, MessageEdit, TelegramUpdate
from sources.services import import_telegram_export
from tests.factories import UserFactory
from tests.sources.telegram_payloads import ALICE, CHAT, edited_update, message_update

pytestmark = pytest.mark.django_db
SECRET = "s3cret-token_value"
URL = "/telegram/webhook/"
BULK_URL = "/api/v1/messages/bulk/"
# 400 KB of nested arrays: far deeper than Python's stack allows a recursive parser.
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(autouse=True)
def webhook_secret(settings) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = SECRET


@pytest.fixture
def staff_client() -> APIClient:
    client = APIClient()
    client.force_login(UserFactory(is_staff=True))
    return client


def post(client: Client, payload: object) -> Any:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return client.post(
        URL, data=body, content_type="application/json", headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )


def assert_refused(response: Any) -> None:
    assert response.status_code == 400
    assert response.json()["detail"]
    assert Message.objects.count() == 0
    assert Chat.objects.count() == 0
    assert TelegramUpdate.objects.count() == 0


# The webhook


def test_an_update_id_beyond_64_bits_is_refused(client: Client) -> None:
    assert_refused(post(client, message_update(2**70, 10, "hi")))


def test_a_chat_id_beyond_64_bits_is_refused(client: Client) -> None:
    update = message_update(1, 10, "hi")
    update["message"]["chat"] = {**CHAT, "id": 2**70}
    assert_refused(post(client, update))


def test_deeply_nested_json_is_refused(client: Client) -> None:
    assert_refused(post(client, '{"update_id": 1, "message": ' + DEEP + "}"))


def test_a_message_that_is_not_an_object_is_refused(client: Client) -> None:
    assert_refused(post(client, {"update_id": 1, "message": "hello"}))


def test_a_message_without_a_chat_is_refused(client: Client) -> None:
    update = message_update(1, 10, "hi")
    del update["message"]["chat"]
    assert_refused(post(client, update))


def test_nul_characters_are_stripped_from_the_text_and_names(client: Client) -> None:
    update = message_update(1, 10, "Deploy\x00 at 5\x00")
    update["message"]["from"] = {**ALICE, "first_name": "Al\x00ice"}
    update["message"]["chat"] = {**CHAT, "title": "Acme\x00 Mobile Team"}
    update["message"]["forward_origin"] = {
        "type": "hidden_user",
        "date": 1794990000,
        "sender_user_name": "B\x00b",
    }

    response = post(client, update)

    assert response.status_code == 200
    assert response.json()["result"] == "stored"
    message = Message.objects.select_related("chat").get()
    assert message.text == "Deploy at 5"
    assert message.author_name == "Alice Ng"
    assert message.forwarded_from == "Bb"
    assert message.chat.title == "Acme Mobile Team"
    assert message.raw["message"]["text"] == "Deploy at 5"


def test_an_edit_with_nul_characters_is_stored_without_them(client: Client) -> None:
    post(client, message_update(1, 10, "Release on Friday"))

    response = post(client, edited_update(2, 10, "Release on\x00 Monday"))

    assert response.status_code == 200
    message = Message.objects.get()
    assert message.text == "Release on Monday"
    assert message.raw["edited_message"]["text"] == "Release on Monday"
    assert list(MessageEdit.objects.values_list("previous_text", flat=True)) == ["Release on Friday"]


def test_a_lone_surrogate_is_stored_as_the_replacement_character(client: Client) -> None:
    response = post(client, message_update(1, 10, "broken \ud800 emoji"))

    assert response.status_code == 200
    assert Message.objects.get().text == "broken \ufffd emoji"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("message_id",), 2**70, id="message-id-beyond-64-bits"),
        pytest.param(("from", "id"), -(2**64), id="author-id-beyond-64-bits"),
        pytest.param(
            ("reply_to_message",),
            {**message_update(9, 9, "x")["message"], "message_id": 2**63},
            id="reply-to-id-beyond-64-bits",
        ),
        pytest.param(("message_id",), "10", id="message-id-as-text"),
        pytest.param(("message_id",), True, id="message-id-as-bool"),
        pytest.param(("text",), 42, id="text-as-number"),
        pytest.param(("text",), {"nested": ["text"]}, id="text-as-object"),
        pytest.param(("from",), "alice", id="author-as-text"),
        pytest.param(("from", "first_name"), ["Alice"], id="author-name-as-list"),
        pytest.param(("chat",), "Acme", id="chat-as-text"),
        pytest.param(("chat", "id"), "-1001876543210", id="chat-id-as-text"),
        pytest.param(("chat", "title"), 7, id="chat-title-as-number"),
        pytest.param(("date",), 2**70, id="date-beyond-any-calendar"),
        pytest.param(("date",), "yesterday", id="date-as-text"),
        pytest.param(("date",), None, id="date-null"),
        pytest.param(("edit_date",), -(10**15), id="edit-date-before-any-calendar"),
    ],
)
def test_wrong_types_and_out_of_range_values_are_refused(
    client: Client, path: tuple[str, ...], value: object
) -> None:
    update = message_update(1, 10, "hi")
    target = update["message"]
    for key in path[:-1]:
        target[key] = dict(target[key])
        target = target[key]
    target[path[-1]] = value
    assert_refused(post(client, update))


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(message_update(1, 10, "hi"))[:-2] + ', "views": NaN}}',
        '{"update_id": Infinity}',
        "1" * 5000,
        "",
    ],
    ids=["nan", "infinity", "huge-number", "empty"],
)
def test_json_python_reads_but_telegram_never_sends_is_refused(client: Client, body: str) -> None:
    assert_refused(post(client, body))


def test_an_unknown_kind_with_an_odd_name_is_skipped_under_a_name_that_fits(client: Client) -> None:
    response = post(client, {"update_id": 1, "x\x00" * 40: {}})

    assert response.status_code == 200
    assert response.json()["result"] == "skipped"
    assert TelegramUpdate.objects.get().kind == "unknown"


def test_a_refused_update_is_logged_with_the_reason(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    update = message_update(1, 10, "hi")
    del update["message"]["chat"]

    with caplog.at_level(logging.WARNING, logger="sources.views"):
        post(client, update)

    assert any(
        "chat" in record.getMessage() for record in caplog.records if record.levelno == logging.WARNING
    )


def test_a_body_over_the_size_limit_is_a_400(client: Client) -> None:
    assert_refused(post(client, message_update(1, 10, "x" * (2 * 1024 * 1024))))


def test_the_export_import_drops_nul_characters_too(tmp_path: Path) -> None:
    message = {
        "id": 2,
        "type": "message",
        "date": "2026-11-23T10:00:00",
        "date_unixtime": "1795424400",
        "from": "Ca\x00rol",
        "from_id": "user603118752",
        "forwarded_from": "Er\x00in",
        "text": ["Log\x00in ", {"type": "bold", "text": "cr\x00ashes"}],
    }
    path = tmp_path / "result.json"
    path.write_text(
        json.dumps(
            {"name": "Mo\x00bile", "type": "private_supergroup", "id": 1876543210, "messages": [message]}
        )
    )

    assert import_telegram_export(path_or_file=path).created == 1

    stored = Message.objects.select_related("chat").get()
    assert (stored.text, stored.author_name, stored.forwarded_from) == ("Login crashes", "Carol", "Erin")
    assert stored.chat.title == "Mobile"
    assert "\\u0000" not in json.dumps(stored.raw)
    assert stored.raw["text"][1]["text"] == "crashes"


# The bulk messages API


def bulk_body(**overrides: Any) -> dict[str, Any]:
    message = {"telegram_id": 1, "sent_at": "2024-05-01T09:30:00Z", "text": "hi", "author_name": "Ann"}
    body: dict[str, Any] = {
        "chat": {"telegram_id": -1001234567890, "title": "Backend", "type": "supergroup"},
        "messages": [message],
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if not field:
            body[section] = value
        elif section == "chat":
            body["chat"][field] = value
        else:
            message[field] = value
    return body


def bulk_post(client: APIClient, body: object) -> Any:
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(BULK_URL, data=data, content_type="application/json")


def assert_bulk_refused(response: Any, *field_path: str) -> None:
    assert response.status_code == 400
    errors = response.json()
    for key in field_path:
        errors = errors[int(key)] if isinstance(errors, list) else errors[key]
    assert errors
    assert Message.objects.count() == 0
    assert Chat.objects.count() == 0


def test_bulk_refuses_a_chat_id_beyond_64_bits(staff_client: APIClient) -> None:
    assert_bulk_refused(bulk_post(staff_client, bulk_body(chat__telegram_id=2**70)), "chat", "telegram_id")


def test_bulk_refuses_a_message_id_beyond_64_bits(staff_client: APIClient) -> None:
    response = bulk_post(staff_client, bulk_body(message__telegram_id=2**70))
    assert_bulk_refused(response, "messages", "0", "telegram_id")


def test_bulk_refuses_deeply_nested_json(staff_client: APIClient) -> None:
    assert_bulk_refused(bulk_post(staff_client, '{"chat": ' + DEEP + "}"), "detail")


def test_bulk_refuses_messages_that_are_not_a_list(staff_client: APIClient) -> None:
    assert_bulk_refused(bulk_post(staff_client, bulk_body(messages="hello")), "messages")


def test_bulk_refuses_a_chat_that_is_not_an_object(staff_client: APIClient) -> None:
    assert_bulk_refused(bulk_post(staff_client, bulk_body(chat="hello")), "chat")


def test_bulk_refuses_a_batch_without_a_chat(staff_client: APIClient) -> None:
    body = bulk_body()
    del body["chat"]
    assert_bulk_refused(bulk_post(staff_client, body), "chat")


@pytest.mark.parametrize("field", ["text", "author_name", "forwarded_from"])
def test_bulk_refuses_nul_characters_with_a_field_error(staff_client: APIClient, field: str) -> None:
    response = bulk_post(staff_client, bulk_body(**{f"message__{field}": "a\x00b"}))
    assert_bulk_refused(response, "messages", "0", field)


def test_bulk_refuses_a_nul_character_in_the_chat_title(staff_client: APIClient) -> None:
    assert_bulk_refused(bulk_post(staff_client, bulk_body(chat__title="Back\x00end")), "chat", "title")
