"""The list endpoints the apps' own tests do not count: a page costs the same number of
queries whatever its length, with related rows (chats of a config, assignees of tasks,
deliveries of a webhook) on every row."""

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from projects.models import Project
from tests.factories import (
    ChatFactory,
    MessageFactory,
    ProjectConfigFactory,
    ProjectFactory,
    TaskFactory,
    UserFactory,
    WebhookDeliveryFactory,
    WebhookEndpointFactory,
)

pytestmark = pytest.mark.django_db


def _chats(project: Project, count: int) -> None:
    for chat in ChatFactory.create_batch(count):
        MessageFactory(chat=chat)


def _configs(project: Project, count: int) -> None:
    start = project.configs.count()
    for minor in range(start, start + count):
        ProjectConfigFactory(
            project=project, is_current=False, minor=minor + 1, chats=ChatFactory.create_batch(2)
        )


def _tasks(project: Project, count: int) -> None:
    TaskFactory.create_batch(count, project=project, assignee=UserFactory())


def _webhooks(project: Project, count: int) -> None:
    for endpoint in WebhookEndpointFactory.create_batch(count, project=project):
        WebhookDeliveryFactory(endpoint=endpoint)


@pytest.mark.parametrize(
    ("path", "make"),
    [
        ("/api/v1/chats/", _chats),
        ("/api/v1/projects/{slug}/configs/", _configs),
        ("/api/v1/tasks/", _tasks),
        ("/api/v1/webhooks/", _webhooks),
    ],
)
def test_a_list_costs_the_same_queries_however_long(path: str, make: Callable[[Project, int], None]) -> None:
    project = ProjectFactory()
    ProjectConfigFactory(project=project)
    api = APIClient()
    # A token, so the count does not depend on session handling.
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=UserFactory(is_staff=True)).key}")
    url = path.format(slug=project.slug)

    def count_queries() -> tuple[int, Any]:
        with CaptureQueriesContext(connection) as queries:
            response = api.get(url, {"page_size": 100})
        assert response.status_code == 200
        return len(queries), response.json()["count"]

    make(project, 2)
    few, few_rows = count_queries()
    make(project, 12)
    many, many_rows = count_queries()

    assert many_rows - few_rows == 12
    assert many == few
