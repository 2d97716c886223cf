"""Every operation of the served schema refuses an anonymous client, and no write is open to
a signed-in user with no role (no staff flag, on no project's team)."""

from typing import Any

import pytest
from django.apps import apps
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import (
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    ChatFactory,
    MessageFactory,
    ProjectConfigFactory,
    ProjectFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
    WebhookEndpointFactory,
)

pytestmark = pytest.mark.django_db


def _operations() -> list[tuple[str, str]]:
    # Collected before the test database exists: the schema generator reads no rows.
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    ]


@pytest.fixture
def rows() -> dict[str, Any]:
    chat = ChatFactory()
    message = MessageFactory(chat=chat)
    project = ProjectFactory()
    ProjectConfigFactory(project=project, chats=[chat])
    assignment = AgentTaskAssignmentFactory()
    run = AnalysisRunFactory(assignment=assignment, projects=[project])
    return {
        "id": {
            "agents": assignment.agent_id,
            "assignments": assignment.pk,
            "chats": chat.pk,
            "messages": message.pk,
            "proposals": TaskProposalFactory(run=run, project=project, source_messages=[message]).pk,
            "providers": assignment.agent.provider_id,
            "runs": run.pk,
            "task-configs": assignment.task_config_id,
            "tasks": TaskFactory(project=project).pk,
            "webhooks": WebhookEndpointFactory(project=project).pk,
        },
        "slug": project.slug,
    }


def _url(path: str, rows: dict[str, Any]) -> str:
    resource = path.split("/")[3]
    return (
        path.replace("{id}", str(rows["id"].get(resource, 1)))
        .replace("{slug}", rows["slug"])
        .replace("{version}", "1.0.0")
    )


def _send(client: APIClient, method: str, url: str) -> int:
    return client.generic(method, url, data="{}", content_type="application/json").status_code


def _row_counts() -> dict[str, int]:
    labels = ("sources", "projects", "agents", "analysis", "proposals")
    return {
        model._meta.label: model.objects.count()
        for label in labels
        for model in apps.get_app_config(label).get_models()
    }


@pytest.mark.parametrize(("method", "path"), _operations())
def test_an_anonymous_client_is_asked_for_a_token(method: str, path: str, rows: dict[str, Any]) -> None:
    response = APIClient().generic(method, _url(path, rows), data="{}", content_type="application/json")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(("method", "path"), [op for op in _operations() if op[0] != "GET"])
def test_a_user_without_a_role_writes_nothing(method: str, path: str, rows: dict[str, Any]) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=UserFactory()).key}")

    before = _row_counts()

    status = _send(client, method, _url(path, rows))

    # 400 where the body is checked before the role: an empty body is refused either way.
    assert status in {400, 403, 404}
    assert _row_counts() == before
