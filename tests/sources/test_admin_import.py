import json
import logging
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from sources.models import Chat, Message
from tests.factories import UserFactory
from tests.sources.test_import_export import SMALL_EXPORT, chat_export, message

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:sources_chat_import_export")
CHANGELIST_URL = reverse("admin:sources_chat_changelist")


def upload(data: Any, name: str = "result.json") -> SimpleUploadedFile:
    content = data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False, indent=1).encode()
    return SimpleUploadedFile(name, content, content_type="application/json")


def shown_messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_chat_changelist_links_to_the_import_page(admin_client: Client) -> None:
    html = admin_client.get(CHANGELIST_URL).content.decode()

    assert f'href="{IMPORT_URL}"' in html
    assert "Import Telegram export" in html


def test_the_import_page_shows_an_upload_form(admin_client: Client) -> None:
    response = admin_client.get(IMPORT_URL)

    html = response.content.decode()
    assert response.status_code == 200
    assert 'enctype="multipart/form-data"' in html
    assert 'type="file" name="export"' in html
    assert 'name="chat_id"' in html
    assert "csrfmiddlewaretoken" in html


def test_uploading_an_export_imports_it_and_reports_the_counts(admin_client: Client) -> None:
    response = admin_client.post(IMPORT_URL, {"export": upload(SMALL_EXPORT)}, follow=True)

    assert response.redirect_chain == [(CHANGELIST_URL, 302)]
    assert shown_messages(response) == [
        "Imported 4 new, updated 0, unchanged 0, skipped 1 (service 1) from 1 chat(s)."
    ]
    chat = Chat.objects.get()
    assert (chat.telegram_id, chat.title) == (-1001876543210, "Mobile")
    assert set(Message.objects.filter(chat=chat).values_list("telegram_id", flat=True)) == {2, 3, 4, 5}


def test_uploading_the_same_export_again_reports_it_unchanged(admin_client: Client) -> None:
    admin_client.post(IMPORT_URL, {"export": upload(SMALL_EXPORT)}, follow=True)

    response = admin_client.post(IMPORT_URL, {"export": upload(SMALL_EXPORT)}, follow=True)

    assert shown_messages(response) == [
        "Imported 0 new, updated 0, unchanged 4, skipped 1 (service 1) from 1 chat(s)."
    ]
    assert Chat.objects.count() == 1
    assert Message.objects.count() == 4


def test_a_large_upload_is_imported_from_its_temporary_file(admin_client: Client, settings: Any) -> None:
    # Above this size Django writes the upload to disk rather than keeping it in memory.
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100
    export = chat_export([message(i, f"message {i}") for i in range(1, 51)])

    response = admin_client.post(IMPORT_URL, {"export": upload(export)}, follow=True)

    assert shown_messages(response) == ["Imported 50 new, updated 0, unchanged 0, skipped 0 from 1 chat(s)."]
    assert Message.objects.count() == 50


def test_the_progress_of_each_chunk_is_logged(admin_client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sources.admin"):
        admin_client.post(IMPORT_URL, {"export": upload(SMALL_EXPORT)})

    assert [r.getMessage() for r in caplog.records if r.name == "sources.admin"] == [
        "Importing result.json: 5 messages read, 4 new, 0 updated, 0 unchanged, 1 skipped"
    ]


def test_the_chat_id_imports_only_that_chat(admin_client: Client) -> None:
    account = {
        "chats": {
            "list": [
                {"name": "A", "type": "personal_chat", "id": 11, "messages": [message(1, "a")]},
                {"name": "B", "type": "public_channel", "id": 22, "messages": [message(1, "b")]},
            ]
        }
    }

    admin_client.post(IMPORT_URL, {"export": upload(account), "chat_id": "22"})

    assert list(Chat.objects.values_list("title", flat=True)) == ["B"]


def test_a_file_that_is_not_json_is_refused_and_writes_nothing(admin_client: Client) -> None:
    notes = upload(b"Meeting notes: ship on Friday\n", name="notes.txt")

    response = admin_client.post(IMPORT_URL, {"export": notes})

    assert response.status_code == 200
    assert shown_messages(response) == ["notes.txt is not a Telegram Desktop export: it is not JSON."]
    # The admin capitalises a message's first letter.
    assert "Notes.txt is not a Telegram Desktop export: it is not JSON." in response.content.decode()
    assert not Chat.objects.exists()
    assert not Message.objects.exists()


def test_json_that_is_not_an_export_is_refused_and_writes_nothing(admin_client: Client) -> None:
    package = upload({"name": "package", "version": "1.0.0"}, name="package.json")

    response = admin_client.post(IMPORT_URL, {"export": package})

    assert response.status_code == 200
    assert shown_messages(response) == [
        "package.json is not a Telegram Desktop export: it has no list of messages."
    ]
    assert not Chat.objects.exists()


def test_posting_without_a_file_shows_a_field_error(admin_client: Client) -> None:
    response = admin_client.post(IMPORT_URL, {})

    assert response.status_code == 200
    assert response.context["form"].errors == {"export": ["This field is required."]}
    assert "This field is required." in response.content.decode()
    assert not list(get_messages(response.wsgi_request))


def test_staff_without_the_permission_to_add_messages_is_refused(client: Client) -> None:
    user = UserFactory(is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_chat"))
    client.force_login(user)

    page = client.get(IMPORT_URL)
    upload_response = client.post(IMPORT_URL, {"export": upload(SMALL_EXPORT)})
    changelist = client.get(CHANGELIST_URL).content.decode()

    assert (page.status_code, upload_response.status_code) == (403, 403)
    assert not Chat.objects.exists()
    assert "Import Telegram export" not in changelist


def test_staff_with_the_permission_to_add_messages_may_import(client: Client) -> None:
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_chat", "add_message"]))
    client.force_login(user)

    response = client.post(IMPORT_URL, {"export": upload(SMALL_EXPORT)})

    assert response.status_code == 302
    assert Message.objects.count() == 4


def test_the_page_requires_a_login(client: Client) -> None:
    response = client.get(IMPORT_URL)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
