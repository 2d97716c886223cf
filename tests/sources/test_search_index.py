"""Message search (`?search=` on the messages API, `search_messages`): indexed, and meaning
what it always meant: every term a case-insensitive substring of the text."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from sources.models import Message
from sources.selectors import message_list, search_messages
from sources.services import ingest_messages
from tests.factories import ChatFactory, MessageFactory, UserFactory

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


def test_a_search_finds_the_term_inside_words_in_any_case(staff_client: APIClient) -> None:
    for text in ("Redeployment tonight", "DEPLOY now", "deploy", "lunch?", "dep loy"):
        MessageFactory(text=text)

    assert found(staff_client, "deploy") == ["DEPLOY now", "Redeployment tonight", "deploy"]
    assert found(staff_client, "PLOY") == ["DEPLOY now", "Redeployment tonight", "deploy"]


def test_every_term_must_be_in_the_text_and_quotes_keep_a_phrase(staff_client: APIClient) -> None:
    for text in ("the login page is broken", "page one: login fails", "login works", "broken page"):
        MessageFactory(text=text)

    assert found(staff_client, "login page") == ["page one: login fails", "the login page is broken"]
    assert found(staff_client, "login,broken") == ["the login page is broken"]
    assert found(staff_client, '"login page"') == ["the login page is broken"]


def test_terms_shorter_than_a_trigram_still_match(staff_client: APIClient) -> None:
    for text in ("QA is done", "a qualm", "no"):
        MessageFactory(text=text)

    assert found(staff_client, "qa") == ["QA is done"]
    assert found(staff_client, "q") == ["QA is done", "a qualm"]


@pytest.mark.parametrize(
    "search",
    ['"50%" off', "under_score", "NEAR(a b)", "-minus", "a* OR b", "col:umn", "it's", '"un"closed', "^caret"],
)
def test_operators_of_the_index_are_searched_as_plain_text(staff_client: APIClient, search: str) -> None:
    texts = ['"50%" off today', "an under_score here", "NEAR(a b) c", "x -minus y", "a* OR b"]
    texts += ["col:umn", "it's fine", '"un"closed', "^caret"]
    for text in texts:
        MessageFactory(text=text)
    MessageFactory(text="nothing to see")

    results = found(staff_client, search)

    assert results, f"{search!r} found nothing"
    assert "nothing to see" not in results


def test_a_percent_or_underscore_is_not_a_wildcard(staff_client: APIClient) -> None:
    MessageFactory(text="50 percent")
    MessageFactory(text="underXscore")

    assert found(staff_client, "50%") == []
    assert found(staff_client, "under_score") == []


def test_text_in_other_alphabets_is_found(staff_client: APIClient) -> None:
    MessageFactory(text="Деплой завтра утром")
    MessageFactory(text="明天部署")
    MessageFactory(text="Deploy tomorrow")

    assert found(staff_client, "завтра") == ["Деплой завтра утром"]
    assert found(staff_client, "部署") == ["明天部署"]


def test_an_edit_is_searched_by_its_new_text_and_not_its_old_one(staff_client: APIClient) -> None:
    ingest_messages(chat=CHAT, messages=[message_in(1, "the login page is broken"), message_in(2, "lunch?")])

    ingest_messages(
        chat=CHAT, messages=[message_in(1, "the login page is fixed", edited_at=T0 + timedelta(hours=1))]
    )

    assert found(staff_client, "fixed") == ["the login page is fixed"]
    assert found(staff_client, "broken") == []
    assert found(staff_client, "login") == ["the login page is fixed"]


def test_messages_stored_in_bulk_are_searchable_at_once(staff_client: APIClient) -> None:
    ingest_messages(chat=CHAT, messages=[message_in(i, f"report number {i:04d}") for i in range(1, 301)])

    assert found(staff_client, "number 0150") == ["report number 0150"]
    response = staff_client.get(MESSAGES_URL, {"search": "report"})
    assert response.data["count"] == 300


def test_a_deleted_message_is_no_longer_found_and_others_are(staff_client: APIClient) -> None:
    gone = MessageFactory(text="deploy the old build")
    MessageFactory(text="deploy the new build")

    gone.delete()
    MessageFactory(text="deploy again")

    assert found(staff_client, "deploy") == ["deploy again", "deploy the new build"]
    assert found(staff_client, "old build") == []


def test_search_keeps_the_other_filters(staff_client: APIClient) -> None:
    chat, other = ChatFactory(), ChatFactory()
    MessageFactory(chat=chat, text="deploy here")
    MessageFactory(chat=other, text="deploy there")

    response = staff_client.get(MESSAGES_URL, {"search": "deploy", "chat": chat.pk})

    assert [m["text"] for m in response.data["results"]] == ["deploy here"]


def test_search_messages_narrows_a_queryset() -> None:
    wanted = MessageFactory(text="Ship the release")
    MessageFactory(text="Ship it")

    results = search_messages(message_list(), terms=["SHIP", "release"])

    assert list(results) == [wanted]
    assert list(search_messages(message_list(), terms=[])) == list(message_list())


def test_the_search_can_use_the_index() -> None:
    """The index serves the very query the selector writes: a change of either (Django's
    `icontains` SQL, the index's expression) that parts them shows here, not in production."""
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
        assert "message_text_trgm_idx" in plan
    else:
        assert "sources_message_fts" in plan and "VIRTUAL TABLE INDEX" in plan
