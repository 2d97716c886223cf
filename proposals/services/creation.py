"""Creating proposals: from an LLM's answer, a batch at a time, or from the parts of a split
(`split_proposal`), each marked with the live proposal or task it repeats (`DuplicateFinder`)."""

import difflib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Subquery
from django.utils import timezone

from projects.models import Project, Task
from proposals.models import FIXED_BANDS, PROPOSAL_FTS, Bands, TaskProposal, confidence_band
from sources.models import Message

SIMILAR_TITLE_RATIO = 0.85
CANDIDATES = 20  # the stored titles closest by trigrams to a new one, of proposals and of tasks
LIVE = (TaskProposal.Status.PENDING, TaskProposal.Status.APPROVED)
_SPACES = re.compile(r"\s+")
Param = int | str


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


@dataclass(frozen=True)
class Candidates:
    """The stored titles a new title may repeat, as (pk, title), newest first: the live
    proposals' and the tasks'."""

    proposals: list[tuple[int, str]]
    tasks: list[tuple[int, str]]


def title_candidates(*, project_id: int, titles: Iterable[str]) -> dict[str, Candidates]:
    """For each title, the `CANDIDATES` live proposals and as many tasks (not cancelled) of
    the project whose titles are closest to it by trigrams, read from the trigram indexes
    (proposals' 0004 and projects' 0005 migrations): two queries, whatever the number of
    titles and the size of the project's history. Their difflib ratio is the caller's to
    compute: the trigram filter is only a sieve, wide enough that a title at the duplicate
    threshold (`SIMILAR_TITLE_RATIO`) passes it: on PostgreSQL the nearest titles whatever
    their distance; on SQLite unless it shares less than a third of its trigrams
    (`MIN_SHARED_TRIGRAMS`), as titles of one or two letters or of punctuation alone do."""
    titles = list(dict.fromkeys(titles))
    if not titles:
        return {}
    vendor = connection.vendor
    if vendor == "postgresql":
        return _postgres_candidates(project_id, titles)
    if vendor == "sqlite":
        return _sqlite_candidates(project_id, titles)
    raise NotImplementedError(f"No title index on {vendor}: the duplicate check needs PostgreSQL or SQLite.")


def _postgres_candidates(project_id: int, titles: list[str]) -> dict[str, Candidates]:
    """The `CANDIDATES` titles of the project nearest by pg_trgm's distance (`<->`,
    1 - similarity), read in distance order from the GiST index on (project_id,
    UPPER(title)) (migration 0007), one LATERAL subquery per title: the index stops after
    the nearest, however long the history, and no threshold leaves a nearest title out.
    Ordered by the distance alone (another key would sort the project's rows); the lists
    are then newest first."""
    found: dict[str, Candidates] = {t: Candidates([], []) for t in titles}
    for table, live, which in (
        (TaskProposal._meta.db_table, "status = ANY(%s)", "proposals"),
        (Task._meta.db_table, "status <> ALL(%s)", "tasks"),
    ):
        statuses = list(LIVE) if which == "proposals" else [Task.Status.CANCELLED]
        sql = f"""
            SELECT q.i, c.id, c.title FROM unnest(%s::text[]) WITH ORDINALITY AS q(t, i)
            CROSS JOIN LATERAL (
                SELECT id, title, created_at FROM {table}
                WHERE project_id = %s AND {live}
                ORDER BY UPPER(title) <-> UPPER(q.t)
                LIMIT %s
            ) c
            ORDER BY q.i, c.created_at DESC, c.id DESC"""  # noqa: S608 (table names are ours)
        with connection.cursor() as cursor:
            cursor.execute(sql, [titles, project_id, statuses, CANDIDATES])
            for i, pk, title in cursor.fetchall():
                getattr(found[titles[i - 1]], which).append((pk, title))
    return found


TASK_FTS = "projects_task_fts"
MIN_SHARED_TRIGRAMS = 1 / 3


def _trigrams(title: str) -> set[str]:
    """The terms of SQLite FTS5's trigram tokenizer: every three characters, case folded."""
    folded = title.lower()
    return {folded[i : i + 3] for i in range(len(folded) - 2)}


def _fts_phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _sqlite_candidates(project_id: int, titles: list[str]) -> dict[str, Candidates]:
    """FTS5 trigram tables (kept by triggers). A title at the threshold shares at least a
    third of its trigrams (`MIN_SHARED_TRIGRAMS`) with the one it repeats, so it shares at
    least one of any two thirds of them, plus one: the rarest ones, as the tables'
    vocabularies count them (one query), whose posting lists are short however long the
    history. Rows holding any of those are ranked by bm25, the best `CANDIDATES` kept (one
    query, a UNION ALL of one subquery per title and table)."""
    grams = {t: _trigrams(t) for t in titles}
    everything = sorted(set().union(*grams.values()))
    if not everything:
        return {t: Candidates([], []) for t in titles}
    marks = ", ".join(["%s"] * len(everything))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 'proposals', term, doc FROM {PROPOSAL_FTS}_vocab "  # noqa: S608
            f"WHERE col = 'title' AND term IN ({marks}) "
            f"UNION ALL SELECT 'tasks', term, doc FROM {TASK_FTS}_vocab WHERE term IN ({marks})",
            [*everything, *everything],
        )
        docs = {(which, term): doc for which, term, doc in cursor.fetchall()}
    parts: list[tuple[str, list[Param]]] = []
    for i, title in enumerate(titles):
        needed = math.ceil(len(grams[title]) * MIN_SHARED_TRIGRAMS)
        for which, fts, table, live in (
            ("proposals", PROPOSAL_FTS, TaskProposal._meta.db_table, "c.status IN (%s, %s)"),
            ("tasks", TASK_FTS, Task._meta.db_table, "c.status <> %s"),
        ):
            present = sorted((docs[which, g], g) for g in grams[title] if (which, g) in docs)
            rarest = [g for _, g in present[: len(present) - needed + 1]]
            if not rarest:
                continue
            statuses = list(LIVE) if which == "proposals" else [Task.Status.CANCELLED]
            match = "title : (" + " OR ".join(_fts_phrase(g) for g in rarest) + ")"
            sql = (
                f"SELECT * FROM (SELECT %s, %s, c.id, c.title, c.created_at FROM {fts} "  # noqa: S608
                f"JOIN {table} c ON c.id = {fts}.rowid WHERE {fts} MATCH %s AND c.project_id = %s "
                f"AND {live} ORDER BY {fts}.rank LIMIT %s)"
            )
            parts.append((sql, [i, which, match, project_id, *statuses, CANDIDATES]))
    rows: list[tuple[int, str, int, str, str]] = []
    with connection.cursor() as cursor:
        for start in range(0, len(parts), 200):  # SQLite allows 500 terms in a compound SELECT
            chunk = parts[start : start + 200]
            cursor.execute(" UNION ALL ".join(sql for sql, _ in chunk), [p for _, ps in chunk for p in ps])
            rows += cursor.fetchall()
    found = {t: Candidates([], []) for t in titles}
    # Newest first: created_at (ISO text on SQLite), then id.
    for i, which, pk, title, _ in sorted(rows, key=lambda r: (r[4], r[2]), reverse=True):
        getattr(found[titles[i]], which).append((pk, title))
    return found


class DuplicateFinder:
    """Finds what new proposals repeat among the live proposals and tasks of their projects,
    in a constant number of queries however many proposals there are and however long the
    projects' history: one for the live proposals citing any of `message_ids` (with all their
    sources), and per project two (`title_candidates`) for the few titles of its live
    proposals and tasks closest to `titles` by trigrams, read from an index, when a proposal
    first needs them (a title not given in `titles` costs two more). Proposals being created
    are `add`ed, so the proposals of one batch are compared with each other."""

    def __init__(
        self,
        *,
        project_ids: Iterable[int],
        message_ids: Iterable[int],
        titles: Mapping[int, Iterable[str]] | None = None,
    ) -> None:
        self._by_message: dict[int, list[_Live]] = defaultdict(list)
        self._wanted: dict[int, set[str]] = {pk: set(t) for pk, t in (titles or {}).items()}
        self._candidates: dict[int, dict[str, Candidates]] = defaultdict(dict)
        self._new_titles: dict[int, list[_Title]] = defaultdict(list)  # newest first
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
        (same or overlapping, scored by Jaccard), then by a close title: the best difflib
        ratio among the proposals of this call and the candidates, newest first on a tie,
        proposals before tasks."""
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
        stored = self._title_candidates(project_id, title)
        for old in [*self._new_titles[project_id], *(_Title(pk, t) for pk, t in stored.proposals)]:
            ratio = _title_ratio(new, old, beat=best.score if best else None)
            if ratio >= SIMILAR_TITLE_RATIO and (best is None or ratio > best.score):
                best = Similarity(old.ref, None, round(ratio, 3), "similar_title")
        for pk, task_title in stored.tasks:
            ratio = _title_ratio(new, _Title(pk, task_title), beat=best.score if best else None)
            if ratio >= SIMILAR_TITLE_RATIO and (best is None or ratio > best.score):
                best = Similarity(None, pk, round(ratio, 3), "similar_title")
        return best

    def add(self, proposal: TaskProposal, *, message_ids: Iterable[int]) -> None:
        """A proposal being created (pending, so live): later ones are compared with it."""
        self._added += 1
        order = (-proposal.confidence, timezone.now(), 1, self._added)
        live = _Live(proposal, proposal.project_id, set(message_ids), None, order)
        for message_id in live.messages:
            self._by_message[message_id].append(live)
        self._new_titles[proposal.project_id].insert(0, _Title(proposal, proposal.title))

    def _title_candidates(self, project_id: int, title: str) -> "Candidates":
        loaded = self._candidates[project_id]
        if title not in loaded:
            missing = {title} | (self._wanted.pop(project_id, set()) - loaded.keys())
            loaded.update(title_candidates(project_id=project_id, titles=missing))
        return loaded[title]


@dataclass(frozen=True)
class NewProposal:
    project: Project
    data: ProposalData
    source_messages: Sequence[Message]
    suggested_assignee: User | None = None
    band: str = ""  # given (a split keeps its proposal's), else from `create_proposals`' bands


@transaction.atomic(savepoint=False)  # called inside its batch's transaction: no SAVEPOINT
def create_proposals(
    *,
    proposals: Sequence[NewProposal],
    run_id: int | None = None,
    batch_id: int | None = None,
    bands: Mapping[int, Bands] | None = None,
) -> list[TaskProposal]:
    """Save proposals with their sources, in a constant number of queries. A proposal that
    repeats a live one or a task (one saved before, or one before it in `proposals`) is
    marked with what it repeats, never dropped, so the reviewer decides. Call inside the
    transaction that saves their batch (or the split they come from).

    The run and the batch go by id: `proposals` may not import `analysis`, not even for
    annotations (apps depend one way), and the rows need only the keys. `bands` gives the
    band thresholds of a project (its run's snapshot); the fixed ones where it gives none."""
    if not proposals:
        return []
    titles: dict[int, list[str]] = defaultdict(list)
    for p in proposals:
        titles[p.project.pk].append(p.data.title)
    finder = DuplicateFinder(
        project_ids=titles.keys(),
        message_ids={m.pk for p in proposals for m in p.source_messages},
        titles=titles,
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
            band=new.band or confidence_band(data.confidence, (bands or {}).get(new.project.pk, FIXED_BANDS)),
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
