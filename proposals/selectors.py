"""Reads of the `proposals` app, with their related rows loaded up front."""

from typing import Any

from django.db.models import Prefetch, QuerySet

from proposals.models import HIGH_CONFIDENCE, MEDIUM_CONFIDENCE, ReviewEvent, TaskProposal
from proposals.services import reviewable_projects
from sources.models import Message


def proposal_list() -> QuerySet[TaskProposal]:
    """Proposals with what a list shows: project, run, assignee, reviewer, task, sources."""
    return TaskProposal.objects.select_related(
        "project", "run", "suggested_assignee", "reviewer", "task", "similar_proposal", "similar_task"
    ).prefetch_related(
        Prefetch("source_messages", queryset=Message.objects.select_related("chat").order_by("sent_at"))
    )


def proposal_detail() -> QuerySet[TaskProposal]:
    return proposal_list().prefetch_related(
        Prefetch(
            "review_events",
            queryset=ReviewEvent.objects.select_related("user", "task").order_by("-created_at"),
        )
    )


def filter_band(queryset: QuerySet[TaskProposal], band: str | None) -> QuerySet[TaskProposal]:
    """Confidence bands: high above 0.9, medium 0.7 to 0.9, low below 0.7."""
    if band == TaskProposal.Band.HIGH:
        return queryset.filter(confidence__gt=HIGH_CONFIDENCE)
    if band == TaskProposal.Band.MEDIUM:
        return queryset.filter(confidence__gte=MEDIUM_CONFIDENCE, confidence__lte=HIGH_CONFIDENCE)
    if band == TaskProposal.Band.LOW:
        return queryset.filter(confidence__lt=MEDIUM_CONFIDENCE)
    return queryset


def review_queue(
    user: Any, *, project_id: int | None = None, band: str | None = None
) -> QuerySet[TaskProposal]:
    """The pending proposals a user may review, most confident first, then oldest."""
    queryset = (
        proposal_list().filter(reviewable_projects(user), status=TaskProposal.Status.PENDING).distinct()
    )
    if project_id:
        queryset = queryset.filter(project_id=project_id)
    return filter_band(queryset, band).order_by("-confidence", "created_at", "pk")


def message_context(message: Message, *, around: int = 3) -> list[Message]:
    """A source message with a few messages before and after it in its chat."""
    chat_messages = Message.objects.filter(chat_id=message.chat_id).order_by()
    before = list(chat_messages.filter(sent_at__lt=message.sent_at).order_by("-sent_at", "-pk")[:around])
    after = list(chat_messages.filter(sent_at__gt=message.sent_at).order_by("sent_at", "pk")[:around])
    return [*reversed(before), message, *after]
