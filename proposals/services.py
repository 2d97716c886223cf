"""Writes of the `proposals` app."""

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q

from projects.models import Project, Task
from proposals.models import TaskProposal
from sources.models import Message

SIMILAR_TITLE_RATIO = 0.85
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ProposalData:
    """One proposal as an LLM answer gives it, already checked against the schema."""

    title: str
    description: str
    priority: str
    category: str
    tags: list[str]
    due_date: date | None
    confidence: float
    reasoning: str
    recommendation: str
    assignee_name: str


@dataclass(frozen=True)
class Similarity:
    proposal: TaskProposal | None
    task: Task | None
    score: float
    kind: str


def _normal_title(title: str) -> str:
    return _SPACES.sub(" ", title.casefold()).strip()


def find_similar(*, project: Project, message_ids: Sequence[int], title: str) -> Similarity | None:
    """The pending or approved proposal, or task, this one repeats: first by source
    messages (same or overlapping, scored by Jaccard), then by a close title."""
    wanted = set(message_ids)
    live = Q(status__in=[TaskProposal.Status.PENDING, TaskProposal.Status.APPROVED])
    candidates = (
        TaskProposal.objects.filter(live, project=project, source_messages__in=wanted)
        .distinct()
        .select_related("task")
        .prefetch_related("source_messages")
    )
    best: Similarity | None = None
    for candidate in candidates:
        theirs = {m.pk for m in candidate.source_messages.all()}
        score = len(wanted & theirs) / len(wanted | theirs)
        if best is None or score > best.score:
            kind = TaskProposal.SimilarityKind.SAME_MESSAGES if score == 1 else "overlapping_messages"
            task = candidate.task if candidate.status == TaskProposal.Status.APPROVED else None
            best = Similarity(proposal=candidate, task=task, score=round(score, 3), kind=kind)
    if best is not None:
        return best
    normal = _normal_title(title)
    titled = TaskProposal.objects.filter(live, project=project).only("pk", "title")
    for candidate in titled.order_by("-created_at")[:500]:
        ratio = difflib.SequenceMatcher(None, normal, _normal_title(candidate.title)).ratio()
        if ratio >= SIMILAR_TITLE_RATIO and (best is None or ratio > best.score):
            best = Similarity(proposal=candidate, task=None, score=round(ratio, 3), kind="similar_title")
    for task in (
        Task.objects.filter(project=project).exclude(status=Task.Status.CANCELLED).only("pk", "title")[:500]
    ):
        ratio = difflib.SequenceMatcher(None, normal, _normal_title(task.title)).ratio()
        if ratio >= SIMILAR_TITLE_RATIO and (best is None or ratio > best.score):
            best = Similarity(proposal=None, task=task, score=round(ratio, 3), kind="similar_title")
    return best


def create_proposal(
    *,
    project: Project,
    data: ProposalData,
    source_messages: Sequence[Message],
    suggested_assignee: AbstractBaseUser | None,
    run: Any = None,
    batch: Any = None,
) -> TaskProposal:
    """Save one proposal with its sources. A proposal that repeats a live one is marked
    with what it repeats (never dropped), so the reviewer decides. Call inside the
    transaction that saves its batch."""
    similar = find_similar(project=project, message_ids=[m.pk for m in source_messages], title=data.title)
    proposal = TaskProposal.objects.create(
        run=run,
        batch=batch,
        project=project,
        title=data.title[:300],
        description=data.description,
        suggested_assignee=suggested_assignee,
        suggested_assignee_name=data.assignee_name[:255],
        priority=data.priority,
        category=data.category,
        tags=data.tags,
        due_date=data.due_date,
        confidence=data.confidence,
        recommendation=data.recommendation,
        reasoning=data.reasoning,
        similar_proposal=similar.proposal if similar else None,
        similar_task=similar.task if similar else None,
        similarity_score=similar.score if similar else None,
        similarity_kind=similar.kind if similar else "",
    )
    proposal.source_messages.set(source_messages)
    return proposal
