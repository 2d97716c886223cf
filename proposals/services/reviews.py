"""Reviews of proposals: approve, edit, reject, merge, split, mark duplicate, reopen, undo.

Who may review a proposal is `projects.access`'s to say (`Action.REVIEW`: the project's
reviewers and leads, and staff); every action asks it when it locks the proposal.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from projects import access
from projects.models import Task, WebhookEndpoint
from projects.services import TASK_DETAILS, append_to_task, create_task, delete_task_if_unused, task_payload
from projects.webhooks import emit_webhook
from proposals.consumers import proposal_group
from proposals.models import ReviewEvent, TaskProposal
from proposals.services.creation import NewProposal, ProposalData, create_proposals
from tasktracker.exceptions import DomainError
from tasktracker.realtime import broadcast

# Reviews. Each action locks the proposals it changes, refuses illegal moves with a
# DomainError, and leaves a ReviewEvent with the proposal's state before and after.

PENDING = TaskProposal.Status.PENDING
EDITABLE_FIELDS = ("title", "description", "priority", "category", "tags", "due_date", "suggested_assignee")


def _snapshot(proposal: TaskProposal) -> dict[str, Any]:
    return {
        "status": proposal.status,
        "title": proposal.title,
        "description": proposal.description,
        "priority": proposal.priority,
        "category": proposal.category,
        "tags": list(proposal.tags),
        "due_date": proposal.due_date.isoformat() if proposal.due_date else None,
        "suggested_assignee": proposal.suggested_assignee_id,
        "task": proposal.task_id,
        "merged_into": proposal.merged_into_id,
        "review_note": proposal.review_note,
        "source_messages": sorted(proposal.source_messages.values_list("pk", flat=True)),
    }


def _lock(proposal_id: int, user: User) -> TaskProposal:
    """The proposal, locked, once `user` may review it: a 404 for a proposal of a project
    they are not on (as for one that does not exist), a 403 for one they only see."""
    proposal = (
        # Lock the proposal row only: FOR UPDATE cannot reach the nullable side of a join.
        TaskProposal.objects.select_for_update(of=("self",))
        .select_related("project", "similar_task")
        .filter(pk=proposal_id)
        .first()
    )
    if proposal is None or not access.can(user, proposal.project_id, access.Action.VIEW):
        raise DomainError(f"There is no proposal {proposal_id}.", code="not_found", status=404)
    if not access.can(user, proposal.project_id, access.Action.REVIEW):
        raise DomainError(
            f"You may not review proposals of {proposal.project}.", code="forbidden", status=403
        )
    return proposal


def _require_pending(proposal: TaskProposal, verb: str) -> None:
    if proposal.status != PENDING:
        raise DomainError(
            f"Proposal {proposal.pk} is {proposal.status}; only pending proposals can be {verb}.",
            code="not_pending",
            status=409,
        )


def _record(
    proposal: TaskProposal,
    user: User | None,
    action: str,
    before: dict[str, Any],
    note: str = "",
    task: Task | None = None,
) -> ReviewEvent:
    proposal.refresh_from_db()
    event = ReviewEvent.objects.create(
        proposal=proposal,
        user=user,
        action=action,
        note=note,
        before=before,
        after=_snapshot(proposal),
        task=task,
    )
    project_id, status = proposal.project_id, proposal.status
    transaction.on_commit(
        lambda: broadcast(
            proposal_group(project_id),
            "proposal_reviewed",
            {"id": proposal.pk, "status": status, "action": action},
        )
    )
    return event


def _apply_edits(proposal: TaskProposal, edits: dict[str, Any] | None) -> None:
    for name, value in (edits or {}).items():
        if name not in EDITABLE_FIELDS:
            raise DomainError(f"{name} cannot be edited.", code="invalid_field")
        setattr(proposal, name, value)
    if not proposal.title.strip():
        raise DomainError("A task needs a title.", code="title_required")


def transition_proposal(*, proposal: TaskProposal, to: str) -> None:
    """Set a proposal's status to `to` if `TaskProposal.TRANSITIONS` allows the move from
    the status it has; the only writer of `status`. The caller has locked the row (`_lock`)
    and saves it. Staying put is no move: undoing an edit leaves a pending proposal pending.

    Raises `DomainError` (409, `illegal_transition`) for any other move. The actions check
    first with a code of their own (`not_pending`, `not_closed`), so this refuses only what
    they let through by mistake.
    """
    if to != proposal.status and to not in TaskProposal.TRANSITIONS[proposal.status]:
        raise DomainError(
            f"Proposal {proposal.pk} is {proposal.status}; it cannot become {to}.",
            code="illegal_transition",
            status=409,
        )
    proposal.status = to


def _reviewed(proposal: TaskProposal, user: User | None, status: str, action: str, note: str = "") -> None:
    transition_proposal(proposal=proposal, to=status)
    proposal.reviewer = user
    proposal.reviewed_at = timezone.now()
    proposal.review_action = action
    proposal.review_note = note


@transaction.atomic
def approve_proposal(
    *, proposal_id: int, user: User, edits: dict[str, Any] | None = None, add_to_task: bool = False
) -> Task:
    """Approve a pending proposal: it becomes a task of its project (with `edits` applied
    first), or, with `add_to_task`, is added to the similar task it was linked to."""
    proposal = _lock(proposal_id, user)
    _require_pending(proposal, "approved")
    return _approve(proposal, user, edits=edits, add_to_task=add_to_task)


@transaction.atomic
def auto_approve_proposal(*, proposal: TaskProposal, note: str) -> Task:
    """Approve a pending proposal as the system (no user): its task is made as for a
    reviewer's approval, and its event is `AUTO_APPROVE` with `note` saying why; a reviewer
    undoes it like any approval. `proposal` is locked and checked by the caller
    (`proposals.services.auto.auto_approve_proposals`, which decides)."""
    _require_pending(proposal, "approved")
    return _approve(proposal, None, note=note)


def _approve(
    proposal: TaskProposal,
    user: User | None,
    *,
    edits: dict[str, Any] | None = None,
    add_to_task: bool = False,
    note: str = "",
) -> Task:
    """Approve a locked pending proposal, by `user` or, None, by the system."""
    before = _snapshot(proposal)
    _apply_edits(proposal, edits)
    if add_to_task:
        task = proposal.similar_task
        if task is None:
            raise DomainError(
                f"Proposal {proposal.pk} has no similar task to add to.", code="no_similar_task"
            )
        addition = f"From proposal {proposal.pk}: {proposal.title}\n{proposal.description}".rstrip()
        if user is None:
            raise DomainError("Only a reviewer adds a proposal to a task.", code="forbidden", status=403)
        task = append_to_task(task=task, text=addition, user=user)
        action = ReviewEvent.Action.ADD_TO_TASK
    else:
        task = create_task(
            project=proposal.project,
            assignee=proposal.suggested_assignee,
            created_by=user,
            **{name: getattr(proposal, name) for name in TASK_DETAILS},
        )
        action = ReviewEvent.Action.APPROVE if user is not None else ReviewEvent.Action.AUTO_APPROVE
    proposal.task = task
    _reviewed(proposal, user, TaskProposal.Status.APPROVED, action, note)
    proposal.save()
    _record(proposal, user, action, before, note=note, task=task)
    emit_webhook(
        project=proposal.project,
        event=WebhookEndpoint.Event.PROPOSAL_APPROVED,
        payload={
            "proposal": {"id": proposal.pk, "title": proposal.title, "action": action},
            **task_payload(task),
        },
    )
    return task


@transaction.atomic
def edit_proposal(*, proposal_id: int, user: User, edits: dict[str, Any]) -> TaskProposal:
    """Change a pending proposal's fields; it stays pending."""
    proposal = _lock(proposal_id, user)
    _require_pending(proposal, "edited")
    before = _snapshot(proposal)
    _apply_edits(proposal, edits)
    proposal.save()
    _record(proposal, user, ReviewEvent.Action.EDIT, before)
    return proposal


@transaction.atomic
def reject_proposal(*, proposal_id: int, user: User, reason: str) -> TaskProposal:
    """Reject a pending proposal; the reason is required and kept."""
    if not reason or not reason.strip():
        raise DomainError("Give a reason to reject a proposal.", code="reason_required")
    proposal = _lock(proposal_id, user)
    _require_pending(proposal, "rejected")
    before = _snapshot(proposal)
    _reviewed(proposal, user, TaskProposal.Status.REJECTED, ReviewEvent.Action.REJECT, reason.strip())
    proposal.save()
    _record(proposal, user, ReviewEvent.Action.REJECT, before, note=reason.strip())
    return proposal


@transaction.atomic
def merge_proposals(*, proposal_ids: Sequence[int], user: User, into_id: int | None = None) -> TaskProposal:
    """Merge pending proposals of one project into one (the first, or `into_id`), which
    takes the union of their source messages and stays pending; the others are merged."""
    ids = list(dict.fromkeys(proposal_ids))
    if len(ids) < 2:
        raise DomainError("Choose at least two proposals to merge.", code="too_few")
    into_id = into_id or ids[0]
    if into_id not in ids:
        ids.insert(0, into_id)
    proposals = [_lock(pk, user) for pk in sorted(ids)]
    for proposal in proposals:
        _require_pending(proposal, "merged")
    if len({p.project_id for p in proposals}) > 1:
        raise DomainError("Only proposals of one project can be merged.", code="projects_differ")
    target = next(p for p in proposals if p.pk == into_id)
    target_before = _snapshot(target)
    for proposal in proposals:
        if proposal.pk == into_id:
            continue
        before = _snapshot(proposal)
        target.source_messages.add(*proposal.source_messages.all())
        proposal.merged_into = target
        _reviewed(
            proposal, user, TaskProposal.Status.MERGED, ReviewEvent.Action.MERGE, f"Merged into {target.pk}"
        )
        proposal.save()
        _record(proposal, user, ReviewEvent.Action.MERGE, before, note=f"Merged into {target.pk}")
    merged = ", ".join(str(p.pk) for p in proposals if p.pk != into_id)
    _record(target, user, ReviewEvent.Action.MERGE, target_before, note=f"Took in {merged}")
    return target


@transaction.atomic
def mark_duplicate(*, proposal_id: int, of_id: int, user: User) -> TaskProposal:
    """Mark a pending proposal as a duplicate of another live one (merged into it)."""
    if proposal_id == of_id:
        raise DomainError("A proposal cannot duplicate itself.", code="same_proposal")
    proposal = _lock(proposal_id, user)
    _require_pending(proposal, "marked as duplicates")
    original = _lock(of_id, user)
    if original.status not in (PENDING, TaskProposal.Status.APPROVED):
        raise DomainError(
            f"Proposal {of_id} is {original.status}; mark duplicates of live ones.", code="not_live"
        )
    before = _snapshot(proposal)
    proposal.merged_into = original
    _reviewed(
        proposal, user, TaskProposal.Status.MERGED, ReviewEvent.Action.MARK_DUPLICATE, f"Duplicate of {of_id}"
    )
    proposal.save()
    _record(proposal, user, ReviewEvent.Action.MARK_DUPLICATE, before, note=f"Duplicate of {of_id}")
    return proposal


@transaction.atomic
def mark_duplicate_of_task(*, proposal_id: int, task_id: int, user: User) -> TaskProposal:
    """Mark a pending proposal as a duplicate of a task of its project: closed as merged,
    linked to the task (undo unlinks it)."""
    proposal = _lock(proposal_id, user)
    _require_pending(proposal, "marked as duplicates")
    task = Task.objects.filter(pk=task_id, project_id=proposal.project_id).first()
    if task is None:
        raise DomainError(f"Task #{task_id} is not a task of {proposal.project}.", code="not_found")
    before = _snapshot(proposal)
    note = f"Duplicate of task #{task.pk}"
    proposal.task = task
    _reviewed(proposal, user, TaskProposal.Status.MERGED, ReviewEvent.Action.MARK_DUPLICATE, note)
    proposal.save()
    _record(proposal, user, ReviewEvent.Action.MARK_DUPLICATE, before, note=note, task=task)
    return proposal


@transaction.atomic
def split_proposal(*, proposal_id: int, user: User, parts: Sequence[dict[str, Any]]) -> list[TaskProposal]:
    """Split a pending proposal into several, each with a title and a share of its source
    messages (every source given to some part). The original is closed as merged into the first part."""
    proposal = _lock(proposal_id, user)
    _require_pending(proposal, "split")
    if len(parts) < 2:
        raise DomainError("A split needs at least two parts.", code="too_few")
    sources = {m.pk: m for m in proposal.source_messages.all()}
    given: set[int] = set()
    for number, part in enumerate(parts, start=1):
        ids = set(part.get("source_message_ids") or [])
        if not str(part.get("title") or "").strip():
            raise DomainError(f"Part {number} needs a title.", code="title_required")
        if not ids or not ids <= set(sources):
            raise DomainError(
                f"Part {number} must take some of the proposal's own messages.", code="bad_sources"
            )
        given |= ids
    if given != set(sources):
        raise DomainError("Every source message must go to some part.", code="sources_left")
    before = _snapshot(proposal)
    # Closed before its parts are made: duplicate detection compares them with the live
    # proposals and tasks of the project, and would mark each as repeating this one.
    _reviewed(proposal, user, TaskProposal.Status.MERGED, ReviewEvent.Action.SPLIT)
    proposal.save()
    created = create_proposals(
        proposals=[
            NewProposal(
                project=proposal.project,
                data=ProposalData(
                    **{name: getattr(proposal, name) for name in ProposalData.COPIED}
                    | {
                        "title": str(part["title"]).strip(),
                        "description": str(part.get("description") or ""),
                        "tags": list(proposal.tags),
                        "reasoning": f"Split from proposal {proposal.pk}. {proposal.reasoning}".strip(),
                        "assignee_name": proposal.suggested_assignee_name,
                    }
                ),
                source_messages=[sources[pk] for pk in part["source_message_ids"]],
                suggested_assignee=proposal.suggested_assignee,
                band=proposal.band,  # the same confidence, in the band its run gave it
            )
            for part in parts
        ],
        run_id=proposal.run_id,
        batch_id=proposal.batch_id,
    )
    proposal.merged_into = created[0]
    note = "Split into " + ", ".join(str(p.pk) for p in created)
    proposal.review_note = note
    proposal.save()
    _record(proposal, user, ReviewEvent.Action.SPLIT, before, note=note)
    return created


@transaction.atomic
def reopen_proposal(*, proposal_id: int, user: User) -> TaskProposal:
    """Reopen a rejected or merged proposal: pending again."""
    proposal = _lock(proposal_id, user)
    if proposal.status not in (TaskProposal.Status.REJECTED, TaskProposal.Status.MERGED):
        raise DomainError(
            f"Proposal {proposal.pk} is {proposal.status}; only rejected or merged ones reopen.",
            code="not_closed",
            status=409,
        )
    before = _snapshot(proposal)
    transition_proposal(proposal=proposal, to=PENDING)
    proposal.merged_into, proposal.review_action = None, ReviewEvent.Action.REOPEN
    proposal.save()
    _record(proposal, user, ReviewEvent.Action.REOPEN, before)
    return proposal


@transaction.atomic
def undo_last_action(*, proposal_id: int, user: User) -> TaskProposal:
    """Undo the proposal's last review action by restoring its state from before it. An
    approval's new task is deleted when nothing else uses it; an addition to an existing
    task keeps that task."""
    proposal = _lock(proposal_id, user)
    last = (
        proposal.review_events.exclude(action=ReviewEvent.Action.UNDO).order_by("-created_at", "-pk").first()
    )
    undone_ids = set(
        proposal.review_events.filter(action=ReviewEvent.Action.UNDO).values_list("note", flat=True)
    )
    if last is None or f"Undid event {last.pk}" in undone_ids:
        raise DomainError(
            f"Proposal {proposal.pk} has no review action to undo.", code="nothing_to_undo", status=409
        )
    before = _snapshot(proposal)
    state = last.before
    transition_proposal(proposal=proposal, to=state["status"])
    approvals = (ReviewEvent.Action.APPROVE, ReviewEvent.Action.AUTO_APPROVE)
    if last.action in approvals and proposal.task is not None:
        task = proposal.task
        proposal.task = None
        proposal.save(update_fields=["task"])
        delete_task_if_unused(task=task, user=user)
    for name in ("title", "description", "priority", "category", "tags", "review_note"):
        setattr(proposal, name, state[name])
    proposal.due_date = date.fromisoformat(state["due_date"]) if state["due_date"] else None
    proposal.suggested_assignee_id = state["suggested_assignee"]
    proposal.task_id = state["task"] if proposal.status == TaskProposal.Status.APPROVED else None
    proposal.merged_into_id = state["merged_into"]
    proposal.review_action = ReviewEvent.Action.UNDO
    proposal.save()
    if last.action == ReviewEvent.Action.MERGE and set(state["source_messages"]) != set(
        before["source_messages"]
    ):
        proposal.source_messages.set(state["source_messages"])
    _record(proposal, user, ReviewEvent.Action.UNDO, before, note=f"Undid event {last.pk}")
    return proposal


@dataclass
class BulkOutcome:
    done: list[int]
    refused: dict[int, str]


def bulk_review(*, proposal_ids: Sequence[int], user: User, action: str, reason: str = "") -> BulkOutcome:
    """Approve or reject many proposals, each in its own transaction: one refused (not
    pending, not yours) does not undo the others, and is reported with why."""
    if action not in ("approve", "reject"):
        raise DomainError("Bulk review approves or rejects.", code="invalid_action")
    if action == "reject" and not reason.strip():
        raise DomainError("Give a reason to reject proposals.", code="reason_required")
    outcome = BulkOutcome(done=[], refused={})
    for proposal_id in dict.fromkeys(proposal_ids):
        try:
            if action == "approve":
                approve_proposal(proposal_id=proposal_id, user=user)
            else:
                reject_proposal(proposal_id=proposal_id, user=user, reason=reason)
            outcome.done.append(proposal_id)
        except DomainError as exc:
            outcome.refused[proposal_id] = exc.message
    return outcome


@transaction.atomic
def merge_with_similar(*, proposal_id: int, user: User) -> TaskProposal:
    """Fold a pending proposal into the similar proposal it was linked to when it was made:
    merged into it (which takes its sources) while that one is pending, marked as its
    duplicate once it is approved. Returns the proposal that stays. Locks both rows, in id
    order like `merge_proposals`, so two reviewers folding a pair never deadlock."""
    similar_id = (
        TaskProposal.objects.filter(pk=proposal_id).values_list("similar_proposal_id", flat=True).first()
    )
    if similar_id is None:
        _lock(proposal_id, user)  # Not found or not yours says so first.
        raise DomainError(f"Proposal {proposal_id} has no similar proposal to merge with.", code="no_similar")
    locked = {pk: _lock(pk, user) for pk in sorted((proposal_id, similar_id))}
    if locked[similar_id].status == PENDING:
        return merge_proposals(proposal_ids=[similar_id, proposal_id], user=user, into_id=similar_id)
    mark_duplicate(proposal_id=proposal_id, of_id=similar_id, user=user)
    return locked[similar_id]
