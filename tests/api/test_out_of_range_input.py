"""Inputs the fuzz found: ids no database column holds are a 400 naming the field, and
responses with empty or null values fit the schema."""

from typing import Any

import pytest
import yaml
from django.urls import reverse
from rest_framework.test import APIClient

from projects.models import ProjectMembership
from tests.factories import (
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

BEYOND_INT64 = 10**20


@pytest.fixture
def staff() -> APIClient:
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/messages/", "chat"),
        ("/api/v1/tasks/", "project"),
        ("/api/v1/tasks/", "assignee"),
        ("/api/v1/runs/", "project"),
        ("/api/v1/proposals/", "project"),
        ("/api/v1/proposals/", "run"),
    ],
)
@pytest.mark.parametrize("value", [BEYOND_INT64, 0, -5, "1.5"])
def test_an_id_filter_out_of_range_is_a_field_error(
    staff: APIClient, path: str, field: str, value: Any
) -> None:
    response = staff.get(path, {field: value})

    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_an_id_filter_in_range_still_filters(staff: APIClient) -> None:
    proposal = TaskProposalFactory()
    TaskProposalFactory()

    response = staff.get("/api/v1/proposals/", {"project": proposal.project_id})

    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [proposal.pk]


def test_a_project_change_with_an_id_beyond_int64_is_a_field_error(staff: APIClient) -> None:
    project = ProjectFactory()
    ProjectConfigFactory(project=project)
    before = project.configs.count()

    response = staff.patch(f"/api/v1/projects/{project.slug}/", {"chats": [BEYOND_INT64]}, format="json")

    assert response.status_code == 400
    assert "chats" in response.json()
    assert project.configs.count() == before


def test_a_new_project_with_a_team_id_beyond_int64_is_a_field_error(staff: APIClient) -> None:
    response = staff.post(
        "/api/v1/projects/",
        {"name": "Overflow", "team": [{"user_id": BEYOND_INT64, "role": "lead"}]},
        format="json",
    )

    assert response.status_code == 400
    assert "team" in response.json()


def _schema(client: APIClient) -> dict[str, Any]:
    return yaml.safe_load(client.get(reverse("api-schema")).content)


def test_a_proposal_without_a_similar_one_fits_the_schema(staff: APIClient) -> None:
    proposal = TaskProposalFactory()

    body = staff.get(f"/api/v1/proposals/{proposal.pk}/").json()
    kind = _schema(staff)["components"]["schemas"]["Proposal"]["properties"]["similarity_kind"]

    assert body["similarity_kind"] == ""
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in kind["oneOf"]} == {"SimilarityKindEnum", "BlankEnum"}


def test_a_version_saved_without_an_author_fits_the_schema(staff: APIClient) -> None:
    lead = UserFactory()
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=lead, role=ProjectMembership.Role.LEAD)
    config = ProjectConfigFactory(project=project, author=None)

    body = staff.get(f"/api/v1/projects/{project.slug}/configs/{config.version}/").json()
    author = _schema(staff)["components"]["schemas"]["Config"]["properties"]["author"]

    assert body["author"] is None
    assert author["nullable"] is True
