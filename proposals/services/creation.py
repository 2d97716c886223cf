"""Creating proposals: from an LLM's answer, a batch at a time, or from the parts of a split
(`split_proposal`), each marked with the live proposal or task it repeats (`DuplicateFinder`)."""

import difflib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Subquery
from django.utils import timezone

from projects.models import Project, Task
from proposals.models import TaskProposal
from sources.models import Message

SIMILAR_TITLE_RATIO = 0.85
LIVE = (TaskProposal.Status.PENDING, TaskProposal.Status.APPROVED)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ProposalData:
    """One proposal as an LLM answer gives it, already checked against the schema."""

    # What is copied as it is into the stored proposal (`create_proposals`), and from a
    # stored proposal into its parts (`split_proposal`).
    COPIED = ("description", "priority", "category", "tags", "due_date", "confidence", "recommendation")

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


@dataclass
class _Live:
    """A live (pending or approved) proposal as duplicate detection sees it: `ref` is its pk,
    or the proposal itself while it is being created with others of its batch."""

    ref: "int | TaskProposal"
    project_id: int
    messages: set[int]
    task_id: int | None
    # TaskProposal's default ordering (-confidence, created_at), then saved before new, then id.
    order: tuple[float, datetime, int, int]


class _Title:
    """A title, normalised, with its characters counted when first needed."""

    __slots__ = ("_counts", "normal", "ref")

    def __init__(self, ref: "int | TaskProposal", title: str) -> None:
        self.ref = ref
        self.normal = _normal_title(title)
        self._counts: Counter[str] | None = None

    @property
    def counts(self) -> Counter[str]:
        if self._counts is None:
            self._counts = Counter(self.normal)
        return self._counts


@dataclass(frozen=True)
class Similarity:
    proposal: "int | TaskProposal | None"
    task_id: int | None
    score: float
    kind: str


def _normal_title(title: str) -> str:
    return _SPACES.sub(" ", title.casefold()).strip()


def _common(a: Counter[str], b: Counter[str]) -> int:
    """How many characters two strings have in common (`sum((a & b).values())`, 8x faster)."""
    common, other = 0, b.get
    for char, count in a.items():
        theirs = other(char, 0)
        common += count if count < theirs else theirs
    return common


def _title_ratio(new: _Title, old: _Title, *, beat: float | None = None) -> float:
    """difflib's similarity of two titles; 0 when its exact upper bounds (the lengths, then the
    characters in common: `real_quick_ratio`, `quick_ratio`) rule out reaching
    `SIMILAR_TITLE_RATIO`, or exceeding `beat` (the best score so far)."""
    length = len(new.normal) + len(old.normal)
    if length:
        for bound in (
            2.0 * min(len(new.normal), len(old.normal)) / length,
            2.0 * _common(new.counts, old.counts) / length,
        ):
            if bound < SIMILAR_TITLE_RATIO or (beat is not None and bound <= beat):
                return 0.0
    return difflib.SequenceMatcher(None, new.normal, old.normal).ratio()


class DuplicateFinder:
    """Finds what new proposals repeat among the live proposals and tasks of their projects,
    in a constant number of queries however many proposals there are: one for the live
    proposals citing any of `message_ids` (with all their sources), and per project two for
    the newest live proposal and task titles, when a proposal first needs them. Proposals
    being created are `add`ed, so the proposals of one batch are compared with each other."""

    TITLES = 500  # the newest live proposals, and tasks, whose titles are compared

    def __init__(self, *, project_ids: Iterable[int], message_ids: Iterable[int]) -> None:
        self._by_message: dict[int, list[_Live]] = defaultdict(list)
        self._titles: dict[int, tuple[list[_Title], list[_Title]]] = {}
        self._new_titles: dict[int, list[_Title]] = defaultdict(list)
        self._added = 0
        message_ids, project_ids = set(message_ids), set(project_ids)
        if not message_ids or not project_ids:
            return
        through = TaskProposal.source_messages.through
        citing = through.objects.filter(
            message_id__in=message_ids,
            taskproposal__project_id__in=project_ids,
            taskproposal__status__in=LIVE,
        ).values("taskproposal_id")
        rows = through.objects.filter(taskproposal_id__in=Subquery(citing)).values_list(
            "taskproposal_id",
            "message_id",
            "taskproposal__project_id",
            "taskproposal__status",
            "taskproposal__task_id",
            "taskproposal__confidence",
            "taskproposal__created_at",
        )
        live: dict[int, _Live] = {}
        for pk, message_id, project_id, status, task_id, confidence, created_at in rows:
            if pk not in live:
                approved = status == TaskProposal.Status.APPROVED
                order = (-confidence, created_at, 0, pk)
                live[pk] = _Live(pk, project_id, set(), task_id if approved else None, order)
            live[pk].messages.add(message_id)
        for candidate in live.values():
            for message_id in candidate.messages & message_ids:
                self._by_message[message_id].append(candidate)

    def find(self, *, project_id: int, message_ids: Iterable[int], title: str) -> Similarity | None:
        """The live proposal, or task, a new proposal repeats: first by source messages
        (same or overlapping, scored by Jaccard), then by a close title."""
        wanted = set(message_ids)
        candidates = {
            id(c): c for m in wanted for c in self._by_message.get(m, ()) if c.project_id == project_id
        }
        best: Similarity | None = None
        for candidate in sorted(candidates.values(), key=lambda c: c.order):
            score = len(wanted & candidate.messages) / len(wanted | candidate.messages)
            if best is None or score > best.score:
                kind = TaskProposal.SimilarityKind.SAME_MESSAGES if score == 1 else "overlapping_messages"
                best = Similarity(candidate.ref, candidate.task_id, round(score, 3), kind)
        if best is not None:
            return best
        new = _Title(0, title)
        proposals, tasks = self._load_titles(project_id)
        for old in proposals:
            ratio = _title_ratio(new, old, beat=best.score if best else None)
            if ratio >= SIMILAR_TITLE_RATIO and (best is None or ratio > best.score):
                best = Similarity(old.ref, None, round(ratio, 3), "similar_title")
        for old in tasks:
            ratio = _title_ratio(new, old, beat=best.score if best else None)
            if ratio >= SIMILAR_TITLE_RATIO and (best is None or ratio > best.score):
                best = Similarity(None, int(old.ref), round(ratio, 3), "similar_title")  # type: ignore[arg-type]
        return best

    def add(self, proposal: TaskProposal, *, message_ids: Iterable[int]) -> None:
        """A proposal being created (pending, so live): later ones are compared with it."""
        self._added += 1
        order = (-proposal.confidence, timezone.now(), 1, self._added)
        live = _Live(proposal, proposal.project_id, set(message_ids), None, order)
        for message_id in live.messages:
            self._by_message[message_id].append(live)
        titled = _Title(proposal, proposal.title)
        if proposal.project_id in self._titles:
            proposals = self._titles[proposal.project_id][0]
            proposals.insert(0, titled)
            del proposals[self.TITLES :]
        else:
            self._new_titles[proposal.project_id].insert(0, titled)

    def _load_titles(self, project_id: int) -> tuple[list[_Title], list[_Title]]:
        if project_id not in self._titles:
            proposals = TaskProposal.objects.filter(project_id=project_id, status__in=LIVE).order_by(
                "-created_at", "-pk"
            )
            tasks = Task.objects.filter(project_id=project_id).exclude(status=Task.Status.CANCELLED)
            self._titles[project_id] = (
                [
                    *self._new_titles.pop(project_id, []),
                    *(_Title(pk, t) for pk, t in proposals.values_list("pk", "title")[: self.TITLES]),
                ][: self.TITLES],
                [_Title(pk, t) for pk, t in tasks.values_list("pk", "title")[: self.TITLES]],
            )
        return self._titles[project_id]


@dataclass(frozen=True)
class NewProposal:
    project: Project
    data: ProposalData
    source_messages: Sequence[Message]
    suggested_assignee: User | None = None


@transaction.atomic(savepoint=False)  # called inside its batch's transaction: no SAVEPOINT
def create_proposals(
    *, proposals: Sequence[NewProposal], run_id: int | None = None, batch_id: int | None = None
) -> list[TaskProposal]:
    """Save proposals with their sources, in a constant number of queries. A proposal that
    repeats a live one or a task (one saved before, or one before it in `proposals`) is
    marked with what it repeats, never dropped, so the reviewer decides. Call inside the
    transaction that saves their batch (or the split they come from).

    The run and the batch go by id: `proposals` may not import `analysis`, not even for
    annotations (apps depend one way), and the rows need only the keys."""
    if not proposals:
        return []
    finder = DuplicateFinder(
        project_ids={p.project.pk for p in proposals},
        message_ids={m.pk for p in proposals for m in p.source_messages},
    )
    rows: list[TaskProposal] = []
    repeats: list[tuple[TaskProposal, TaskProposal]] = []  # a proposal, the earlier one of this call
    for new in proposals:
        data, message_ids = new.data, [m.pk for m in new.source_messages]
        similar = finder.find(project_id=new.project.pk, message_ids=message_ids, title=data.title)
        proposal = TaskProposal(
            run_id=run_id,
            batch_id=batch_id,
            project=new.project,
            title=data.title[:300],
            **{name: getattr(data, name) for name in ProposalData.COPIED},
            suggested_assignee=new.suggested_assignee,
            suggested_assignee_name=data.assignee_name[:255],
            reasoning=data.reasoning,
            similar_task_id=similar.task_id if similar else None,
            similarity_score=similar.score if similar else None,
            similarity_kind=similar.kind if similar else "",
        )
        if similar is not None:
            if isinstance(similar.proposal, TaskProposal):
                repeats.append((proposal, similar.proposal))
            else:
                proposal.similar_proposal_id = similar.proposal
        finder.add(proposal, message_ids=message_ids)
        rows.append(proposal)
    TaskProposal.objects.bulk_create(rows)  # sets the pks (PostgreSQL, SQLite 3.35+)
    if repeats:
        for proposal, earlier in repeats:
            proposal.similar_proposal = earlier
        TaskProposal.objects.bulk_update([p for p, _ in repeats], ["similar_proposal"])
    through = TaskProposal.source_messages.through
    through.objects.bulk_create(
        through(taskproposal_id=proposal.pk, message_id=message_id)
        for proposal, new in zip(rows, proposals, strict=True)
        for message_id in dict.fromkeys(m.pk for m in new.source_messages)
    )
    return rows


def create_proposal(
    *,
    project: Project,
    data: ProposalData,
    source_messages: Sequence[Message],
    suggested_assignee: User | None,
    run_id: int | None = None,
    batch_id: int | None = None,
) -> TaskProposal:
    """Save one proposal with its sources, marked with what it repeats (`create_proposals`)."""
    new = NewProposal(project, data, source_messages, suggested_assignee)
    return create_proposals(proposals=[new], run_id=run_id, batch_id=batch_id)[0]
