"""Confidence bands calibrated on a project's reviews: the threshold rule, a closed run that
recalibrates, the thresholds snapshotted on the next run and given to its proposals, and the
reliability table on the project page and in the API."""

from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import AgentTaskAssignment
from analysis.calibration import (
    Review,
    band_table,
    calibrated_bands,
    calibration,
    deciles,
    expected_calibration_error,
)
from analysis.models import AnalysisRun
from analysis.services import close_run, start_run
from analysis.services.batches import run_bands
from projects.models import Project
from proposals.models import FIXED_BANDS, Bands, TaskProposal, confidence_band
from proposals.services import NewProposal, ProposalData, create_proposals
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import AgentFactory, MessageFactory, TaskProposalFactory, UserFactory

pytestmark = pytest.mark.django_db


def reviews(*groups: tuple[float, int, int]) -> list[Review]:
    """(confidence, reviewed, approved) groups as reviews."""
    return [
        Review(confidence, approved=i < approved)
        for confidence, count, approved in groups
        for i in range(count)
    ]


# The rule

# 10% approved at 0.3, 60% at 0.5, 95% at 0.7, all at 0.95.
HISTORY = reviews((0.3, 20, 2), (0.5, 20, 12), (0.7, 20, 19), (0.95, 20, 20))


def test_high_starts_where_reviewers_approve_nine_in_ten_and_low_ends_under_half() -> None:
    bands = calibrated_bands(HISTORY)

    # Above 0.5: 39 of 40 approved (above 0.45 it would be 51 of 60, 85%). Below 0.7 only 35%
    # are approved, but low may not pass high: low stops at 0.5.
    assert bands == Bands(high=0.5, low=0.5)
    table = band_table(HISTORY, bands, {"high": (0.9, 1.01), "medium": (0.5, 0.9), "low": (0.0, 0.5)})
    assert table["bands"]["high"] == {"reviews": 40, "approved": 39, "approval_rate": 0.975}
    assert table["bands"]["medium"]["approval_rate"] == 0.6
    assert table["bands"]["low"]["approval_rate"] == 0.1
    assert table["band_error"] == 0.0  # every band keeps its promise


def test_the_rule_is_monotone_and_empties_a_band_no_threshold_earns() -> None:
    # Everything approved half the time: no threshold gives 90% above or under 50% below.
    flat = reviews((0.2, 20, 10), (0.6, 20, 10), (0.95, 20, 10))
    assert calibrated_bands(flat) == Bands(high=1.0, low=0.0)
    assert {confidence_band(r.confidence, Bands(high=1.0, low=0.0)) for r in flat} == {"medium"}
    # Too few above a threshold to trust (MIN_BAND_REVIEWS): not high.
    assert calibrated_bands(reviews((0.95, 9, 9), (0.5, 40, 30))).high == 1.0


def test_the_reliability_table_and_its_calibration_error() -> None:
    rows = {row["range"]: row for row in deciles(HISTORY)}
    assert rows["0.9-1.0"] == {
        "range": "0.9-1.0",
        "reviews": 20,
        "approved": 20,
        "approval_rate": 1.0,
        "mean_confidence": 0.95,
    }
    assert rows["0.0-0.1"]["reviews"] == 0 and rows["0.0-0.1"]["approval_rate"] is None
    # |0.1-0.3|, |0.6-0.5|, |0.95-0.7|, |1.0-0.95|, a quarter each.
    assert expected_calibration_error(HISTORY) == round((0.2 + 0.1 + 0.25 + 0.05) / 4, 3)


def test_until_enough_reviews_the_fixed_bands_hold() -> None:
    figures = calibration(HISTORY, minimum=81)
    assert figures["calibrated"] is False
    assert (figures["high"], figures["low"]) == (FIXED_BANDS.high, FIXED_BANDS.low)
    assert figures["current"] == figures["fixed"]
    figures = calibration(HISTORY, minimum=80)
    assert figures["calibrated"] is True and (figures["high"], figures["low"]) == (0.5, 0.5)
    # The fixed bands break their promise on these reviews; the calibrated ones keep it.
    assert figures["fixed"]["band_error"] > figures["current"]["band_error"] == 0.0


# A closed run recalibrates; the next run uses its thresholds


def closed_history(setup: dict[str, Any], groups: list[tuple[float, int, int]]) -> AnalysisRun:
    """A completed run of the setup's project and agent with these reviews, then closed."""
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    AnalysisRun.objects.filter(pk=run.pk).update(status=AnalysisRun.Status.COMPLETED)
    for confidence, count, approved in groups:
        for i in range(count):
            TaskProposalFactory(
                run=run,
                project=setup["project"],
                confidence=confidence,
                status=TaskProposal.Status.APPROVED if i < approved else TaskProposal.Status.REJECTED,
                reviewed_at=timezone.now(),
            )
    return close_run(run_id=run.pk)


def test_a_closed_run_with_enough_reviews_sets_the_projects_bands(fake_openai, settings) -> None:
    settings.CALIBRATION_MIN_REVIEWS = 80
    setup = make_setup(fake_openai.base_url)
    agent = setup["assignment"].agent

    closed_history(setup, [(0.3, 20, 2), (0.5, 20, 12)])
    figures = Project.objects.get(pk=setup["project"].pk).band_calibration["agents"][str(agent.pk)]
    assert (figures["reviews"], figures["calibrated"], figures["agent"]) == (40, False, agent.name)

    closed_history(setup, [(0.7, 20, 19), (0.95, 20, 20)])
    project = Project.objects.get(pk=setup["project"].pk)
    figures = project.band_calibration["agents"][str(agent.pk)]
    assert (figures["reviews"], figures["calibrated"], figures["high"], figures["low"]) == (
        80,
        True,
        0.5,
        0.5,
    )

    # The next run snapshots the thresholds and saves its proposals in them: 0.6 is high now
    # (it would be low with the fixed bands).
    run = start_run(
        window_start=WINDOW_START, window_end=WINDOW_END, projects=[project], assignment=setup["assignment"]
    )
    assert run.config_snapshot["projects"][0]["bands"] == {"high": 0.5, "low": 0.5, "calibrated": True}
    [proposal] = create_proposals(
        proposals=[
            NewProposal(
                project=project,
                data=ProposalData(
                    title="Ship the Android build",
                    description="",
                    priority="medium",
                    category="feature",
                    tags=[],
                    due_date=None,
                    confidence=0.6,
                    reasoning="",
                    recommendation="new_task",
                    assignee_name="",
                ),
                source_messages=[MessageFactory(chat=setup["chat"])],
            )
        ],
        run_id=run.pk,
        bands=run_bands(run),
    )
    assert proposal.band == TaskProposal.Band.HIGH
    assert confidence_band(0.6) == TaskProposal.Band.LOW


def test_another_agents_reviews_do_not_move_this_agents_bands(fake_openai, settings) -> None:
    settings.CALIBRATION_MIN_REVIEWS = 10
    setup = make_setup(fake_openai.base_url)
    closed_history(setup, [(0.95, 20, 20)])
    second = AgentTaskAssignment.objects.create(
        agent=AgentFactory(provider=setup["assignment"].agent.provider),
        task_config=setup["assignment"].task_config,
    )
    run = start_run(
        window_start=WINDOW_START, window_end=WINDOW_END, projects=[setup["project"]], assignment=second
    )
    assert run.config_snapshot["projects"][0]["bands"] == {"high": 0.9, "low": 0.7, "calibrated": False}


def test_a_run_snapshotted_before_bands_saves_its_proposals_in_the_fixed_ones(fake_openai) -> None:
    setup = make_setup(fake_openai.base_url)
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    snapshot = run.config_snapshot
    del snapshot["projects"][0]["bands"]
    AnalysisRun.objects.filter(pk=run.pk).update(config_snapshot=snapshot)
    run.refresh_from_db()
    assert run_bands(run) == {}


def test_the_project_page_and_the_api_show_the_reliability_table(fake_openai, settings, client) -> None:
    settings.CALIBRATION_MIN_REVIEWS = 80
    setup = make_setup(fake_openai.base_url)
    closed_history(setup, [(0.3, 20, 2), (0.5, 20, 12), (0.7, 20, 19), (0.95, 20, 20)])
    lead = setup["lead"]

    api = APIClient()
    api.force_authenticate(lead)
    body = api.get(f"/api/v1/projects/{setup['project'].slug}/").json()
    [agent] = body["calibration"]
    assert (agent["calibrated"], agent["high"], agent["low"], agent["reviews"]) == (True, 0.5, 0.5, 80)
    assert [row["reviews"] for row in agent["deciles"]] == [0, 0, 0, 20, 0, 20, 0, 20, 0, 20]
    assert agent["current"]["band_error"] == 0.0

    client.force_login(lead)
    page = client.get(f"/projects/{setup['project'].slug}/").content.decode()
    assert "Confidence calibration" in page
    assert "high above 0.5" in page and "low below 0.5" in page
    assert 'aria-label="approval rate 0.9-1.0"' in page

    # Someone on no team of the project sees neither.
    outsider = UserFactory()
    api.force_authenticate(outsider)
    assert api.get(f"/api/v1/projects/{setup['project'].slug}/").status_code == 404


def test_the_systems_auto_approvals_do_not_count_as_reviews(fake_openai, settings) -> None:
    settings.CALIBRATION_MIN_REVIEWS = 20
    setup = make_setup(fake_openai.base_url)
    run = closed_history(setup, [(0.95, 20, 20)])
    TaskProposal.objects.filter(run=run).update(review_action="auto_approve")
    from analysis.calibration import decided_reviews

    assert decided_reviews(project_id=setup["project"].pk, agent_id=setup["assignment"].agent_id) == []
