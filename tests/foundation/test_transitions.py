"""Every status field has one writer that knows its legal moves: runs (`transition_run`),
batches (`transition_batches`) and proposals (`transition_proposal`). Each makes a legal
move and refuses an illegal one with a 409 `DomainError`, leaving the row as it was."""

from typing import Any

import pytest
from django.db.models import F, Q

from analysis import services
from analysis.models import AnalysisRun, Batch
from projects.models import ProjectMembership
from proposals.models import TaskProposal
from proposals.services import approve_proposal, reject_proposal, reopen_proposal, undo_last_action
from proposals.services.reviews import transition_proposal
from tasktracker.exceptions import DomainError
from tests.factories import (
    AnalysisRunFactory,
    BatchFactory,
    ProjectMembershipFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

RunStatus = AnalysisRun.Status
BatchStatus = Batch.Status
ProposalStatus = TaskProposal.Status


def refusal(error: pytest.ExceptionInfo[DomainError]) -> tuple[str, int]:
    return error.value.code, error.value.status


@pytest.mark.parametrize("model", [AnalysisRun, Batch, TaskProposal])
def test_every_status_has_its_moves_to_known_statuses(model: Any) -> None:
    assert set(model.TRANSITIONS) == set(model.Status.values)
    assert all(set(targets) <= set(model.Status.values) for targets in model.TRANSITIONS.values())


# Runs


def test_beginning_a_pending_run_makes_it_running() -> None:
    run = AnalysisRunFactory()
    assert services.begin_run(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert run.started_at is not None


def test_cancelling_a_completed_run_is_refused() -> None:
    run = AnalysisRunFactory(status=RunStatus.COMPLETED)
    with pytest.raises(DomainError, match="cannot become cancelled") as error:
        services.cancel_run(run=run)
    assert refusal(error) == ("illegal_transition", 409)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED


def test_a_run_move_from_a_given_status_is_checked_whatever_status_the_run_has() -> None:
    run = AnalysisRunFactory(status=RunStatus.RUNNING)
    with pytest.raises(DomainError) as error:
        services.transition_run(run_id=run.pk, from_=RunStatus.CLOSED, to=RunStatus.RUNNING)
    assert refusal(error) == ("illegal_transition", 409)


def test_a_run_move_whose_condition_does_not_hold_changes_nothing() -> None:
    run = AnalysisRunFactory(status=RunStatus.RUNNING, batches_total=2, batches_done=1)
    all_counted = Q(batches_total=F("batches_done") + F("batches_failed"))
    assert not services.transition_run(
        run_id=run.pk, from_=RunStatus.RUNNING, to=RunStatus.COMPLETED, when=all_counted
    )
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


@pytest.mark.parametrize(
    ("status", "done", "failed", "finished", "error"),
    [
        (RunStatus.RUNNING, 1, 1, RunStatus.COMPLETED, ""),
        (RunStatus.RUNNING, 0, 2, RunStatus.FAILED, "Every batch failed."),
        (RunStatus.RUNNING, 1, 0, RunStatus.RUNNING, ""),
        # Cancelled while its batches ran: the last batch's commit leaves it cancelled.
        (RunStatus.CANCELLED, 1, 1, RunStatus.CANCELLED, ""),
    ],
)
def test_a_run_finishes_when_its_last_batch_is_counted(
    status: str, done: int, failed: int, finished: str, error: str
) -> None:
    run = AnalysisRunFactory(status=status, batches_total=2, batches_done=done, batches_failed=failed)
    services.finish_run_if_done(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.error) == (finished, error)
    assert (run.finished_at is not None) == (finished in (RunStatus.COMPLETED, RunStatus.FAILED))


def test_a_run_of_no_batches_completes() -> None:
    run = AnalysisRunFactory(status=RunStatus.RUNNING)
    services.finish_run_if_done(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED


def test_a_finished_run_is_finished_once() -> None:
    run = AnalysisRunFactory(status=RunStatus.RUNNING, batches_total=1, batches_done=1)
    services.finish_run_if_done(run_id=run.pk)
    run.refresh_from_db()
    seq = run.event_seq
    services.finish_run_if_done(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.event_seq) == (RunStatus.COMPLETED, seq)


# Batches


def test_claiming_a_pending_batch_makes_it_running() -> None:
    batch = BatchFactory(run=AnalysisRunFactory(status=RunStatus.RUNNING))
    claimed = services.claim_batch(batch_id=batch.pk, claim_id="task-1")
    assert claimed is not None
    batch.refresh_from_db()
    assert (batch.status, batch.claim_id, batch.attempts) == (BatchStatus.RUNNING, "task-1", 1)


def test_a_done_batch_is_not_claimed() -> None:
    batch = BatchFactory(run=AnalysisRunFactory(status=RunStatus.RUNNING), status=BatchStatus.DONE)
    assert services.claim_batch(batch_id=batch.pk, claim_id="task-1") is None
    batch.refresh_from_db()
    assert batch.status == BatchStatus.DONE


def test_retrying_a_runs_failed_batches_makes_them_pending() -> None:
    run = AnalysisRunFactory(status=RunStatus.COMPLETED, batches_total=2, batches_done=1, batches_failed=1)
    done = BatchFactory(run=run, status=BatchStatus.DONE)
    failed = BatchFactory(run=run, status=BatchStatus.FAILED, attempts=3, error="Timed out")
    assert services.retry_failed_batches(run=run) == 1
    failed.refresh_from_db()
    done.refresh_from_db()
    assert (failed.status, failed.attempts, failed.error) == (BatchStatus.PENDING, 0, "")
    assert done.status == BatchStatus.DONE


def test_a_done_batch_cannot_go_back_to_pending() -> None:
    batch = BatchFactory(status=BatchStatus.DONE)
    with pytest.raises(DomainError, match="done cannot become pending") as error:
        services.transition_batches(
            Batch.objects.filter(pk=batch.pk), from_=BatchStatus.DONE, to=BatchStatus.PENDING
        )
    assert refusal(error) == ("illegal_transition", 409)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.DONE


def test_a_batch_move_is_refused_when_any_of_its_starting_statuses_may_not_make_it() -> None:
    batch = BatchFactory(status=BatchStatus.PENDING)
    with pytest.raises(DomainError) as error:
        services.transition_batches(
            Batch.objects.filter(pk=batch.pk),
            from_=(BatchStatus.PENDING, BatchStatus.DONE),
            to=BatchStatus.RUNNING,
        )
    assert refusal(error) == ("illegal_transition", 409)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.PENDING


def test_a_batch_move_changes_only_the_batches_in_its_starting_statuses() -> None:
    run = AnalysisRunFactory(status=RunStatus.RUNNING)
    running = BatchFactory(run=run, status=BatchStatus.RUNNING, claim_id="task-1")
    pending = BatchFactory(run=run, status=BatchStatus.PENDING)
    moved = services.transition_batches(
        run.batches.all(), from_=BatchStatus.RUNNING, to=BatchStatus.PENDING, claim_id=""
    )
    assert moved == 1
    running.refresh_from_db()
    pending.refresh_from_db()
    assert (running.status, running.claim_id) == (BatchStatus.PENDING, "")
    assert pending.status == BatchStatus.PENDING


# Proposals


@pytest.fixture
def reviewer() -> Any:
    return UserFactory(username="rita")


@pytest.fixture
def proposal(reviewer: Any) -> TaskProposal:
    proposal = TaskProposalFactory(title="Fix the login crash")
    ProjectMembershipFactory(project=proposal.project, user=reviewer, role=ProjectMembership.Role.REVIEWER)
    return proposal


def test_rejecting_then_reopening_moves_a_proposal_there_and_back(
    proposal: TaskProposal, reviewer: Any
) -> None:
    assert reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="Not a task").status == (
        ProposalStatus.REJECTED
    )
    assert reopen_proposal(proposal_id=proposal.pk, user=reviewer).status == ProposalStatus.PENDING


def test_undoing_an_approval_makes_the_proposal_pending(proposal: TaskProposal, reviewer: Any) -> None:
    approve_proposal(proposal_id=proposal.pk, user=reviewer)
    assert undo_last_action(proposal_id=proposal.pk, user=reviewer).status == ProposalStatus.PENDING


def test_undoing_a_reopening_closes_the_proposal_again(proposal: TaskProposal, reviewer: Any) -> None:
    reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="Not a task")
    reopen_proposal(proposal_id=proposal.pk, user=reviewer)
    assert undo_last_action(proposal_id=proposal.pk, user=reviewer).status == ProposalStatus.REJECTED


@pytest.mark.parametrize(
    ("status", "to"),
    [
        (ProposalStatus.APPROVED, ProposalStatus.REJECTED),
        (ProposalStatus.APPROVED, ProposalStatus.MERGED),
        (ProposalStatus.MERGED, ProposalStatus.APPROVED),
        (ProposalStatus.REJECTED, ProposalStatus.MERGED),
    ],
)
def test_a_reviewed_proposal_cannot_move_to_another_review(status: str, to: str) -> None:
    proposal = TaskProposalFactory(status=status)
    with pytest.raises(DomainError, match=f"cannot become {to}") as error:
        transition_proposal(proposal=proposal, to=to)
    assert refusal(error) == ("illegal_transition", 409)
    assert proposal.status == status
    proposal.refresh_from_db()
    assert proposal.status == status


def test_staying_pending_is_no_move() -> None:
    proposal = TaskProposalFactory()
    transition_proposal(proposal=proposal, to=ProposalStatus.PENDING)
    assert proposal.status == ProposalStatus.PENDING
