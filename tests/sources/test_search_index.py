"""Message search (`?search=` on the messages API): words found by their start through the
word index (PostgreSQL's tsvector, SQLite's FTS5), every word needed, the user's text never
read as the index's query syntax; and pages whose count stops at a cap."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

import sources.search
from sources.models import Message
from sources.selectors import message_list, search_messages
from sources.services import ingest_messages
from tests.factories import (
    ChatFactory,
    MessageFactory,
    ProjectConfigFactory,
    ProjectMembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

MESSAGES_URL = "/api/v1/messages/"
T0 = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
CHAT = {"telegram_id": -1001234567890, "title": "Backend team", "type": "supergroup"}


@pytest.fixture
def staff_client() -> APIClient:
    client = APIClient()
    client.force_login(UserFactory(is_staff=True))
    return client


def found(client: APIClient, search: str) -> list[str]:
    response = client.get(MESSAGES_URL, {"search": search})
    assert response.status_code == 200, response.data
    return sorted(m["text"] for m in response.data["results"])


def message_in(telegram_id: int, text: str, **overrides: Any) -> dict[str, Any]:
    return {
        "telegram_id": telegram_id,
        "sent_at": T0 + timedelta(minutes=telegram_id),
        "text": text,
        **overrides,
    }


def test_a_search_finds_a_word_or_its_start_in_any_case(staff_client: APIClient) -> None:
    for text in ("DEPLOY now", "we deployed it", "Redeploy tonight", "lunch?", "dep loy"):
        MessageFactory(text=text)

    assert found(staff_client, "deploy") == ["DEPLOY now", "we deployed it"]
    assert found(staff_client, "DEPLOYED") == ["we deployed it"]
    assert found(staff_client, "dep") == ["DEPLOY now", "dep loy", "we deployed it"]


def test_a_search_does_not_find_the_middle_of_a_word(staff_client: APIClient) -> None:
    MessageFactory(text="Redeploy tonight")

    assert found(staff_client, "ploy") == []


def test_every_word_must_be_there_and_quotes_keep_a_phrase(staff_client: APIClient) -> None:
    for text in ("the login page is broken", "page one: login fails", "login works", "broken page"):
        MessageFactory(text=text)

    assert found(staff_client, "login page") == ["page one: login fails", "the login page is broken"]
    assert found(staff_client, "login,broken") == ["the login page is broken"]
    assert found(staff_client, '"login page"') == ["the login page is broken"]


def test_text_in_other_alphabets_is_found_in_any_case(staff_client: APIClient) -> None:
    MessageFactory(text="Деплой ЗАВТРА утром")
    MessageFactory(text="明天部署")
    MessageFactory(text="Deploy tomorrow")

    assert found(staff_client, "завтра") == ["Деплой ЗАВТРА утром"]
    assert found(staff_client, "деп") == ["Деплой ЗАВТРА утром"]
    assert found(staff_client, "明天") == ["明天部署"]


@pytest.mark.parametrize(
    "search",
    [
        "it's",
        "'deploy",
        '"deploy',
        'deploy"',
        "deploy & rollback",
        "deploy | x",
        "!deploy",
        "deploy:*",
        "deploy:A",
        "(deploy)",
        "deploy\\",
        "\\'deploy",
        "deploy <-> x",
        "deploy <2> x",
        "NEAR(deploy x)",
        "deploy OR x",
        "deploy NOT x",
        "-deploy",
        "^deploy",
        "deploy*",
        "text:deploy",
        "{text}: deploy",
        "'''",
        "deploy ''",
    ],
)
def test_query_syntax_in_a_search_is_taken_as_text(staff_client: APIClient, search: str) -> None:
    MessageFactory(text="deploy at noon, it's fine")
    MessageFactory(text="nothing to see")

    results = found(staff_client, search)

    assert "nothing to see" not in results


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("it's", ["it's done"]),
        ("(deploy)", ["deploy at noon"]),
        ("deploy:*", ["deploy at noon"]),
        ("!deploy", ["deploy at noon"]),
        ('"deploy at"', ["deploy at noon"]),
        ("deploy & noon", ["deploy at noon"]),
        ("deploy | done", []),
    ],
)
def test_operators_around_words_separate_them_like_spaces(
    staff_client: APIClient, search: str, expected: list[str]
) -> None:
    MessageFactory(text="deploy at noon")
    MessageFactory(text="it's done")

    assert found(staff_client, search) == expected


@pytest.mark.parametrize("search", ["!!!", "&", "|", "()", ":*", "'", '"', "\\", "_", "-", "..."])
def test_a_search_of_punctuation_alone_finds_nothing(staff_client: APIClient, search: str) -> None:
    MessageFactory(text="!!! & | () :* ' \" \\ _ - ...")
    MessageFactory(text="deploy")

    assert found(staff_client, search) == []


def test_a_search_with_a_nul_character_is_refused(staff_client: APIClient) -> None:
    MessageFactory(text="deploy")

    response = staff_client.get(MESSAGES_URL, {"search": "dep\x00loy"})

    assert response.status_code == 400


def test_a_blank_search_lists_every_message(staff_client: APIClient) -> None:
    MessageFactory.create_batch(3)

    response = staff_client.get(MESSAGES_URL, {"search": "  ,  "})

    assert response.data["count"] == 3


def test_a_long_search_is_answered(staff_client: APIClient) -> None:
    MessageFactory(text="alpha beta")

    assert found(staff_client, " ".join(f"w{i}" for i in range(500))) == []
    assert found(staff_client, "alpha " * 200) == ["alpha beta"]
    assert found(staff_client, "a" * 3000) == []


def test_an_edit_is_found_by_its_new_text_and_not_its_old_one(staff_client: APIClient) -> None:
    ingest_messages(chat=CHAT, messages=[message_in(1, "the login page is broken"), message_in(2, "lunch?")])

    ingest_messages(
        chat=CHAT, messages=[message_in(1, "the login page is fixed", edited_at=T0 + timedelta(hours=1))]
    )

    assert found(staff_client, "fixed") == ["the login page is fixed"]
    assert found(staff_client, "broken") == []
    assert found(staff_client, "login") == ["the login page is fixed"]


def test_messages_stored_in_bulk_are_found_at_once(staff_client: APIClient) -> None:
    ingest_messages(chat=CHAT, messages=[message_in(i, f"report number{i:04d}") for i in range(1, 301)])

    assert found(staff_client, "number0150") == ["report number0150"]
    assert staff_client.get(MESSAGES_URL, {"search": "report"}).data["count"] == 300


def test_a_deleted_message_is_not_found(staff_client: APIClient) -> None:
    gone = MessageFactory(text="deploy the old build")
    MessageFactory(text="deploy the new build")

    gone.delete()
    MessageFactory(text="deploy again")

    assert found(staff_client, "deploy") == ["deploy again", "deploy the new build"]
    assert found(staff_client, "old") == []


def test_messages_of_a_deleted_chat_are_not_found(staff_client: APIClient) -> None:
    chat = ChatFactory()
    MessageFactory(chat=chat, text="deploy here")
    MessageFactory(text="deploy there")

    chat.delete()

    assert found(staff_client, "deploy") == ["deploy there"]


def test_a_member_finds_only_messages_of_chats_they_see() -> None:
    seen, unseen = ChatFactory(), ChatFactory()
    MessageFactory(chat=seen, text="deploy here")
    MessageFactory(chat=unseen, text="deploy there")
    project = ProjectConfigFactory(chats=[seen]).project
    client = APIClient()
    client.force_login(ProjectMembershipFactory(project=project).user)

    assert found(client, "deploy") == ["deploy here"]
    assert found(client, "there") == []


def test_a_search_keeps_the_other_filters_and_the_ordering(staff_client: APIClient) -> None:
    chat, other = ChatFactory(), ChatFactory()
    first = MessageFactory(chat=chat, text="deploy one", sent_at=T0)
    second = MessageFactory(chat=chat, text="deploy two", sent_at=T0 + timedelta(hours=1))
    MessageFactory(chat=other, text="deploy there", sent_at=T0)

    response = staff_client.get(MESSAGES_URL, {"search": "deploy", "chat": chat.pk, "ordering": "-sent_at"})

    assert [m["id"] for m in response.data["results"]] == [second.pk, first.pk]


def test_search_messages_narrows_a_queryset() -> None:
    wanted = MessageFactory(text="Ship the release")
    MessageFactory(text="Ship it")

    assert list(search_messages(message_list(), terms=["SHIP", "rel"])) == [wanted]
    assert list(search_messages(message_list(), terms=[])) == list(message_list())
    assert list(search_messages(message_list(), terms=["...", "?"])) == []


def test_the_search_uses_the_word_index() -> None:
    """The index serves the very query the selector writes: a change of either that parts
    them shows here, not in production."""
    MessageFactory.create_batch(3)
    query = search_messages(Message.objects.order_by(), terms=["deploy"]).values("pk")
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A table of three rows is read whole unless sequential scans are ruled out.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(str(row) for row in cursor.fetchall())

    if connection.vendor == "postgresql":
        assert "message_search_vector_idx" in plan
    else:
        assert "sources_message_fts" in plan and "VIRTUAL TABLE INDEX" in plan


# The count of a page


@pytest.fixture
def count_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """A cap of 4 rows and pages of 2, to see at a few rows what a page meets past 10,000."""
    monkeypatch.setattr(sources.search, "COUNT_CAP", 4)
    monkeypatch.setattr(sources.search.CappedCountPagination, "page_size", 2)
    return 4


def test_a_count_past_the_cap_says_it_is_capped(staff_client: APIClient, count_cap: int) -> None:
    for i in range(7):
        MessageFactory(text=f"deploy {i}", sent_at=T0 + timedelta(minutes=i))
    MessageFactory(text="lunch?")

    page = staff_client.get(MESSAGES_URL, {"search": "deploy"}).data

    assert page["count"] == count_cap
    assert page["count_is_capped"] is True
    assert page["next"] is not None


def test_a_count_under_the_cap_is_exact(staff_client: APIClient, count_cap: int) -> None:
    for i in range(4):
        MessageFactory(text=f"deploy {i}")
    MessageFactory(text="lunch?")

    page = staff_client.get(MESSAGES_URL, {"search": "deploy"}).data

    assert (page["count"], page["count_is_capped"]) == (4, False)
    assert staff_client.get(MESSAGES_URL).data["count"] == count_cap
    assert staff_client.get(MESSAGES_URL).data["count_is_capped"] is True


def test_pages_past_the_cap_are_served_to_the_last(staff_client: APIClient, count_cap: int) -> None:
    texts = [f"deploy {i}" for i in range(11)]
    for i, text in enumerate(texts):
        MessageFactory(text=text, sent_at=T0 + timedelta(minutes=i))

    pages = []
    url: str | None = f"{MESSAGES_URL}?search=deploy"
    while url:
        page = staff_client.get(url).data
        pages.append(page)
        url = page["next"]

    assert [m["text"] for page in pages for m in page["results"]] == texts
    assert [page["count_is_capped"] for page in pages] == [True, True, True, True, True, False]
    assert pages[-1]["count"] == 11
    assert staff_client.get(MESSAGES_URL, {"search": "deploy", "page": 7}).status_code == 404
    assert staff_client.get(MESSAGES_URL, {"search": "deploy", "page": 10**30}).status_code == 404
    assert staff_client.get(MESSAGES_URL, {"search": "deploy", "page": "last"}).status_code == 200
