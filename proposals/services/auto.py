"""Auto-approval that has earned it (off by default).

A project's configuration may name a band (`auto_approve_band`, high or medium): a new
proposal of that band which recommends a new task and repeats no proposal or task is then
approved by the system, while reviewers approved at least `auto_approve_min_rate` of the
band's last `auto_approve_min_reviews` decisions. Only people's decisions count (approved or
rejected by a reviewer, never by the system), so the rule stops by itself once reviewers
reject more of the band, and its own approvals never prop it up. An auto-approval is a
review event with no user, undone like any approval (`undo_last_action`).
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from projects.models import ProjectConfig, Task
from proposals.models import ReviewEvent, TaskProposal
from proposals.services.reviews import auto_approve_proposal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoApprovalRule:
    """A project's rule, as its configuration (or a run's snapshot of it) says."""

    band: str
    min_rate: float
    min_reviews: int

    @classmethod
    def of(cls, settings: Mapping[str, Any] | None) -> "AutoApprovalRule | None":
        """The rule of a run's snapshot (`{"band", "min_rate", "min_reviews"}`); None when off."""
        if not settings or not settings.get("band"):
            return None
        return cls(
            band=settings["band"],
            min_rate=float(settings["min_rate"]),
            min_reviews=int(settings["min_reviews"]),
        )


@dataclass(frozen=True)
class BandRecord:
    """Reviewers' last decisions in a band: how many, and how many were approvals."""

    approved: int
    decided: int

    def earns(self, rule: AutoApprovalRule) -> bool:
        return self.decided >= rule.min_reviews and self.approved / self.decided >= rule.min_rate


def band_record(*, project_id: int, band: str, agent_id: int | None, last: int) -> BandRecord:
    """People's last `last` decisions (approved or rejected, newest review first) on
    proposals of `project_id` in `band`, of runs by `agent_id` when given. An auto-approval
    is not one; a reviewer's later decision on the same proposal (after an undo) is."""
    decided = (
        TaskProposal.objects.filter(
            project_id=project_id,
            band=band,
            status__in=[TaskProposal.Status.APPROVED, TaskProposal.Status.REJECTED],
        )
        .exclude(review_action=ReviewEvent.Action.AUTO_APPROVE)
        .order_by("-reviewed_at", "-pk")
    )
    if agent_id is not None:
        decided = decided.filter(run__assignment__agent_id=agent_id)
    statuses = list(decided.values_list("status", flat=True)[:last])
    approved = sum(status == TaskProposal.Status.APPROVED for status in statuses)
    return BandRecord(approved=approved, decided=len(statuses))


def auto_approvable(
    *, proposal: TaskProposal, rule: AutoApprovalRule | None, record: BandRecord
) -> str | None:
    """Why `proposal` may be approved by the system under `rule`, given the band's `record`
    (the event's note), or None when it may not: the rule is off, or the proposal was
    reviewed before (an auto-approval undone stays with the reviewer), is of another band,
    recommends anything but a new task, repeats a proposal or a task, is no valid task, or
    reviewers' record in the band falls short."""
    if (
        rule is None
        or proposal.status != TaskProposal.Status.PENDING
        or proposal.review_action
        or proposal.band != rule.band
        or proposal.recommendation != TaskProposal.Recommendation.NEW_TASK
        or proposal.similar_proposal_id is not None
        or proposal.similar_task_id is not None
        or not proposal.title.strip()
        or proposal.priority not in Task.Priority.values
        or proposal.category not in Task.Category.values
        or not record.earns(rule)
    ):
        return None
    return (
        f"Auto-approved: band {rule.band}: {record.approved} of {record.decided} last reviews approved, "
        f">= {rule.min_rate:.0%}."
    )


def _rule_still_on(project_id: int, rule: AutoApprovalRule) -> bool:
    """Whether the project's current configuration still auto-approves the rule's band: a
    team lead who turns it off stops it for runs already going too."""
    current = ProjectConfig.objects.filter(project_id=project_id, is_current=True).values_list(
        "auto_approve_band", flat=True
    )
    return list(current) == [rule.band]


def auto_approve_proposals(
    *, proposal_ids: Iterable[int], rules: Mapping[int, AutoApprovalRule | None], agent_id: int | None
) -> list[int]:
    """Approve as the system those of `proposal_ids` that `auto_approvable` allows under
    their project's rule in `rules` (by project id); return their ids. Each proposal is one
    transaction that locks its row; one that fails is logged and stays pending, and never
    fails the caller (a batch's commit is done by then)."""
    approved: list[int] = []
    for proposal_id in sorted(set(proposal_ids)):
        try:
            with transaction.atomic():
                proposal = (
                    TaskProposal.objects.select_for_update(of=("self",))
                    .select_related("project")
                    .filter(pk=proposal_id)
                    .first()
                )
                rule = rules.get(proposal.project_id) if proposal is not None else None
                if proposal is None or rule is None or not _rule_still_on(proposal.project_id, rule):
                    continue
                record = band_record(
                    project_id=proposal.project_id, band=rule.band, agent_id=agent_id, last=rule.min_reviews
                )
                note = auto_approvable(proposal=proposal, rule=rule, record=record)
                if note is None:
                    continue
                auto_approve_proposal(proposal=proposal, note=note)
            approved.append(proposal_id)
            logger.info("Auto-approved proposal %s: %s", proposal_id, note)
        except Exception:
            logger.exception("Auto-approving proposal %s failed; it stays pending", proposal_id)
    return approved
