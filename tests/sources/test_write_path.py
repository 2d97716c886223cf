"""Chats are written by the `sources` services whether by the API or the admin: a rename or
a switch by `update_chat` (from the admin's change form and its list's switches alike), a
new chat by `get_or_create_chat` (as the bulk ingestion API makes one)."""

from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from sources.models import Chat
from tests.factories import ChatFactory, UserFactory

pytestmark = pytest.mark.django_db

CHATS = "/api/v1/chats/"
CHAT_FIELDS = ["title", "type", "username", "is_active"]
LONG_AGO = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def admin_api() -> APIClient:
    client = APIClient()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def stored_chat(chat: Chat) -> dict[str, Any]:
    return Chat.objects.values(*CHAT_FIELDS).get(pk=chat.pk)


def change_form(chat: Chat, **changes: Any) -> dict[str, Any]:
    """The admin's change form as a browser posts it: `is_active` only when ticked."""
    form = {"title": chat.title, "is_active": chat.is_active, **changes}
    if not form.pop("is_active"):
        return form
    return form | {"is_active": "on"}


def change_url(chat: Chat) -> str:
    return reverse("admin:sources_chat_change", args=[chat.pk])


def switched_off_in_the_list(client: Client, chat: Chat) -> Any:
    """The list's `is_active` column, unticked for `chat`, saved."""
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": str(chat.pk),
        "_save": "Save",
    }
    return client.post(reverse("admin:sources_chat_changelist"), data)


def test_the_api_and_the_admin_rename_and_switch_off_a_chat_alike(
    admin_api: APIClient, admin_client: Client
) -> None:
    by_api, by_admin = ChatFactory(username="team"), ChatFactory(username="team")

    response = admin_api.patch(
        f"{CHATS}{by_api.pk}/", {"title": "Backend", "is_active": False}, format="json"
    )
    page = admin_client.post(change_url(by_admin), change_form(by_admin, title="Backend", is_active=False))

    assert response.status_code == 200, response.data
    assert page.status_code == 302
    assert (
        stored_chat(by_api)
        == stored_chat(by_admin)
        == {
            "title": "Backend",
            "type": "supergroup",
            "username": "team",
            "is_active": False,
        }
    )


def test_the_api_and_the_admin_list_switch_a_chat_off_alike(
    admin_api: APIClient, admin_client: Client
) -> None:
    by_api, by_admin = ChatFactory(title="Ops"), ChatFactory(title="Ops")

    response = admin_api.patch(f"{CHATS}{by_api.pk}/", {"is_active": False}, format="json")
    page = switched_off_in_the_list(admin_client, by_admin)

    assert response.status_code == 200, response.data
    assert page.status_code == 302
    assert stored_chat(by_api) == stored_chat(by_admin) == stored_chat(by_api) | {"is_active": False}


def test_a_save_that_changes_nothing_writes_nothing_from_the_api_or_the_admin(
    admin_api: APIClient, admin_client: Client
) -> None:
    # `update_chat` writes only what differs from the stored row, `updated_at` with it.
    by_api, by_admin = ChatFactory(title="Ops"), ChatFactory(title="Ops")
    Chat.objects.filter(pk__in=[by_api.pk, by_admin.pk]).update(updated_at=LONG_AGO)

    response = admin_api.patch(f"{CHATS}{by_api.pk}/", {"title": "Ops", "is_active": True}, format="json")
    page = admin_client.post(change_url(by_admin), change_form(by_admin))

    assert response.status_code == 200, response.data
    assert page.status_code == 302
    assert set(Chat.objects.values_list("updated_at", flat=True)) == {LONG_AGO}


def test_a_rename_is_dated_from_the_api_and_the_admin(admin_api: APIClient, admin_client: Client) -> None:
    by_api, by_admin = ChatFactory(title="Ops"), ChatFactory(title="Ops")
    Chat.objects.filter(pk__in=[by_api.pk, by_admin.pk]).update(updated_at=LONG_AGO)

    admin_api.patch(f"{CHATS}{by_api.pk}/", {"title": "Operations"}, format="json")
    admin_client.post(change_url(by_admin), change_form(by_admin, title="Operations"))

    assert all(updated > LONG_AGO for updated in Chat.objects.values_list("updated_at", flat=True))


def test_what_telegram_owns_is_changed_neither_by_the_api_nor_by_the_admin(
    admin_api: APIClient, admin_client: Client
) -> None:
    by_api, by_admin = ChatFactory(username="team"), ChatFactory(username="team")
    telegram_owns = {"telegram_id": -42, "type": "channel", "username": "other"}

    response = admin_api.patch(f"{CHATS}{by_api.pk}/", {"title": "Backend", **telegram_owns}, format="json")
    page = admin_client.post(change_url(by_admin), change_form(by_admin, title="Backend", **telegram_owns))

    assert response.status_code == 200, response.data
    assert page.status_code == 302
    for chat in (by_api, by_admin):
        stored = Chat.objects.values("telegram_id", *CHAT_FIELDS).get(pk=chat.pk)
        assert stored == {
            "telegram_id": chat.telegram_id,
            "title": "Backend",
            "type": "supergroup",
            "username": "team",
            "is_active": True,
        }


def test_the_api_and_the_admin_create_the_same_chat(admin_api: APIClient, admin_client: Client) -> None:
    chat = {"title": "Backend team", "type": "supergroup", "username": "backend"}
    message = {"telegram_id": 1, "sent_at": LONG_AGO.isoformat(), "text": "Deploy at five"}

    response = admin_api.post(
        "/api/v1/messages/bulk/",
        {"chat": {"telegram_id": -1001, **chat}, "messages": [message]},
        format="json",
    )
    page = admin_client.post(
        reverse("admin:sources_chat_add"), {"telegram_id": -1002, **chat, "is_active": "on"}
    )

    assert response.status_code in (200, 201), response.data
    assert page.status_code == 302
    by_api, by_admin = Chat.objects.get(telegram_id=-1001), Chat.objects.get(telegram_id=-1002)
    assert stored_chat(by_api) == stored_chat(by_admin) == chat | {"is_active": True}


def test_a_chat_added_switched_off_in_the_admin_is_stored_off(admin_client: Client) -> None:
    page = admin_client.post(
        reverse("admin:sources_chat_add"), {"telegram_id": -1003, "title": "Quiet", "type": "group"}
    )

    assert page.status_code == 302
    assert Chat.objects.values("title", "is_active").get(telegram_id=-1003) == {
        "title": "Quiet",
        "is_active": False,
    }
