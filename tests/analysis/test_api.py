import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from analysis.models import AnalysisRun
from tests.analysis.helpers import make_setup
from tests.factories import BatchFactory, ProjectMembershipFactory, UserFactory

pytestmark = pytest.mark.django_db
RUNS = "/api/v1/runs/"


@pytest.fixture
def setup() -> dict:
    return make_setup("http://127.0.0.1:9/v1")


def payload(setup: dict, **changes: object) -> dict:
    return {
        "window_start": "2026-11-23T08:00:00Z",
        "window_end": "2026-11-24T20:00:00Z",
        "projects": [setup["project"].pk],
        "assignment": setup["assignment"].pk,
        **changes,
    }


def client_for(user: object) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_lead_starts_a_run_and_gets_it_back(setup, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(setup["lead"]).post(RUNS, payload(setup), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["config_versions"] == [{"project": "acme-mobile", "version": "1.0.0"}]
    assert len(callbacks) == 1
    assert AnalysisRun.objects.get().started_by == setup["lead"]


def test_an_overlapping_run_is_a_409(setup) -> None:
    client = client_for(setup["lead"])
    client.post(RUNS, payload(setup), format="json")
    response = client.post(RUNS, payload(setup, window_start="2026-11-24T00:00:00Z"), format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "run_overlaps"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"window_end": "2026-11-22T00:00:00Z"}, "window_end"),
        ({"window_start": "2026-11-23T08:00:00"}, "window_start"),
        ({"projects": []}, "projects"),
        ({"assignment": 999999}, "assignment"),
    ],
)
def test_bad_fields_are_400_with_field_errors(setup, changes: dict, field: str) -> None:
    response = client_for(setup["lead"]).post(RUNS, payload(setup, **changes), format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert AnalysisRun.objects.count() == 0


def test_a_user_who_leads_no_project_cannot_start_runs(setup) -> None:
    member = ProjectMembershipFactory(project=setup["project"], role="reviewer").user
    outsider = UserFactory()

    refused = client_for(member).post(RUNS, payload(setup), format="json")
    unknown = client_for(outsider).post(RUNS, payload(setup), format="json")

    assert refused.status_code == 403
    # To someone not on its team, the project does not exist.
    assert (unknown.status_code, list(unknown.json())) == (400, ["projects"])
    assert AnalysisRun.objects.count() == 0


def test_cancel_and_the_batches_of_a_run(setup) -> None:
    client = client_for(setup["lead"])
    run_id = client.post(RUNS, payload(setup), format="json").json()["id"]
    BatchFactory(run_id=run_id, index=0)
    assert client.get(f"{RUNS}{run_id}/batches/").json()[0]["index"] == 0
    response = client.post(f"{RUNS}{run_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert client.post(f"{RUNS}{run_id}/cancel/").status_code == 409
    assert client.post(f"{RUNS}{run_id}/retry/").status_code == 400


def test_runs_are_listed_to_their_team_only(setup) -> None:
    client_for(setup["lead"]).post(RUNS, payload(setup), format="json")
    assert client_for(setup["lead"]).get(RUNS).json()["count"] == 1
    assert client_for(UserFactory()).get(RUNS).json()["count"] == 0
    assert APIClient().get(RUNS).status_code == 401


def test_the_run_list_costs_the_same_queries_for_more_runs(setup, django_assert_max_num_queries) -> None:
    client = client_for(setup["lead"])
    for day in range(1, 4):
        client.post(
            RUNS,
            payload(setup, window_start=f"2026-10-0{day}T00:00:00Z", window_end=f"2026-10-0{day}T12:00:00Z"),
            format="json",
        )
    with django_assert_max_num_queries(8):
        assert client.get(RUNS).json()["count"] == 3
    assert reverse("api:analysis:run-list") == RUNS
