import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from analysis.models import AnalysisRun, Batch
from analysis.services import begin_run, plan_run, start_run
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import (
    BatchFactory,
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
BASE_URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def setup(django_capture_on_commit_callbacks) -> dict:
    return make_setup(BASE_URL)


def new_run(setup: dict, *, window_start=WINDOW_START, window_end=WINDOW_END) -> AnalysisRun:
    return start_run(
        window_start=window_start,
        window_end=window_end,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )


def planned(run: AnalysisRun) -> AnalysisRun:
    """The run begun and its batches planned, as its task does before queueing them."""
    begin_run(run_id=run.pk)
    plan_run(run_id=run.pk)
    run.refresh_from_db()
    return run


def with_batches(setup: dict) -> AnalysisRun:
    """A running run with a done batch (two proposals), a failed one and a pending one."""
    run = new_run(setup)
    AnalysisRun.objects.filter(pk=run.pk).update(
        status=AnalysisRun.Status.RUNNING, batches_total=3, batches_done=1, batches_failed=1, event_seq=7
    )
    done = BatchFactory(
        run=run, index=0, status=Batch.Status.DONE, message_ids=[1, 2, 3], token_count=50, attempts=1
    )
    TaskProposalFactory.create_batch(2, run=run, batch=done, project=setup["project"])
    BatchFactory(
        run=run,
        index=1,
        status=Batch.Status.FAILED,
        message_ids=[4, 5],
        token_count=40,
        attempts=3,
        llm_seconds=1.23456,
        error="Fake provider kept answering with server errors (3 attempts).",
        error_kind="server_error",
    )
    BatchFactory(run=run, index=2, message_ids=[6], token_count=10)
    return run


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
    assert state["batches"] == []
    assert state["notice"] == ""


def test_the_state_snapshot_has_every_batch_with_its_error(client: Client, setup) -> None:
    run = with_batches(setup)
    client.force_login(setup["lead"])

    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()

    assert state["seq"] == 7
    assert state["batches"] == [
        {
            "index": 0,
            "status": "done",
            "messages": 3,
            "tokens": 50,
            "proposals": 2,
            "attempts": 1,
            "llm_seconds": 0.0,
            "error": "",
            "error_kind": "",
        },
        {
            "index": 1,
            "status": "failed",
            "messages": 2,
            "tokens": 40,
            "proposals": 0,
            "attempts": 3,
            "llm_seconds": 1.235,
            "error": "Fake provider kept answering with server errors (3 attempts).",
            "error_kind": "server_error",
        },
        {
            "index": 2,
            "status": "pending",
            "messages": 1,
            "tokens": 10,
            "proposals": 0,
            "attempts": 0,
            "llm_seconds": 0.0,
            "error": "",
            "error_kind": "",
        },
    ]
    # The bar's parts: a third done, a third failed.
    assert (state["progress_percent"], state["done_percent"], state["failed_percent"]) == (67, 34, 33)
    assert state["progress_label"] == "1 of 3 batches done, 1 failed"


def test_the_state_snapshot_costs_the_same_queries_for_more_batches(client: Client, setup) -> None:
    run = with_batches(setup)
    client.force_login(setup["lead"])
    url = reverse("analysis:run-state", args=[run.pk])
    client.get(url)  # the session and the user, cached from here on
    with CaptureQueriesContext(connection) as few:
        assert len(client.get(url).json()["batches"]) == 3
    for index in range(3, 23):
        batch = BatchFactory(run=run, index=index, status=Batch.Status.DONE, message_ids=[index])
        TaskProposalFactory(run=run, batch=batch, project=setup["project"])

    with CaptureQueriesContext(connection) as many:
        assert len(client.get(url).json()["batches"]) == 23

    assert len(many) == len(few)


def test_the_run_page_renders_batches_and_a_failed_part_of_the_bar_without_javascript(
    client: Client, setup
) -> None:
    run = with_batches(setup)
    client.force_login(setup["lead"])

    html = client.get(reverse("analysis:run-detail", args=[run.pk])).content.decode()

    rows = re.findall(r'<tr data-batch="(\d+)" data-status="(\w+)">', html)
    assert rows == [("0", "done"), ("1", "failed"), ("2", "pending")]
    assert "Fake provider kept answering with server errors (3 attempts)." in html
    assert 'role="progressbar"' in html
    assert 'aria-valuenow="67"' in html
    assert 'aria-valuetext="1 of 3 batches done, 1 failed"' in html
    assert 'data-part="done" style="width: 34%"' in html
    assert 'data-part="failed" style="width: 33%"' in html


def test_a_run_with_no_message_in_its_window_says_so(client: Client, setup) -> None:
    earlier = WINDOW_START - timedelta(days=7)
    run = new_run(setup, window_start=earlier, window_end=earlier + timedelta(hours=12))
    client.force_login(setup["lead"])
    page_url = reverse("analysis:run-detail", args=[run.pk])
    before = client.get(page_url).content.decode()

    run = planned(run)
    html = client.get(page_url).content.decode()
    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()

    assert "No messages in this window" not in before  # pending: it has not looked yet
    assert (run.status, run.messages_fetched, run.batches_total) == ("completed", 0, 0)
    expected = (
        "No messages in this window (from 2026-11-16 08:00 to 2026-11-16 20:00) in the chats of its "
        "projects: choose a wider window."
    )
    assert expected in html
    assert state["notice"] == expected
    assert "No batches." in html


def test_a_run_whose_messages_the_prefilter_all_dropped_says_so(client: Client) -> None:
    setup = make_setup(BASE_URL, lines=["ok", "👍", "/start"])
    run = planned(new_run(setup))
    client.force_login(setup["lead"])

    html = client.get(reverse("analysis:run-detail", args=[run.pk])).content.decode()

    assert (run.status, run.messages_fetched, run.messages_kept) == ("completed", 3, 0)
    assert (
        "The prefilter dropped all 3 messages of this window (from 2026-11-23 08:00 to 2026-11-24 20:00): "
        "acknowledgement 1, bot command 1, emoji only 1. Nothing was left to send to the LLM"
    ) in html
    assert "No messages in this window" not in html


def test_a_run_that_analysed_messages_shows_no_notice(client: Client, setup) -> None:
    run = with_batches(setup)
    AnalysisRun.objects.filter(pk=run.pk).update(
        status=AnalysisRun.Status.COMPLETED, messages_fetched=6, messages_kept=6
    )
    client.force_login(setup["lead"])

    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()

    assert state["status"] == "completed"
    assert state["notice"] == ""


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


@pytest.mark.parametrize(
    ("status", "failed", "shown"),
    [
        ("pending", 0, {"Cancel run"}),
        ("running", 1, {"Cancel run"}),
        ("completed", 1, {"Retry failed batches"}),
        ("completed", 0, set()),
        ("failed", 2, {"Retry failed batches"}),
        ("cancelled", 1, set()),
        ("closed", 1, set()),
    ],
)
def test_the_run_page_offers_only_the_actions_that_apply(
    client: Client, setup, status: str, failed: int, shown: set[str]
) -> None:
    run = new_run(setup)
    AnalysisRun.objects.filter(pk=run.pk).update(status=status, batches_total=2, batches_failed=failed)
    client.force_login(setup["lead"])

    html = client.get(reverse("analysis:run-detail", args=[run.pk])).content.decode()
    state = client.get(reverse("analysis:run-state", args=[run.pk])).json()

    visible = {
        label
        for label in ("Cancel run", "Retry failed batches")
        if re.search(
            rf'<form [^>]*data-show="[a-z_]+"(?! hidden)>[^<]*<input[^>]*><button[^>]*>{label}<', html
        )
    }
    assert visible == shown
    assert {"Cancel run": state["can_cancel"], "Retry failed batches": state["can_retry"]} == {
        label: label in shown for label in ("Cancel run", "Retry failed batches")
    }


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


def completed_with(setup: dict, *proposals: tuple[str, float]) -> AnalysisRun:
    run = new_run(setup)
    AnalysisRun.objects.filter(pk=run.pk).update(status=AnalysisRun.Status.COMPLETED, batches_total=1)
    for status, confidence in proposals:
        TaskProposalFactory(run=run, project=setup["project"], status=status, confidence=confidence)
    return run


def test_closing_from_the_page_is_refused_with_the_reason_while_proposals_wait(client: Client, setup) -> None:
    run = completed_with(setup, ("pending", 0.95), ("approved", 0.8))
    client.force_login(setup["lead"])

    confirmation = client.get(reverse("analysis:run-close", args=[run.pk])).content.decode()
    response = client.post(reverse("analysis:run-close", args=[run.pk]), follow=True)

    assert "1 proposal of this run still waits for review" in confirmation
    assert "Yes, close the run" not in confirmation
    assert f"Run {run.pk} still has 1 pending proposal(s)." in response.content.decode()
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.COMPLETED


def test_a_closed_run_shows_its_review_figures_per_band(client: Client, setup) -> None:
    run = completed_with(setup, ("approved", 0.95), ("approved", 0.95), ("rejected", 0.95), ("rejected", 0.5))
    client.force_login(setup["lead"])

    confirmation = client.get(reverse("analysis:run-close", args=[run.pk])).content.decode()
    page = client.post(reverse("analysis:run-close", args=[run.pk]), follow=True).content.decode()

    assert "Yes, close the run" in confirmation
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.CLOSED
    assert f"Run {run.pk} closed." in page
    rows = dict(re.findall(r'<tr data-band="(\w+)">(.*?)</tr>', page, re.S))
    assert list(rows) == ["high", "low"]
    assert re.findall(r"<td>(\d+)</td>", rows["high"]) == ["2", "1", "0"]
    assert 'aria-label="67% approved"' in rows["high"]
    assert "0%" in rows["low"]
    assert 'data-show="can_close" hidden' in page


def test_someone_on_the_project_who_leads_nothing_cannot_close_a_run(client: Client, setup) -> None:
    run = completed_with(setup, ("approved", 0.95))
    member = UserFactory()
    ProjectMembershipFactory(project=setup["project"], user=member, role="member")
    client.force_login(member)

    assert client.post(reverse("analysis:run-close", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.COMPLETED
