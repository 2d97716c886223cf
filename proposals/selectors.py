"""Reads of the `proposals` app, with their related rows loaded up front. Who sees and
reviews which proposals is `projects.access`'s to say: the members of a project see its
proposals, its reviewers and leads review them."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from django.db import connection
from django.db.models import Count, Prefetch, Q, QuerySet, prefetch_related_objects
from django.db.models.expressions import RawSQL

from projects import access
from projects.models import Project, ProjectMembership, Task
from proposals.models import PROPOSAL_FTS, ReviewEvent, TaskProposal
from sources.models import Chat, Message
from tasktracker.types import AnyUser


def proposal_list() -> QuerySet[TaskProposal]:
    """Proposals with what a list shows: project, run, assignee, reviewer, task, sources."""
    return TaskProposal.objects.select_related(
        "project", "run", "suggested_assignee", "reviewer", "task", "similar_proposal", "similar_task"
    ).prefetch_related(
        Prefetch("source_messages", queryset=Message.objects.select_related("chat").order_by("sent_at"))
    )


# What the API's list shows of a proposal's neighbours: names and titles, not whole rows.
SUMMARY_RELATED_FIELDS = (
    "project__name",
    "reviewer__username",
    "similar_proposal__title",
    "similar_task__title",
)
# What a source message shows in a list: its `link` needs the chat's username, type and id.
SOURCE_FIELDS = (
    "id",
    "chat_id",
    "telegram_id",
    "author_id",
    "author_name",
    "text",
    "sent_at",
    "chat__title",
    "chat__username",
    "chat__type",
    "chat__telegram_id",
)


def proposal_summaries() -> QuerySet[TaskProposal]:
    """Proposals with what the API's list shows and no more: every column of the proposal,
    the names and titles of its project, reviewer and similar proposal or task, and its
    source messages without their raw Telegram payloads. The other foreign keys are ids."""
    own = [field.attname for field in TaskProposal._meta.concrete_fields]
    return (
        TaskProposal.objects.select_related("project", "reviewer", "similar_proposal", "similar_task")
        .only(*own, *SUMMARY_RELATED_FIELDS)
        .prefetch_related(
            Prefetch(
                "source_messages",
                queryset=Message.objects.select_related("chat").only(*SOURCE_FIELDS).order_by("sent_at"),
            )
        )
    )


def proposals_visible_to(
    user: AnyUser, queryset: QuerySet[TaskProposal] | None = None
) -> QuerySet[TaskProposal]:
    """Proposals of the projects a user is on (all for staff); `proposal_list()` by default."""
    return access.scope(proposal_list() if queryset is None else queryset, user)


def proposals_reviewable_by(
    user: AnyUser, queryset: QuerySet[TaskProposal] | None = None
) -> QuerySet[TaskProposal]:
    """Proposals of the projects a user reviews (all for staff)."""
    return access.scope(proposal_list() if queryset is None else queryset, user, access.Action.REVIEW)


def proposal_detail() -> QuerySet[TaskProposal]:
    return proposal_list().prefetch_related(
        Prefetch(
            "review_events",
            queryset=ReviewEvent.objects.select_related("user", "task").order_by("-created_at"),
        )
    )


def filter_band(queryset: QuerySet[TaskProposal], band: str | None) -> QuerySet[TaskProposal]:
    """The proposals of a confidence band, as their runs' thresholds gave it (fixed: high
    above 0.9, medium 0.7 to 0.9, low below 0.7; or the project's calibrated ones)."""
    if band in TaskProposal.Band.values:
        return queryset.filter(band=band)
    return queryset


def review_queue(
    user: AnyUser,
    *,
    project_id: int | None = None,
    band: str | None = None,
    run_id: int | None = None,
    status: str | None = TaskProposal.Status.PENDING,
    text: str = "",
) -> QuerySet[TaskProposal]:
    """The proposals a user may review, pending ones unless `status` says otherwise (None:
    every status), of one project, band or run when given, with every word of `text` in
    their title or description; most confident first, then oldest."""
    queryset = proposals_reviewable_by(user)
    if status:
        queryset = queryset.filter(status=status)
    if project_id:
        queryset = queryset.filter(project_id=project_id)
    if run_id:
        queryset = queryset.filter(run_id=run_id)
    return filter_band(filter_words(queryset, text.split()), band).order_by("-confidence", "created_at", "pk")


def filter_words(queryset: QuerySet[TaskProposal], words: Iterable[str]) -> QuerySet[TaskProposal]:
    """Proposals with every word in their title or description, in any case: the review
    queue's text and the API's `search`. On PostgreSQL `icontains` uses the GIN trigram
    indexes on UPPER(title) and UPPER(description). On SQLite a word of three characters or
    more is a phrase of trigrams in the FTS5 index (a phrase of consecutive trigrams is a
    substring); a shorter one has no trigram and is looked for with `icontains`."""
    fts = connection.vendor == "sqlite"
    for word in words:
        if fts and len(word) >= 3:
            phrase = '{title description} : "' + word.replace('"', '""') + '"'
            matching = RawSQL(f"SELECT rowid FROM {PROPOSAL_FTS} WHERE {PROPOSAL_FTS} MATCH %s", [phrase])  # noqa: S608, S611
            queryset = queryset.filter(pk__in=matching)
        else:
            queryset = queryset.filter(Q(title__icontains=word) | Q(description__icontains=word))
    return queryset


@dataclass(frozen=True)
class QueueProgress:
    reviewed: int
    total: int

    @property
    def percent(self) -> int:
        return round(100 * self.reviewed / self.total) if self.total else 100


def queue_progress(queue: QuerySet[TaskProposal]) -> QueueProgress:
    """How many of a queue's proposals (whatever their status) are reviewed: one query."""
    counts = (
        queue.prefetch_related(None)
        .order_by()
        .aggregate(total=Count("pk"), pending=Count("pk", filter=Q(status=TaskProposal.Status.PENDING)))
    )
    return QueueProgress(reviewed=counts["total"] - counts["pending"], total=counts["total"])


class _Triaged(Protocol):
    """What `triage_list` adds to a proposal, for the page to show."""

    first_source: Message | None


def triage_list(queue: QuerySet[TaskProposal], *, limit: int) -> Sequence[TaskProposal]:
    """The first `limit` proposals of a queue as the list beside the shown one, each with
    its first source message (`first_source`): two queries."""
    first_sources = Prefetch(
        "source_messages",
        queryset=Message.objects.only("pk", "text", "sent_at").order_by("sent_at", "pk"),
        to_attr="ordered_sources",
    )
    rows = list(queue.select_related(None).prefetch_related(None).prefetch_related(first_sources)[:limit])
    for row in rows:
        cast(_Triaged, row).first_source = row.ordered_sources[0] if row.ordered_sources else None
    return rows


@dataclass(frozen=True)
class Guidelines:
    name: str
    instructions: str


def guidelines_of(proposal: TaskProposal | None) -> Guidelines | None:
    """The instructions of the task config that the proposal's run extracted with: the
    reviewer's guidelines. One query, through the run's relations (`proposals` imports no
    module of `analysis` or `agents`); None for a proposal made by hand."""
    if proposal is None or proposal.run_id is None:
        return None
    config = "run__assignment__task_config__"
    row = (
        TaskProposal.objects.filter(pk=proposal.pk)
        .values_list(f"{config}name", f"{config}instructions")
        .first()
    )
    return Guidelines(*row) if row else None


def duplicate_candidates(
    proposal: TaskProposal, text: str, *, limit: int = 8
) -> tuple[list[TaskProposal], list[Task]]:
    """Live proposals (pending or approved) and tasks of the proposal's project that it may
    duplicate: those with every word of `text` in their title or, with no text, the ones the
    duplicate check linked it to."""
    proposals = TaskProposal.objects.filter(
        project_id=proposal.project_id,
        status__in=[TaskProposal.Status.PENDING, TaskProposal.Status.APPROVED],
    ).exclude(pk=proposal.pk)
    tasks = Task.objects.filter(project_id=proposal.project_id)
    words = text.split()
    if not words:
        proposals = proposals.filter(pk=proposal.similar_proposal_id or 0)
        tasks = tasks.filter(pk=proposal.similar_task_id or 0)
    for word in words:
        proposals = proposals.filter(title__icontains=word)
        tasks = tasks.filter(title__icontains=word)
    return list(proposals.order_by("-created_at")[:limit]), list(tasks.order_by("-created_at")[:limit])


def message_context(message: Message, *, around: int = 3) -> list[Message]:
    """A source message with a few messages before and after it in its chat."""
    chat_messages = Message.objects.filter(chat_id=message.chat_id).order_by()
    before = list(chat_messages.filter(sent_at__lt=message.sent_at).order_by("-sent_at", "-pk")[:around])
    after = list(chat_messages.filter(sent_at__gt=message.sent_at).order_by("sent_at", "pk")[:around])
    return [*reversed(before), message, *after]


# The review pages: who reviews what, where a proposal sits in the queue, its chat context.


def may_review_any(user: AnyUser) -> bool:
    """Whether the user reviews some project's proposals: staff, or a reviewer or lead of one."""
    return access.can_anywhere(user, access.Action.REVIEW)


def projects_reviewable_by(user: AnyUser) -> QuerySet[Project]:
    """The projects whose proposals the user reviews."""
    return access.projects(user, access.Action.REVIEW)


def who_reviews_for(user: AnyUser) -> list[ProjectMembership]:
    """Who reviews the proposals of the projects a user is on: their reviewers and leads,
    for a user who reviews none of them to ask."""
    return list(access.reviewers(access.project_ids(user)))


def queue_neighbours(queue: QuerySet[TaskProposal], proposal: TaskProposal) -> tuple[int | None, int | None]:
    """The ids of the proposals just before and just after `proposal` in a queue ordered
    like `review_queue` (confidence down, then oldest, then id). Compared by value, so it
    works for a proposal that has left the queue (reviewed a moment ago)."""
    confidence, created_at, pk = proposal.confidence, proposal.created_at, proposal.pk
    later = (
        Q(confidence__lt=confidence)
        | Q(confidence=confidence, created_at__gt=created_at)
        | Q(confidence=confidence, created_at=created_at, pk__gt=pk)
    )
    earlier = (
        Q(confidence__gt=confidence)
        | Q(confidence=confidence, created_at__lt=created_at)
        | Q(confidence=confidence, created_at=created_at, pk__lt=pk)
    )
    ids = queue.prefetch_related(None).values_list("pk", flat=True)
    previous_id = ids.filter(earlier).order_by("confidence", "-created_at", "-pk").first()
    next_id = ids.filter(later).order_by("-confidence", "created_at", "pk").first()
    return previous_id, next_id


@dataclass(frozen=True)
class ContextLine:
    message: Message
    is_source: bool


@dataclass(frozen=True)
class ChatExcerpt:
    """A stretch of one chat around a proposal's source messages."""

    chat: Chat
    lines: list[ContextLine]


def source_context(proposal: TaskProposal, *, around: int = 3) -> list[ChatExcerpt]:
    """The proposal's source messages in their chats, each with `around` messages before
    and after (`message_context`). Windows that overlap are joined, so a message shows once.
    Costs two queries per source message, whatever else is on the page."""
    prefetch_related_objects(
        [proposal],
        Prefetch("source_messages", queryset=Message.objects.select_related("chat").order_by("sent_at")),
    )
    sources = sorted(proposal.source_messages.all(), key=lambda m: (m.chat_id, m.sent_at, m.pk))
    source_ids = {m.pk for m in sources}
    excerpts: list[tuple[Chat, dict[int, Message]]] = []
    for source in sources:
        window = message_context(source, around=around)
        for message in window:
            message.chat = source.chat  # One chat: its link needs no query per message.
        last = excerpts[-1] if excerpts else None
        if last is not None and last[0].pk == source.chat_id and any(m.pk in last[1] for m in window):
            last[1].update((m.pk, m) for m in window)
        else:
            excerpts.append((source.chat, {m.pk: m for m in window}))
    return [
        ChatExcerpt(
            chat=chat,
            lines=[
                ContextLine(message=m, is_source=m.pk in source_ids)
                for m in sorted(messages.values(), key=lambda m: (m.sent_at, m.pk))
            ],
        )
        for chat, messages in excerpts
    ]
