"""The chats and messages API, and bulk ingestion for integrations."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

import sources.api
from sources.models import Chat, Message, MessageEdit
from sources.services import BULK_MAX_MESSAGES, ingest_messages
from tasktracker.exceptions import DomainError
from tests.factories import (
    ChatFactory,
    MessageEditFactory,
    MessageFactory,
    ProjectConfigFactory,
    ProjectMembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

BULK_URL = "/api/v1/messages/bulk/"
MESSAGES_URL = "/api/v1/messages/"
CHATS_URL = "/api/v1/chats/"
T0 = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def chat_in(**overrides: Any) -> dict[str, Any]:
    return {"telegram_id": -1001234567890, "title": "Backend team", "type": "supergroup", **overrides}


def message_in(telegram_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "telegram_id": telegram_id,
        "sent_at": (T0 + timedelta(minutes=telegram_id)).isoformat(),
        "text": f"Message {telegram_id}: the login page is broken",
        "author_id": 42,
        "author_name": "Ann Lee",
        **overrides,
    }


def payload(messages: list[dict[str, Any]], **chat_overrides: Any) -> dict[str, Any]:
    return {"chat": chat_in(**chat_overrides), "messages": messages}


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def reader_of(*chats: Chat) -> Any:
    """A member of a project whose current configuration reads `chats`: who sees them."""
    project = ProjectConfigFactory(chats=list(chats)).project
    return ProjectMembershipFactory(project=project).user


@pytest.fixture
def staff_client(api_client: APIClient) -> APIClient:
    api_client.force_login(UserFactory(is_staff=True))
    return api_client


@pytest.fixture
def integration_token() -> str:
    user = UserFactory()
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="sources", codename="add_message")
    )
    return Token.objects.create(user=user).key


def assert_nothing_written() -> None:
    assert Chat.objects.count() == 0
    assert Message.objects.count() == 0


def test_bulk_post_creates_the_chat_and_its_messages(staff_client: APIClient) -> None:
    messages = [
        message_in(1),
        message_in(2, reply_to_telegram_id=1, forwarded_from="Ops bot", edited_at=None, author_id=None),
    ]

    response = staff_client.post(BULK_URL, payload(messages, username="backend_team"), format="json")

    assert response.status_code == 200, response.data
    assert response.data == {"created": 2, "updated": 0, "unchanged": 0}
    chat = Chat.objects.get()
    assert (chat.telegram_id, chat.title, chat.type, chat.username) == (
        -1001234567890,
        "Backend team",
        "supergroup",
        "backend_team",
    )
    first, second = Message.objects.filter(chat=chat).order_by("telegram_id")
    assert first.text == "Message 1: the login page is broken"
    assert first.sent_at == T0 + timedelta(minutes=1)
    assert (first.author_id, first.author_name) == (42, "Ann Lee")
    assert (second.reply_to_telegram_id, second.forwarded_from, second.author_id) == (1, "Ops bot", None)


def test_posting_the_same_batch_twice_counts_it_unchanged(staff_client: APIClient) -> None:
    body = payload([message_in(1), message_in(2), message_in(3)])

    first = staff_client.post(BULK_URL, body, format="json")
    second = staff_client.post(BULK_URL, body, format="json")

    assert first.data == {"created": 3, "updated": 0, "unchanged": 0}
    assert second.status_code == 200
    assert second.data == {"created": 0, "updated": 0, "unchanged": 3}
    assert Message.objects.count() == 3
    assert MessageEdit.objects.count() == 0


def test_an_edit_updates_the_text_and_keeps_the_previous_one(staff_client: APIClient) -> None:
    staff_client.post(BULK_URL, payload([message_in(1), message_in(2)]), format="json")
    edited_at = (T0 + timedelta(hours=1)).isoformat()
    edit = message_in(1, text="Message 1: the login page is fixed", edited_at=edited_at)

    response = staff_client.post(BULK_URL, payload([edit, message_in(2)]), format="json")

    assert response.data == {"created": 0, "updated": 1, "unchanged": 1}
    message = Message.objects.get(telegram_id=1)
    assert message.text == "Message 1: the login page is fixed"
    assert message.edited_at == T0 + timedelta(hours=1)
    assert list(message.edits.values_list("previous_text", flat=True)) == [
        "Message 1: the login page is broken"
    ]


def test_a_batch_over_the_limit_is_refused_naming_the_limit_and_writes_nothing(
    staff_client: APIClient,
) -> None:
    messages = [message_in(i) for i in range(1, BULK_MAX_MESSAGES + 2)]

    response = staff_client.post(BULK_URL, payload(messages), format="json")

    assert response.status_code == 400
    assert str(BULK_MAX_MESSAGES) in str(response.data["messages"])
    assert_nothing_written()


def test_a_batch_at_the_limit_is_stored(staff_client: APIClient) -> None:
    messages = [message_in(i) for i in range(1, BULK_MAX_MESSAGES + 1)]

    response = staff_client.post(BULK_URL, payload(messages), format="json")

    assert response.status_code == 200
    assert response.data["created"] == BULK_MAX_MESSAGES
    assert Message.objects.count() == BULK_MAX_MESSAGES


@pytest.mark.parametrize(
    ("message", "chat", "error_path"),
    [
        pytest.param({"sent_at": None}, {}, ("messages", 1, "sent_at"), id="missing-sent_at"),
        pytest.param({"sent_at": "2024-05-01T09:30:00"}, {}, ("messages", 1, "sent_at"), id="naive-sent_at"),
        pytest.param({"sent_at": "yesterday at noon"}, {}, ("messages", 1, "sent_at"), id="garbage-sent_at"),
        pytest.param(
            {"edited_at": "2024-05-01 10:00"}, {}, ("messages", 1, "edited_at"), id="naive-edited_at"
        ),
        pytest.param(
            {"edited_at": "2024-04-30T09:00:00Z"}, {}, ("messages", 1, "edited_at"), id="edited-before-sent"
        ),
        pytest.param({"telegram_id": -5}, {}, ("messages", 1, "telegram_id"), id="negative-id"),
        pytest.param({"telegram_id": 0}, {}, ("messages", 1, "telegram_id"), id="zero-id"),
        pytest.param({"telegram_id": "seven"}, {}, ("messages", 1, "telegram_id"), id="text-id"),
        pytest.param({"telegram_id": None}, {}, ("messages", 1, "telegram_id"), id="missing-id"),
        pytest.param(
            {"reply_to_telegram_id": -1}, {}, ("messages", 1, "reply_to_telegram_id"), id="negative-reply"
        ),
        pytest.param(
            {"text": "x" * (sources.api.BULK_MAX_TEXT_LENGTH + 1)},
            {},
            ("messages", 1, "text"),
            id="long-text",
        ),
        pytest.param({"text": None}, {}, ("messages", 1, "text"), id="missing-text"),
        pytest.param({"author_id": 2**63}, {}, ("messages", 1, "author_id"), id="author-id-overflow"),
        pytest.param({}, {"type": "forum"}, ("chat", "type"), id="unknown-chat-type"),
        pytest.param({}, {"username": "@team"}, ("chat", "username"), id="username-with-at"),
        pytest.param({}, {"telegram_id": "x"}, ("chat", "telegram_id"), id="text-chat-id"),
    ],
)
def test_invalid_fields_are_refused_with_field_errors_and_write_nothing(
    staff_client: APIClient, message: dict[str, Any], chat: dict[str, Any], error_path: tuple[Any, ...]
) -> None:
    # None leaves the field out.
    bad = {k: v for k, v in {**message_in(2), **message}.items() if v is not None}
    body = payload([message_in(1), bad], **chat)

    response = staff_client.post(BULK_URL, body, format="json")

    assert response.status_code == 400
    errors: Any = response.data
    for key in error_path:
        errors = errors[key]
    assert errors, response.data
    assert_nothing_written()


def test_a_datetime_without_time_zone_is_refused_saying_so(staff_client: APIClient) -> None:
    body = payload([message_in(1, sent_at="2024-05-01T09:30:00")])

    response = staff_client.post(BULK_URL, body, format="json")

    assert response.status_code == 400
    assert "time zone" in str(response.data["messages"][0]["sent_at"][0])


def test_a_message_id_given_twice_is_refused_on_the_second_copy(staff_client: APIClient) -> None:
    body = payload([message_in(1), message_in(2), message_in(1, text="Other text")])

    response = staff_client.post(BULK_URL, body, format="json")

    assert response.status_code == 400
    errors = response.data["messages"]
    assert errors[0] == {} and errors[1] == {}
    assert "given twice" in str(errors[2]["telegram_id"][0])
    assert_nothing_written()


def test_an_empty_message_list_is_refused(staff_client: APIClient) -> None:
    response = staff_client.post(BULK_URL, payload([]), format="json")

    assert response.status_code == 400
    assert "messages" in response.data
    assert_nothing_written()


def test_a_body_over_the_size_limit_is_refused_before_parsing(
    staff_client: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources.api, "BULK_MAX_BODY_BYTES", 200)

    response = staff_client.post(BULK_URL, payload([message_in(1), message_in(2)]), format="json")

    assert response.status_code == 413
    assert response.data["code"] == "too_large"
    assert_nothing_written()


def test_a_user_without_the_permission_cannot_post(api_client: APIClient) -> None:
    api_client.force_login(UserFactory())

    response = api_client.post(BULK_URL, payload([message_in(1)]), format="json")

    assert response.status_code == 403
    assert_nothing_written()


def test_an_anonymous_client_cannot_post(api_client: APIClient) -> None:
    response = api_client.post(BULK_URL, payload([message_in(1)]), format="json")

    assert response.status_code in (401, 403)
    assert_nothing_written()


def test_an_integration_token_with_add_message_permission_can_post(
    api_client: APIClient, integration_token: str
) -> None:
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {integration_token}")

    response = api_client.post(BULK_URL, payload([message_in(1)]), format="json")

    assert response.status_code == 200
    assert response.data == {"created": 1, "updated": 0, "unchanged": 0}
    assert Message.objects.filter(telegram_id=1, chat__telegram_id=-1001234567890).exists()


def test_a_wrong_token_is_refused(api_client: APIClient) -> None:
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = api_client.post(BULK_URL, payload([message_in(1)]), format="json")

    assert response.status_code in (401, 403)
    assert_nothing_written()


def test_ingest_messages_refuses_a_duplicate_id_itself() -> None:
    data = {"telegram_id": 1, "sent_at": T0, "text": "Hello"}

    with pytest.raises(DomainError) as raised:
        ingest_messages(chat={"telegram_id": -100, "type": "group", "title": "T"}, messages=[data, data])

    assert raised.value.code == "duplicate_message"
    assert_nothing_written()


def test_messages_list_filters_by_chat_and_time_window(api_client: APIClient) -> None:
    chat, other_chat = ChatFactory(), ChatFactory()
    api_client.force_login(reader_of(chat, other_chat))
    before = MessageFactory(chat=chat, sent_at=T0 - timedelta(minutes=1))
    at_start = MessageFactory(chat=chat, sent_at=T0)
    inside = MessageFactory(chat=chat, sent_at=T0 + timedelta(minutes=30))
    MessageFactory(chat=chat, sent_at=T0 + timedelta(hours=1))  # the end is exclusive
    MessageFactory(chat=other_chat, sent_at=T0 + timedelta(minutes=10))

    response = api_client.get(
        MESSAGES_URL,
        {
            "chat": chat.pk,
            "sent_after": T0.isoformat(),
            "sent_before": (T0 + timedelta(hours=1)).isoformat(),
        },
    )

    assert response.status_code == 200
    assert [m["id"] for m in response.data["results"]] == [at_start.pk, inside.pk]
    assert response.data["results"][0]["chat"] == chat.pk
    assert before.pk not in [m["id"] for m in response.data["results"]]


def test_messages_list_filters_by_author_searches_text_and_orders_newest_first(api_client: APIClient) -> None:
    chat = ChatFactory()
    api_client.force_login(reader_of(chat))
    old = MessageFactory(chat=chat, author_id=7, text="deploy on friday", sent_at=T0)
    new = MessageFactory(chat=chat, author_id=7, text="Deploy again", sent_at=T0 + timedelta(hours=1))
    MessageFactory(chat=chat, author_id=8, text="deploy it", sent_at=T0)
    MessageFactory(chat=chat, author_id=7, text="lunch?", sent_at=T0)

    response = api_client.get(MESSAGES_URL, {"author_id": 7, "search": "deploy", "ordering": "-sent_at"})

    assert [m["id"] for m in response.data["results"]] == [new.pk, old.pk]


def test_message_detail_shows_its_edit_history(api_client: APIClient) -> None:
    message = MessageFactory(text="Now", chat=ChatFactory(username="team"))
    api_client.force_login(reader_of(message.chat))
    MessageFactory.create_batch(2)
    MessageEditFactory(message=message, previous_text="Before")

    response = api_client.get(f"{MESSAGES_URL}{message.pk}/")

    assert response.status_code == 200
    assert response.data["text"] == "Now"
    assert response.data["link"] == f"https://t.me/team/{message.telegram_id}"
    assert [e["previous_text"] for e in response.data["edits"]] == ["Before"]


def test_an_anonymous_client_cannot_list_messages(api_client: APIClient) -> None:
    MessageFactory()

    response = api_client.get(MESSAGES_URL)

    assert response.status_code in (401, 403)


def test_messages_list_runs_the_same_number_of_queries_for_5_and_30_messages(api_client: APIClient) -> None:
    # Staff see every chat's messages.
    api_client.force_login(UserFactory(is_staff=True))

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = api_client.get(MESSAGES_URL)
        assert response.status_code == 200
        return len(queries)

    # Each message in a chat of its own, so reading chats per message would show.
    MessageFactory.create_batch(5)
    with_five = count_queries()
    MessageFactory.create_batch(25)
    with_thirty = count_queries()

    assert with_thirty == with_five


def test_chats_list_filters_by_active_and_type_and_searches_the_title(api_client: APIClient) -> None:
    wanted = ChatFactory(title="Backend team", type=Chat.Type.SUPERGROUP, is_active=True)
    others = [
        ChatFactory(title="Backend old", type=Chat.Type.SUPERGROUP, is_active=False),
        ChatFactory(title="Backend DMs", type=Chat.Type.PRIVATE, is_active=True),
        ChatFactory(title="Frontend team", type=Chat.Type.SUPERGROUP, is_active=True),
    ]
    api_client.force_login(reader_of(wanted, *others))

    response = api_client.get(CHATS_URL, {"is_active": "true", "type": "supergroup", "search": "backend"})

    assert response.status_code == 200
    assert [c["id"] for c in response.data["results"]] == [wanted.pk]


def test_staff_can_switch_a_chat_off_and_rename_it(staff_client: APIClient) -> None:
    chat = ChatFactory(title="Old", is_active=True)

    response = staff_client.patch(
        f"{CHATS_URL}{chat.pk}/", {"is_active": False, "title": "New", "telegram_id": 1}, format="json"
    )

    assert response.status_code == 200
    assert (response.data["is_active"], response.data["title"]) == (False, "New")
    chat.refresh_from_db()
    assert (chat.is_active, chat.title, chat.telegram_id) == (False, "New", chat.telegram_id)
    assert chat.telegram_id != 1


def test_a_chat_switched_off_keeps_storing_messages(staff_client: APIClient) -> None:
    chat = ChatFactory(telegram_id=-1001234567890, is_active=False)

    response = staff_client.post(BULK_URL, payload([message_in(1)]), format="json")

    assert response.data["created"] == 1
    chat.refresh_from_db()
    assert chat.is_active is False
    assert chat.messages.count() == 1


def test_a_user_who_is_not_staff_cannot_change_a_chat_but_can_read_it(api_client: APIClient) -> None:
    chat = ChatFactory(is_active=True)
    api_client.force_login(reader_of(chat))

    patched = api_client.patch(f"{CHATS_URL}{chat.pk}/", {"is_active": False}, format="json")
    read = api_client.get(f"{CHATS_URL}{chat.pk}/")

    assert patched.status_code == 403
    assert read.status_code == 200
    chat.refresh_from_db()
    assert chat.is_active is True


def test_a_chat_cannot_be_replaced_with_put(staff_client: APIClient) -> None:
    chat = ChatFactory()

    response = staff_client.put(f"{CHATS_URL}{chat.pk}/", {"is_active": False}, format="json")

    assert response.status_code == 405
