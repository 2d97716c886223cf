import pytest
from django.test import Client
from django.urls import reverse

from analysis.models import AnalysisRun, Batch
from analysis.services import start_run
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import (
    BatchFactory,
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
BASE_URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def setup(django_capture_on_commit_callbacks) -> dict:
    return make_setup(BASE_URL)


def new_run(setup: dict) -> AnalysisRun:
    return start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )


def form_data(setup: dict) -> dict:
    return {
        "projects": [setup["project"].pk],
        "assignment": setup["assignment"].pk,
        "window_start": "2026-11-23T08:00",
        "window_end": "2026-11-24T20:00",
    }


def test_a_lead_starts_a_run_from_the_new_run_page(
    client: Client, setup, django_capture_on_commit_callbacks
) -> None:
    client.force_login(setup["lead"])
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("analysis:run-new"), form_data(setup))
    run = AnalysisRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("analysis:run-detail", args=[run.pk])
    assert run.status == AnalysisRun.Status.PENDING
    assert run.started_by == setup["lead"]
    assert run.config_snapshot["projects"][0]["version"] == "1.0.0"
    assert len(callbacks) == 1  # the Celery task, enqueued on commit


def test_an_overlapping_run_is_a_form_error(client: Client, setup) -> None:
    new_run(setup)
    client.force_login(setup["lead"])
    response = client.post(reverse("analysis:run-new"), form_data(setup))
    assert response.status_code == 400
    assert "overlapping window" in response.content.decode()
    assert AnalysisRun.objects.count() == 1


def test_a_backwards_window_is_a_field_error(client: Client, setup) -> None:
    client.force_login(setup["lead"])
    data = {**form_data(setup), "window_end": "2026-11-22T08:00"}
    response = client.post(reverse("analysis:run-new"), data)
    assert response.status_code == 400
    assert "must end after it starts" in response.content.decode()


def test_someone_who_leads_no_project_cannot_start_runs(client: Client, setup) -> None:
    client.force_login(UserFactory())
    assert client.get(reverse("analysis:run-new")).status_code == 403
    assert client.post(reverse("analysis:run-new"), form_data(setup)).status_code == 403


def test_a_lead_can_only_start_runs_of_the_projects_they_lead(client: Client, setup) -> None:
    other = ProjectFactory(name="Billing")
    ProjectConfigFactory(project=other)
    ProjectMembershipFactory(project=other, user=setup["lead"], role="member")
    client.force_login(setup["lead"])

    page = client.get(reverse("analysis:run-new"))
    response = client.post(reverse("analysis:run-new"), {**form_data(setup), "projects": [other.pk]})

    assert list(page.context["form"].fields["projects"].queryset) == [setup["project"]]
    assert response.status_code == 400
    assert "projects" in response.context["form"].errors
    assert not AnalysisRun.objects.exists()


def test_staff_may_start_runs_of_any_active_project(client: Client, setup) -> None:
    other = ProjectFactory(name="Billing")
    ProjectFactory(name="Archived", is_active=False)
    client.force_login(UserFactory(is_staff=True))

    page = client.get(reverse("analysis:run-new"))

    assert set(page.context["form"].fields["projects"].queryset) == {setup["project"], other}


def test_the_run_page_shows_the_state_and_its_config_version(client: Client, setup) -> None:
    run = new_run(setup)
    BatchFactory(run=run, index=0, status=Batch.Status.FAILED, error="boom")
    client.force_login(setup["lead"])
    html = client.get(reverse("analysis:run-detail", args=[run.pk])).content.decode()
    assert f"Run #{run.pk}" in html
    assert "Acme Mobile v1.0.0" in html
    assert "boom" in html
    assert f'data-state-url="{reverse("analysis:run-state", args=[run.pk])}"' in html


def test_the_state_snapshot_is_json_with_the_event_number(client: Client, setup) -> None:
    run = new_run(setup)
    client.force_login(setup["lead"])
    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()
    assert state["status"] == "pending"
    assert state["seq"] == 0
    assert state["batches_total"] == 0


def test_runs_of_other_projects_are_hidden(client: Client, setup) -> None:
    run = new_run(setup)
    client.force_login(UserFactory())
    assert client.get(reverse("analysis:run-detail", args=[run.pk])).status_code == 404
    assert f"#{run.pk}" not in client.get(reverse("analysis:run-list")).content.decode()


def test_the_run_list_shows_runs_to_their_team(client: Client, setup) -> None:
    run = new_run(setup)
    client.force_login(setup["lead"])
    html = client.get(reverse("analysis:run-list")).content.decode()
    assert f"#{run.pk}" in html
    assert "Acme Mobile" in html


def test_cancelling_from_the_page(client: Client, setup) -> None:
    run = new_run(setup)
    client.force_login(setup["lead"])
    response = client.post(reverse("analysis:run-cancel", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.CANCELLED
    assert f"Run {run.pk} cancelled." in response.content.decode()
    again = client.post(reverse("analysis:run-cancel", args=[run.pk]), follow=True)
    assert "cannot become cancelled" in again.content.decode()


def test_retry_without_failed_batches_says_so(client: Client, setup) -> None:
    run = new_run(setup)
    client.force_login(setup["lead"])
    response = client.post(reverse("analysis:run-retry", args=[run.pk]), follow=True)
    assert "has no failed batches" in response.content.decode()


def test_the_admin_cancels_runs_with_an_action(admin_client: Client, setup) -> None:
    run = new_run(setup)
    response = admin_client.post(
        reverse("admin:analysis_analysisrun_changelist"),
        {"action": "cancel_runs", "_selected_action": [run.pk]},
        follow=True,
    )
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.CANCELLED
    assert "1 run(s) cancelled." in response.content.decode()
