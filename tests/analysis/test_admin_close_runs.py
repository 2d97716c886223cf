"""Closing runs from the admin: a confirmation page that says, per run, what closing does or
why it cannot close, then the confirmation closes them through `close_run`."""

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from analysis.models import AnalysisRun
from projects.models import Project
from tests.factories import AnalysisRunFactory, ProjectFactory, ProjectMembershipFactory, TaskProposalFactory

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:analysis_analysisrun_changelist")


@pytest.fixture
def project() -> Project:
    return ProjectFactory(name="Acme Mobile")


def completed(project: Project, *statuses: str) -> AnalysisRun:
    """A completed run of `project` with a proposal of each status given."""
    run = AnalysisRunFactory(
        projects=[project], status=AnalysisRun.Status.COMPLETED, finished_at=timezone.now()
    )
    for status in statuses:
        TaskProposalFactory(run=run, project=project, status=status)
    return run


def select(client: Client, runs: list[AnalysisRun]) -> Any:
    """The changelist's action form: choose the action, tick the runs."""
    data = {"action": "close_runs", "_selected_action": [run.pk for run in runs], "index": "0"}
    return client.post(CHANGELIST, data)


def confirm(client: Client, runs: list[AnalysisRun], *, follow: bool = True) -> Any:
    """The POST of the confirmation page (no `index`, `post=yes`), as delete_selected's."""
    data = {"action": "close_runs", "_selected_action": [run.pk for run in runs], "post": "yes"}
    return client.post(CHANGELIST, data, follow=follow)


def messages_of(response: Any) -> list[tuple[str, str]]:
    return [(message.level_tag, str(message)) for message in response.context["messages"]]


def state(run: AnalysisRun) -> tuple[Any, ...]:
    return AnalysisRun.objects.filter(pk=run.pk).values_list("status", "closed_at", "review_stats").get()


def test_the_confirmation_lists_the_runs_with_what_closing_means_and_changes_nothing(
    admin_client: Client, project: Project
) -> None:
    reviewed = completed(project, "approved", "rejected")
    waiting = completed(project, "approved", "pending")
    running = AnalysisRunFactory(projects=[project], status=AnalysisRun.Status.RUNNING)
    before = [state(run) for run in (reviewed, waiting, running)]

    response = select(admin_client, [reviewed, waiting, running])

    html = response.content.decode()
    assert response.status_code == 200
    assert "admin/analysis/analysisrun/close_runs_confirmation.html" in [t.name for t in response.templates]
    items = {
        run.pk: item
        for run in (reviewed, waiting, running)
        for item in html.split("<li ")
        if item.startswith(f'data-run="{run.pk}"')
    }
    assert "Acme Mobile" in items[reviewed.pk] and "will close" in items[reviewed.pk]
    assert "will not close" in items[waiting.pk]
    assert "1 of its proposals still waits for review" in items[waiting.pk]
    assert "only completed runs close" in items[running.pk]
    # Only the run that can close is sent with the confirmation.
    assert f'name="_selected_action" value="{reviewed.pk}"' in html
    assert f'name="_selected_action" value="{waiting.pk}"' not in html
    assert 'name="post" value="yes"' in html
    assert 'value="Yes, close 1 run"' in html
    assert [state(run) for run in (reviewed, waiting, running)] == before


def test_confirming_closes_a_completed_run_whose_proposals_are_all_reviewed(
    admin_client: Client, project: Project
) -> None:
    run = completed(project, "approved", "approved", "rejected")

    response = confirm(admin_client, [run])

    status, closed_at, stats = state(run)
    assert status == AnalysisRun.Status.CLOSED
    assert closed_at is not None
    assert (stats["approved"], stats["rejected"], stats["merged"]) == (2, 1, 0)
    assert messages_of(response) == [("success", f"Run {run.pk} closed: 2 approved, 1 rejected, 0 merged.")]


def test_a_run_with_pending_proposals_is_refused_with_the_reason_and_stays_as_it_was(
    admin_client: Client, project: Project
) -> None:
    waiting = completed(project, "approved", "pending", "pending")
    reviewed = completed(project, "rejected")
    before = state(waiting)

    response = confirm(admin_client, [waiting, reviewed])

    assert state(waiting) == before
    assert state(reviewed)[0] == AnalysisRun.Status.CLOSED
    assert sorted(messages_of(response)) == [
        ("error", f"Run {waiting.pk} still has 2 pending proposal(s)."),
        ("success", f"Run {reviewed.pk} closed: 0 approved, 1 rejected, 0 merged."),
    ]


def test_when_no_selected_run_can_close_the_confirmation_offers_only_to_go_back(
    admin_client: Client, project: Project
) -> None:
    waiting = completed(project, "pending")

    html = select(admin_client, [waiting]).content.decode()

    assert "None of the selected runs can close now." in html
    assert 'name="post"' not in html


@pytest.mark.parametrize("role", ["member", "reviewer", "lead"])
def test_someone_who_is_not_staff_cannot_close_runs_in_the_admin(
    client: Client, project: Project, role: str
) -> None:
    # The admin is staff's (`AdminSite.has_permission`); leads close runs from the run page.
    user = ProjectMembershipFactory(project=project, role=role).user
    run = completed(project, "approved")
    before = state(run)
    client.force_login(user)

    shown = select(client, [run])
    confirmed = confirm(client, [run], follow=False)

    for response in (shown, confirmed):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert state(run) == before


def test_the_confirmation_costs_the_same_queries_for_more_runs(
    admin_client: Client, project: Project
) -> None:
    def queries(runs: list[AnalysisRun]) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert select(admin_client, runs).status_code == 200
        return len(captured)

    other = ProjectFactory()
    select(admin_client, [completed(project)])  # Warm the session and content-type caches.
    few = queries([completed(project, "pending"), completed(other, "approved")])
    many = queries(
        [completed(project, "pending", "approved"), *(completed(other, "approved") for _ in range(6))]
    )

    assert many == few
