"""The top bar's notices of finished runs: a completed run with proposals to review, or a
failed one, told to its starter and to its projects' reviewers for a week, until it no
longer needs them."""

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from analysis.models import AnalysisRun
from analysis.services import cancel_run, retry_failed_batches
from projects.models import Project
from proposals.models import TaskProposal
from proposals.services import approve_proposal, reject_proposal
from tests.factories import (
    AnalysisRunFactory,
    BatchFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
PAGE = reverse("projects:project-list")


@pytest.fixture
def project() -> Project:
    return ProjectFactory(name="Acme Mobile")


def member(project: Project, role: str) -> Any:
    return ProjectMembershipFactory(project=project, role=role).user


def finished(
    project: Project, status: str, *, pending: int = 0, ago: timedelta = timedelta(hours=1), **fields: Any
) -> AnalysisRun:
    """A run of `project` that finished `ago`, with `pending` proposals waiting for review and
    one reviewed."""
    run = AnalysisRunFactory(projects=[project], status=status, finished_at=timezone.now() - ago, **fields)
    TaskProposalFactory(run=run, project=project, status=TaskProposal.Status.APPROVED)
    TaskProposalFactory.create_batch(pending, run=run, project=project)
    return run


def notices(client: Client, user: Any, url: str = PAGE) -> list[tuple[str, str]]:
    """The notices a page shows `user`: each link's text and address."""
    client.force_login(user)
    html = client.get(url).content.decode()
    found = re.findall(r'<div class="run-notices" role="status">(.*?)</div>', html, re.S)
    if not found:
        return []
    links = re.findall(r'<a href="([^"]+)">(.*?)</a>', found[0], re.S)
    return [(" ".join(text.split()), href) for href, text in links]


def queue_of(run: AnalysisRun) -> str:
    return f"{reverse('proposals:queue')}?run={run.pk}"


def test_the_starter_sees_a_completed_run_with_proposals_to_review(client: Client, project: Project) -> None:
    # Staff on no project: told as the starter, not as a reviewer.
    starter = UserFactory(is_staff=True)
    run = finished(project, AnalysisRun.Status.COMPLETED, pending=7, started_by=starter)

    assert notices(client, starter) == [
        (f"Run #{run.pk} (Acme Mobile) completed: 7 proposals to review", queue_of(run))
    ]
    assert notices(client, UserFactory(is_staff=True)) == []


def test_a_reviewer_of_the_project_sees_it_and_a_member_does_not(client: Client, project: Project) -> None:
    run = finished(project, AnalysisRun.Status.COMPLETED, pending=1)

    for role in ("reviewer", "lead"):
        assert notices(client, member(project, role)) == [
            (f"Run #{run.pk} (Acme Mobile) completed: 1 proposal to review", queue_of(run))
        ]
    assert notices(client, member(project, "member")) == []


def test_a_member_of_another_project_sees_nothing_of_it(client: Client, project: Project) -> None:
    finished(project, AnalysisRun.Status.COMPLETED, pending=2)
    finished(project, AnalysisRun.Status.FAILED)
    other = ProjectFactory(name="Bravo")

    assert notices(client, member(other, "lead")) == []


def test_the_notice_goes_once_every_proposal_is_reviewed(client: Client, project: Project) -> None:
    reviewer = member(project, "reviewer")
    run = finished(project, AnalysisRun.Status.COMPLETED, pending=2)
    first, second = run.proposals.filter(status=TaskProposal.Status.PENDING)

    approve_proposal(proposal_id=first.pk, user=reviewer)
    assert notices(client, reviewer) == [
        (f"Run #{run.pk} (Acme Mobile) completed: 1 proposal to review", queue_of(run))
    ]
    reject_proposal(proposal_id=second.pk, user=reviewer, reason="Small talk")
    assert notices(client, reviewer) == []


def test_a_failed_run_links_to_its_page_until_it_is_retried(client: Client, project: Project) -> None:
    reviewer = member(project, "reviewer")
    run = finished(project, AnalysisRun.Status.FAILED, batches_total=1, batches_failed=1)
    BatchFactory(run=run, status="failed")

    assert notices(client, reviewer) == [
        (f"Run #{run.pk} (Acme Mobile) failed", reverse("analysis:run-detail", args=[run.pk]))
    ]
    retry_failed_batches(run=run)
    assert notices(client, reviewer) == []


def test_cancelled_closed_old_and_unfinished_runs_are_not_told(client: Client, project: Project) -> None:
    reviewer = member(project, "reviewer")
    finished(project, AnalysisRun.Status.CLOSED)
    finished(project, AnalysisRun.Status.COMPLETED, pending=3, ago=timedelta(days=8))
    finished(project, AnalysisRun.Status.FAILED, ago=timedelta(days=8))
    cancel_run(run=AnalysisRunFactory(projects=[project], status=AnalysisRun.Status.RUNNING))
    TaskProposalFactory(run=AnalysisRunFactory(projects=[project]), project=project)

    assert notices(client, reviewer) == []


def test_at_most_three_newest_first_and_a_link_to_the_rest(client: Client, project: Project) -> None:
    reviewer = member(project, "reviewer")
    runs = [finished(project, AnalysisRun.Status.FAILED, ago=timedelta(hours=hours)) for hours in range(5)]

    shown = notices(client, reviewer)

    assert [text for text, _ in shown] == [
        *(f"Run #{run.pk} (Acme Mobile) failed" for run in runs[:3]),
        "2 more",
    ]
    assert shown[-1][1] == reverse("analysis:run-list")


def test_the_login_page_of_an_anonymous_visitor_has_no_notices(client: Client, project: Project) -> None:
    finished(project, AnalysisRun.Status.FAILED)

    response = client.get(reverse("login"))

    assert response.status_code == 200
    assert "run-notices" not in response.content.decode()


def test_the_notices_cost_at_most_two_queries_whatever_their_number(
    client: Client, project: Project, django_assert_max_num_queries: Any
) -> None:
    reviewer = member(project, "reviewer")
    other = ProjectFactory(name="Bravo")
    ProjectMembershipFactory(project=other, user=reviewer, role="lead")
    client.force_login(reviewer)
    client.get(PAGE)  # Warm the session.
    with CaptureQueriesContext(connection) as without:
        assert "run-notices" not in client.get(PAGE).content.decode()
    for n in range(8):
        finished(project if n % 2 else other, AnalysisRun.Status.COMPLETED, pending=n + 1)
        finished(other, AnalysisRun.Status.FAILED)

    # One query finds none, or the first three and how many more; one more names their projects.
    with django_assert_max_num_queries(len(without) + 1):
        html = client.get(PAGE).content.decode()

    assert html.count('class="run-notice ') == 3
    assert "13 more" in html
