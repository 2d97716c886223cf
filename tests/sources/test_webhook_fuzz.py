"""Generated bodies thrown at the webhook over HTTP, with the right secret: updates of the
right shape holding values of any type, ids beyond 64 bits, NULs, lone surrogates,
missing keys, deep nesting and plain garbage. Each is answered 200 or 400, never a 5xx
(the test client raises the exception behind one), and a valid update is stored once.

Each example runs in a savepoint rolled back afterwards, so examples do not see each
other's rows. Run on SQLite by default and on PostgreSQL with DATABASE_URL.
"""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from sources.models import Chat, Message, TelegramUpdate
from sources.telegram import MESSAGE_KINDS

pytestmark = pytest.mark.django_db
SECRET = "s3cret-token_value"
URL = "/telegram/webhook/"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FUZZ = hypothesis_settings(
    max_examples=150,
    deadline=None,
    # No example database: nothing written into the tree.
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def webhook_secret(settings) -> None:
    settings.TELEGRAM_WEBHOOK_SECRET = SECRET


def post(client: Client, body: str | bytes) -> Any:
    return client.post(
        URL, data=body, content_type="application/json", headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )


def in_rolled_back_savepoint(check: Callable[..., None]) -> Callable[..., None]:
    def wrapped(*args: Any, **kwargs: Any) -> None:
        with transaction.atomic():
            check(*args, **kwargs)
            transaction.set_rollback(True)

    return wrapped


# Strategies

# Text with NULs, as Telegram never sends and a caller with the secret may.
texts = st.text(st.one_of(st.just("\x00"), st.characters()), max_size=30)
hostile_texts = st.text(
    st.one_of(st.just("\x00"), st.characters(), st.characters(categories=["Cs"])), max_size=30
)
ids = st.integers(INT64_MIN, INT64_MAX)
big_ints = st.one_of(
    st.sampled_from([2**63, INT64_MIN - 1, 2**64, 2**70, -(2**70), 10**30]), st.integers(min_value=2**63)
)
unix_times = st.integers(0, 4_102_444_800)  # up to 2100
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        big_ints,
        st.floats(allow_nan=False, allow_infinity=False),
        hostile_texts,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(hostile_texts, children, max_size=3)
    ),
    max_leaves=8,
)
chat_types = st.sampled_from(["private", "group", "supergroup", "channel", "forum"])
kinds = st.sampled_from(MESSAGE_KINDS)


def users(field: Callable[[st.SearchStrategy], st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"id": field(ids), "is_bot": field(st.booleans()), "first_name": field(texts)},
        optional={"last_name": field(texts), "username": field(texts)},
    )


def chats(field: Callable[[st.SearchStrategy], st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"id": field(ids), "type": field(chat_types)},
        optional={"title": field(texts), "username": field(texts), "first_name": field(texts)},
    )


def messages(field: Callable[[st.SearchStrategy], st.SearchStrategy], depth: int = 1) -> st.SearchStrategy:
    optional = {
        "from": field(users(field)),
        "sender_chat": field(chats(field)),
        "text": field(texts),
        "caption": field(texts),
        "edit_date": field(unix_times),
        "author_signature": field(texts),
        "forward_origin": field(
            st.fixed_dictionaries(
                {"type": st.just("hidden_user"), "date": field(unix_times), "sender_user_name": field(texts)}
            )
        ),
    }
    if depth:
        optional["reply_to_message"] = field(messages(field, depth - 1))
    return st.fixed_dictionaries(
        {"message_id": field(ids), "date": field(unix_times), "chat": field(chats(field))}, optional=optional
    )


def mostly(strategy: st.SearchStrategy, otherwise: st.SearchStrategy) -> st.SearchStrategy:
    """`strategy` four times in five, else `otherwise`: most fields of a hostile update are
    right, so that it gets past its first wrong one to the next."""
    return st.integers(0, 4).flatmap(lambda n: otherwise if n == 0 else strategy)


def valid(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy


def any_value(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """The right type, or anything at all: a big int, a string, a list, null..."""
    return mostly(strategy, st.one_of(big_ints, json_values))


valid_updates = st.fixed_dictionaries(
    {"update_id": st.integers(0, INT64_MAX), "kind": kinds, "message": messages(valid)}
).map(lambda u: {"update_id": u["update_id"], u["kind"]: u["message"]})


@st.composite
def hostile_updates(draw: st.DrawFn) -> dict[str, Any]:
    """The shape of an update, with any value in any field and keys left out."""
    update: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # the update_id is missing one time in ten
        update["update_id"] = draw(any_value(st.integers(0, INT64_MAX)))
    kind = draw(mostly(kinds, hostile_texts))
    update[kind] = draw(any_value(messages(any_value)))
    return update


def nested(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


deep_bodies = st.one_of(
    st.integers(1, 200_000).map(lambda n: nested(n, "")),
    st.integers(1, 200_000).map(lambda n: '{"update_id": 1, "message": ' + nested(n, "1") + "}"),
    st.integers(1, 2_000).map(lambda n: '{"update_id": 1, "message": ' + '{"a": ' * n + "1" + "}" * n + "}"),
)
garbage_bodies = st.one_of(st.text(max_size=50), st.binary(max_size=50))
# Half hostile updates, a tenth valid ones, the rest deep nesting and garbage.
hostile_bodies = st.sampled_from(
    [hostile_updates().map(json.dumps)] * 5
    + [valid_updates.map(json.dumps)]
    + [deep_bodies] * 2
    + [garbage_bodies] * 2
).flatmap(lambda bodies: bodies)


# Tests


def test_any_body_is_answered_200_or_400_and_a_400_writes_nothing(client: Client) -> None:
    @FUZZ
    @given(body=hostile_bodies)
    @in_rolled_back_savepoint
    def check(body: str | bytes) -> None:
        response = post(client, body)

        assert response.status_code in (200, 400), response.content
        event(f"{response.status_code} {response.json().get('result') or response.json().get('code')}")
        if response.status_code == 400:
            assert TelegramUpdate.objects.count() == 0
            assert Message.objects.count() == 0
            return
        assert TelegramUpdate.objects.count() == 1
        assert Message.objects.count() == (1 if response.json()["result"] == "stored" else 0)
        for text, author_name in Message.objects.values_list("text", "author_name"):
            assert "\x00" not in text + author_name
        assert not any("\x00" in title for title in Chat.objects.values_list("title", flat=True))

    check()


def test_a_valid_update_is_stored_once_without_nul_characters(client: Client) -> None:
    @FUZZ
    @given(update=valid_updates)
    @in_rolled_back_savepoint
    def check(update: dict[str, Any]) -> None:
        kind = next(key for key in update if key != "update_id")
        sent = update[kind]

        first = post(client, json.dumps(update))
        again = post(client, json.dumps(update))

        assert (first.status_code, first.json()["result"]) == (200, "stored"), first.content
        assert (again.status_code, again.json()["result"]) == (200, "duplicate")
        message = Message.objects.select_related("chat").get()
        assert (message.chat.telegram_id, message.telegram_id) == (sent["chat"]["id"], sent["message_id"])
        expected = (sent.get("text") or "").replace("\x00", "") or (sent.get("caption") or "").replace(
            "\x00", ""
        )
        assert message.text == expected
        assert "\x00" not in message.author_name + message.forwarded_from + message.chat.title
        assert "\\u0000" not in json.dumps(message.raw)

    check()
