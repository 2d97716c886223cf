"""Measure extraction on real annotated data (`manage.py evaluate_extraction`, README "Quality").

AMI meetings: each meeting becomes a chat (an utterance a message, its speaker the author,
the meeting's start plus the utterance's `start` seconds the time it was sent) read by a
project of its own, and goes through the real pipeline in this process: `start_run`,
`begin_run`, `plan_run`, then `process_batch` for each batch, the agent called through the
LLM gateway. Everything a meeting writes is rolled back when it is measured, so the run's
Celery task, queued on commit, is never sent and no row is left behind. Proposals are matched
to the meeting's gold action items (`match_proposals`) and counted overall, per confidence
band and against a naive baseline (`baseline_proposals`).

Email intent: the Enron sentences go through the prefilter alone.

The data is read from `../shared/eval/` and never copied. Each dataset has a development
part, to tune on, and a held-out part, read only when asked for by name.
"""

import gzip
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Min

from agents.models import Agent, AgentTaskAssignment
from agents.prompts import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    batch_response_format,
    count_tokens,
    request_tokens,
)
from agents.services import update_agent
from analysis import services
from analysis.management.commands.load_demo import DEMO_AGENT_SETTINGS
from analysis.models import AnalysisRun, Batch
from analysis.pipeline import PipelineMessage, prefilter_messages
from projects.services import create_project
from proposals.models import TaskProposal, confidence_band
from sources.models import Chat, Message
from sources.services import MessageData, get_or_create_chat, upsert_messages

EVAL_DIR = Path(settings.BASE_DIR).parent / "shared" / "eval"
AMI_PATH = EVAL_DIR / "ami" / "ami_action_items.jsonl.gz"
EMAIL_INTENT_DIR = EVAL_DIR / "email_intent"
DEV, HELDOUT = "dev", "heldout"
PARTS = (DEV, HELDOUT)
# The split of eval/README.md: meeting id prefixes and email-intent files per part.
AMI_PREFIXES = {DEV: ("ES", "IB"), HELDOUT: ("IS", "TS")}
EMAIL_INTENT_FILES = {DEV: "Ask0729-fixed.txt", HELDOUT: "testSet-qualifiedBatch-fixed.txt"}
AMI_ROLES = {
    "PM": "project manager",
    "ID": "industrial designer",
    "UI": "user interface designer",
    "ME": "marketing expert",
}
# How speakers address each other by role ("Marketing, right."): the names of the evaluation
# project's team, which the prefilter keeps a message for naming (`keep_reason`).
AMI_ROLE_NAMES = {
    "project manager": "project manager",
    "industrial designer": "industrial designer",
    "user interface designer": "user interface",
    "marketing expert": "marketing",
}
# Each part's own folds: a prefilter rule tuned on one must hold on the other (README,
# "Quality"). The ES series in two halves; IB's meetings link no action to an utterance, so
# they count for the share dropped only.
AMI_FOLDS: dict[str, dict[str, Callable[[str], bool]]] = {
    DEV: {
        "ES2002-ES2008": lambda meeting_id: meeting_id.startswith("ES") and meeting_id[2:6] <= "2008",
        "ES2009-ES2016": lambda meeting_id: meeting_id.startswith("ES") and meeting_id[2:6] >= "2009",
        "IB": lambda meeting_id: meeting_id.startswith("IB"),
    },
    HELDOUT: {
        "IS": lambda meeting_id: meeting_id.startswith("IS"),
        "TS": lambda meeting_id: meeting_id.startswith("TS"),
    },
}
FOLD_TARGETS = {"dropped_share_at_least": 0.45, "gold_source_kept_share_at_least": 0.99}
MEETING_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SCRATCH_USERNAME = "evaluate-extraction"
# The quality targets, on the development parts (README, "Quality").
TARGETS = {
    "prefilter_dropped_share_at_least": 0.50,
    "gold_source_kept_share_at_least": 0.99,
    "prompt_to_content_ratio_at_most": 2.0,
    "yes_recall_at_least": 0.95,
}
# The batch token budgets the product ships: a new agent's default and the demo agent's (the
# embedded model's). The prompt overhead is shown at each (`prompt_overhead_at_budgets`).
SHIPPED_BUDGETS = tuple(
    sorted(
        {
            int(Agent._meta.get_field("batch_token_budget").get_default()),
            int(DEMO_AGENT_SETTINGS["batch_token_budget"]),
        }
    )
)
BANDS = (TaskProposal.Band.HIGH, TaskProposal.Band.MEDIUM, TaskProposal.Band.LOW)
BAND_RANGES: dict[str, str] = {
    TaskProposal.Band.HIGH: "> 0.9",
    TaskProposal.Band.MEDIUM: "0.7-0.9",
    TaskProposal.Band.LOW: "< 0.7",
}


class EvaluationError(Exception):
    """The data cannot be read, or the agent cannot run."""


# Loading


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    start: float
    text: str


@dataclass(frozen=True)
class GoldItem:
    id: str
    text: str
    source_ids: frozenset[str]


@dataclass
class Meeting:
    id: str
    roles: dict[str, str]  # speaker letter -> role in words, where the corpus names one
    utterances: list[Utterance]  # in the order they were said
    gold: list[GoldItem]


@dataclass
class AmiSlice:
    meetings: list[Meeting]
    skipped: list[str] = field(default_factory=list)  # meetings with no transcript


_MEETING_ID = re.compile(r'^\{"meeting_id":\s*"([^"]+)"')


def _meeting_id(line: str) -> str:
    # The id leads each line: meetings of the other part are skipped without being parsed.
    found = _MEETING_ID.match(line)
    return found.group(1) if found else json.loads(line)["meeting_id"]


def load_ami(*, part: str, path: Path = AMI_PATH, limit: int | None = None) -> AmiSlice:
    """The meetings of one part, in the file's order, the first `limit` of them when given.

    Meetings without a transcript (three IB meetings have gold items but no utterances)
    cannot be read as a chat: they are skipped and named in `skipped`.
    """
    if part not in PARTS:
        raise EvaluationError(f"Unknown part {part!r}: use one of {', '.join(PARTS)}.")
    prefixes = AMI_PREFIXES[part]
    result = AmiSlice(meetings=[])
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if not line.strip() or not _meeting_id(line).startswith(prefixes):
                    continue
                if limit is not None and len(result.meetings) >= limit:
                    break
                meeting = _meeting(json.loads(line))
                if meeting.utterances:
                    result.meetings.append(meeting)
                else:
                    result.skipped.append(meeting.id)
    except OSError as exc:
        raise EvaluationError(f"Cannot read {path}: {exc}") from exc
    return result


def _meeting(data: dict[str, Any]) -> Meeting:
    indexed = enumerate(data.get("utterances") or [])
    ordered = sorted(indexed, key=lambda pair: (pair[1].get("start") or 0.0, pair[0]))
    return Meeting(
        id=data["meeting_id"],
        roles={
            speaker: AMI_ROLES.get(info.get("role") or "", "")
            for speaker, info in sorted((data.get("speakers") or {}).items())
        },
        utterances=[
            Utterance(
                id=u["id"], speaker=u["speaker"], start=float(u.get("start") or 0.0), text=u["text"] or ""
            )
            for _, u in ordered
        ],
        gold=[
            GoldItem(id=g["id"], text=g["text"], source_ids=frozenset(g.get("source_da_ids") or ()))
            for g in data.get("gold_actions") or []
        ],
    )


def load_email_intent(*, part: str, directory: Path = EMAIL_INTENT_DIR) -> list[tuple[bool, str]]:
    """(actionable, sentence) pairs of one part: `Yes` lines are actionable."""
    if part not in PARTS:
        raise EvaluationError(f"Unknown part {part!r}: use one of {', '.join(PARTS)}.")
    path = directory / EMAIL_INTENT_FILES[part]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"Cannot read {path}: {exc}") from exc
    pairs = []
    for line in text.splitlines():
        label, _, sentence = line.partition("\t")
        if label.strip() in ("Yes", "No"):
            pairs.append((label.strip() == "Yes", sentence))
    return pairs


# Matching


@dataclass(frozen=True)
class Proposal:
    title: str
    source_ids: frozenset[str]
    confidence: float | None = None

    @property
    def band(self) -> str | None:
        return confidence_band(self.confidence) if self.confidence is not None else None


# The title rule: words of three letters or more, less these, each cut to a rough stem.
TITLE_STOPWORDS = frozenset(
    """
    the and for with from into onto about will would shall should must can could may might
    are was were been being has have had does did not all any some this that these those
    their them they his her its our your you who what which when where how why also then
    than there here just very next meeting
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
_TITLE_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SUFFIXES = ("ing", "ed", "es", "s")
# A title matches a gold item when the Dice coefficient of their stems is at least this.
TITLE_MATCH = 0.5


def title_stems(text: str) -> frozenset[str]:
    stems = set()
    for word in _TITLE_WORD.findall(text.casefold()):
        if len(word) < 3 or word in TITLE_STOPWORDS:
            continue
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        stems.add(word)
    return frozenset(stems)


def title_similarity(a: str, b: str) -> float:
    """Dice coefficient of the two texts' stems: 2|A∩B| / (|A| + |B|)."""
    left, right = title_stems(a), title_stems(b)
    if not left or not right:
        return 0.0
    return 2 * len(left & right) / (len(left) + len(right))


def match_proposals(proposals: Sequence[Proposal], gold: Sequence[GoldItem]) -> list[tuple[int, int]]:
    """Pair proposals with the gold items of the same meeting, one to one: (proposal
    index, gold index) pairs.

    A proposal matches a gold item when it cites one of the item's source messages, or
    when its title is close to the item's text (`title_similarity` >= `TITLE_MATCH`). Each
    gold item is found once: a second proposal for it is a duplicate a reviewer would
    merge, so it counts against precision. Citations pair first (more shared sources
    first), then titles, closest first.
    """
    candidates: list[tuple[float, int, int]] = []
    for p, proposal in enumerate(proposals):
        for g, item in enumerate(gold):
            shared = len(proposal.source_ids & item.source_ids)
            if shared:
                candidates.append((2.0 + shared, p, g))
                continue
            similarity = title_similarity(proposal.title, item.text)
            if similarity >= TITLE_MATCH:
                candidates.append((similarity, p, g))
    used_p: set[int] = set()
    used_g: set[int] = set()
    pairs = []
    for _, p, g in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
        if p not in used_p and g not in used_g:
            used_p.add(p)
            used_g.add(g)
            pairs.append((p, g))
    return sorted(pairs)


# Scores


@dataclass
class Score:
    proposals: int = 0
    matched: int = 0
    gold: int = 0

    def add(self, proposals: int, matched: int, gold: int) -> None:
        self.proposals += proposals
        self.matched += matched
        self.gold += gold

    @property
    def precision(self) -> float | None:
        return self.matched / self.proposals if self.proposals else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.gold if self.gold else None

    @property
    def f1(self) -> float | None:
        # 2PR / (P + R), written so that no proposal at all scores 0 rather than nothing.
        total = self.proposals + self.gold
        return 2 * self.matched / total if total else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "proposals": self.proposals,
            "matched": self.matched,
            "gold": self.gold,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
        }


@dataclass
class BandScore(Score):
    band: str = ""
    confidence_sum: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "confidence_range": BAND_RANGES[self.band],
            "mean_confidence": _round(self.confidence_sum / self.proposals if self.proposals else None),
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def score_meeting(
    proposals: Sequence[Proposal],
    gold: Sequence[GoldItem],
    *,
    overall: Score,
    bands: dict[str, BandScore] | None,
) -> None:
    """Add one meeting's matches to the totals. A band's recall counts the gold items its
    proposals found, so the bands' recalls add up to the overall recall."""
    matched = {p for p, _ in match_proposals(proposals, gold)}
    overall.add(len(proposals), len(matched), len(gold))
    if bands is None:
        return
    for band, score in bands.items():
        mine = [i for i, p in enumerate(proposals) if p.band == band]
        score.add(len(mine), len(matched.intersection(mine)), len(gold))
        score.confidence_sum += sum(proposals[i].confidence or 0.0 for i in mine)


# The baseline: one proposal per kept message that looks like a request, a proposal or a
# commitment, by these words alone. Its title is the message.
BASELINE_REQUEST = re.compile(
    r"\b(?:please|(?:can|could|would|will) you|let'?s|(?:i|we|you)'ll|(?:i|we|you) will|"
    r"needs? to|should|must|ha(?:ve|s) to|gonna|going to)\b",
    re.IGNORECASE,
)
BASELINE_RULE = (
    "one proposal per message the prefilter keeps that says please, can/could/would/will you, let's, "
    "I'll/we'll/you'll, I/we/you will, need(s) to, should, must, have/has to, gonna or going to"
)


def looks_like_request(text: str) -> bool:
    return BASELINE_REQUEST.search(text.replace("\u2019", "'")) is not None


def baseline_proposals(kept: Iterable[Utterance]) -> list[Proposal]:
    return [Proposal(title=u.text, source_ids=frozenset({u.id})) for u in kept if looks_like_request(u.text)]


# Running a meeting through the pipeline


@dataclass
class MeetingOutcome:
    """What the pipeline did with one meeting. `figures` counts: messages, kept, batches,
    batches_failed, LLM calls and tokens (`llm_*`, as the gateway reported them), and the
    requests rebuilt and counted with cl100k_base (`request_figures`)."""

    meeting_id: str
    kept_ids: set[str]
    proposals: list[Proposal]
    dropped: Counter[str]
    failed_kinds: Counter[str]
    figures: Counter[str]
    cost: Decimal


def meeting_description(meeting: Meeting) -> str:
    roles = ", ".join(f"{speaker} is the {role}" for speaker, role in meeting.roles.items() if role)
    return f"AMI meeting {meeting.id}: a design team's meeting." + (f" Speakers: {roles}." if roles else "")


def run_meeting(*, meeting: Meeting, assignment: AgentTaskAssignment) -> MeetingOutcome:
    """Load a meeting as a chat, run the real pipeline over it and read back what it did.

    Everything happens in one transaction rolled back at the end: the run's task, queued on
    commit by `start_run`, is never sent, and no row is left. On SQLite this holds the
    database's write lock while the meeting runs.
    """
    with transaction.atomic():
        outcome = _run_meeting(meeting=meeting, assignment=assignment)
        transaction.set_rollback(True)
    return outcome


def _run_meeting(*, meeting: Meeting, assignment: AgentTaskAssignment) -> MeetingOutcome:
    started = time.monotonic()
    run, by_pk = _start_meeting_run(meeting=meeting, assignment=assignment)
    for batch_id in services.plan_run(run_id=run.pk):
        services.process_batch(batch_id=batch_id, claim_id=f"evaluate-{batch_id}")
    wall = time.monotonic() - started
    run = AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config").get(pk=run.pk)
    batches = list(Batch.objects.filter(run=run).order_by("index"))
    proposals = TaskProposal.objects.filter(run=run).prefetch_related("source_messages").order_by("pk")
    # typeshed's Counter counts ints; it adds the float seconds here alike.
    figures = Counter(  # type: ignore[call-overload]
        messages=run.messages_fetched,
        kept=run.messages_kept,
        batches=len(batches),
        batches_failed=sum(1 for b in batches if b.status == Batch.Status.FAILED),
        llm_calls=run.llm_calls,
        llm_prompt_tokens=run.prompt_tokens,
        llm_completion_tokens=run.completion_tokens,
        llm_seconds=run.llm_seconds,
        wall_seconds=wall,
        **request_figures(run, batches),
    )
    return MeetingOutcome(
        meeting_id=meeting.id,
        kept_ids={by_pk[pk] for b in batches for pk in b.message_ids if pk in by_pk},
        proposals=[
            Proposal(
                title=p.title,
                confidence=p.confidence,
                source_ids=frozenset(by_pk[m.pk] for m in p.source_messages.all() if m.pk in by_pk),
            )
            for p in proposals
        ],
        dropped=Counter(run.prefilter_stats),
        failed_kinds=Counter(b.error_kind or "unknown" for b in batches if b.status == Batch.Status.FAILED),
        figures=figures,
        cost=run.cost,
    )


def _start_meeting_run(
    *, meeting: Meeting, assignment: AgentTaskAssignment
) -> tuple[AnalysisRun, dict[int, str]]:
    """The meeting loaded as a chat read by a project of its own, and a run over it begun;
    with the map from the messages' primary keys to the utterances' ids."""
    user, _ = get_user_model().objects.get_or_create(username=SCRATCH_USERNAME)
    lowest = Chat.objects.aggregate(lowest=Min("telegram_id"))["lowest"] or 0
    chat = get_or_create_chat(telegram_id=min(lowest, 0) - 1, title=f"AMI {meeting.id}", type=Chat.Type.GROUP)
    sent = [
        MessageData(
            telegram_id=i + 1,
            sent_at=MEETING_START + timedelta(seconds=u.start),
            text=u.text,
            author_name=u.speaker,
        )
        for i, u in enumerate(meeting.utterances)
    ]
    upsert_messages(chat=chat, messages=sent)
    by_pk = {
        pk: meeting.utterances[telegram_id - 1].id
        for pk, telegram_id in Message.objects.filter(chat=chat).values_list("pk", "telegram_id")
    }
    # The speakers as the team, named as they address each other: the prefilter keeps a
    # message naming one, as it keeps one naming a product's team member.
    team = [
        get_user_model().objects.get_or_create(
            username=f"{SCRATCH_USERNAME}-{name.replace(' ', '-')}", defaults={"first_name": name}
        )[0]
        for name in meeting_names(meeting)
    ]
    project = create_project(
        name=f"AMI {meeting.id} (evaluation)",
        slug=f"evaluation-ami-{meeting.id.lower()}",
        user=user,
        changes={
            "description": meeting_description(meeting),
            "chats": [chat.pk],
            "team": [{"user_id": member.pk, "role": "member"} for member in team],
        },
    )
    run = services.start_run(
        window_start=MEETING_START,
        window_end=sent[-1]["sent_at"] + timedelta(seconds=1),
        projects=[project],
        assignment=assignment,
        chats=[chat],
    )
    services.begin_run(run_id=run.pk)
    return run, by_pk


# What a request's tokens are counted as (`request_figures`).
REQUEST_PARTS = ("system_tokens", "user_tokens", "response_format_tokens", "chat_format_tokens")


def request_figures(run: AnalysisRun, batches: Sequence[Batch]) -> dict[str, int]:
    """The requests of the run's batches rebuilt as `process_batch` builds them, counted
    whole (`agents.prompts.request_tokens`): `prompt_tokens` is what each request costs (the
    system prompt, the user prompt with its context, the `response_format` object with the
    batch's schema, the chat format), split into `REQUEST_PARTS`; `prompt_lines` counts
    message lines (a reply's parent repeated at a batch's head counts again) and
    `content_tokens` their text alone, what the overhead is measured against; `requests`
    counts the batches."""
    task_config = run.assignment.task_config
    messages = Message.objects.in_bulk([pk for b in batches for pk in b.message_ids])
    totals = Counter(
        dict.fromkeys(("requests", "prompt_tokens", *REQUEST_PARTS, "prompt_lines", "content_tokens"), 0)
    )
    for batch in batches:
        prompt = services.batch_prompt(run=run, messages=[messages[pk] for pk in batch.message_ids])
        response_format = batch_response_format(task_config, len(prompt.lines))
        whole = request_tokens(prompt.system, prompt.user, response_format)
        system, user = count_tokens(prompt.system), count_tokens(prompt.user)
        chat_format = 2 * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS
        totals.update(
            requests=1,
            prompt_tokens=whole,
            system_tokens=system,
            user_tokens=user,
            chat_format_tokens=chat_format,
            response_format_tokens=whole - system - user - chat_format,
            prompt_lines=len(prompt.lines),
            content_tokens=sum(count_tokens(" ".join(m.text.split())) for m in prompt.lines),
        )
    return dict(totals)


def prompt_overhead_at_budgets(
    *,
    part: str,
    assignment: AgentTaskAssignment,
    budgets: Sequence[int],
    path: Path = AMI_PATH,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """What the requests would cost at each of `budgets`, the agent's task config unchanged:
    each meeting planned into batches at that budget (no LLM call) and its requests counted
    (`request_figures`). Every run and the agent's budget are rolled back."""
    data = load_ami(part=part, path=path, limit=limit)
    rows = []
    for budget in budgets:
        totals: Counter[str] = Counter()
        for meeting in data.meetings:
            with transaction.atomic():
                update_agent(agent=assignment.agent, batch_token_budget=budget)
                run, _ = _start_meeting_run(meeting=meeting, assignment=assignment)
                services.plan_run(run_id=run.pk)
                run = AnalysisRun.objects.select_related("assignment__task_config").get(pk=run.pk)
                totals.update(request_figures(run, list(Batch.objects.filter(run=run).order_by("index"))))
                transaction.set_rollback(True)
        rows.append({"batch_token_budget": budget, **_request_report(totals)})
    assignment.agent.refresh_from_db(fields=["batch_token_budget"])
    return rows


def _request_report(f: Counter[str]) -> dict[str, Any]:
    return {
        "requests": f["requests"],
        **{k: f[k] for k in ("prompt_lines", "prompt_tokens", *REQUEST_PARTS, "content_tokens")},
        "prompt_per_kept_message": _ratio(f["prompt_tokens"], f["prompt_lines"], 2),
        "content_per_kept_message": _ratio(f["content_tokens"], f["prompt_lines"], 2),
        "ratio": _ratio(f["prompt_tokens"], f["content_tokens"], 3),
    }


# Reports


def _ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def _target(
    value: float | None, *, at_least: float | None = None, at_most: float | None = None
) -> dict[str, float | bool | None]:
    met = (
        value is not None
        and (at_least is None or value >= at_least)
        and (at_most is None or value <= at_most)
    )
    return {"value": value, "at_least": at_least, "at_most": at_most, "met": met}


def evaluate_ami(
    *,
    part: str,
    assignment: AgentTaskAssignment,
    path: Path = AMI_PATH,
    limit: int | None = None,
    progress: Callable[[MeetingOutcome], None] | None = None,
) -> dict[str, Any]:
    """Run the agent over a part's meetings; score it and the baseline; report the prefilter,
    the prompt tokens and the LLM's usage (README, "Quality", says what each figure means)."""
    data = load_ami(part=part, path=path, limit=limit)
    if not data.meetings:
        raise EvaluationError(f"No meeting of the {part} part in {path}.")
    agent = assignment.agent
    overall, baseline = Score(), Score()
    bands: dict[str, BandScore] = {band: BandScore(band=band) for band in BANDS}
    figures: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    cost = Decimal(0)
    per_meeting = []
    for meeting in data.meetings:
        outcome = run_meeting(meeting=meeting, assignment=assignment)
        if progress is not None:
            progress(outcome)
        score_meeting(outcome.proposals, meeting.gold, overall=overall, bands=bands)
        kept = [u for u in meeting.utterances if u.id in outcome.kept_ids]
        score_meeting(baseline_proposals(kept), meeting.gold, overall=baseline, bands=None)
        known = {u.id for u in meeting.utterances}
        sources = {i for g in meeting.gold for i in g.source_ids if i in known}
        figures.update(outcome.figures)
        figures.update(gold_sources=len(sources), gold_sources_kept=len(sources & outcome.kept_ids))
        dropped.update(outcome.dropped)
        failed.update(outcome.failed_kinds)
        cost += outcome.cost
        per_meeting.append(
            {
                "meeting": meeting.id,
                "gold": len(meeting.gold),
                "proposals": len(outcome.proposals),
                **{k: outcome.figures[k] for k in ("messages", "kept", "batches", "batches_failed")},
            }
        )
    f = figures
    dropped_share = _ratio(f["messages"] - f["kept"], f["messages"])
    kept_share = _ratio(f["gold_sources_kept"], f["gold_sources"])
    ratio = _ratio(f["prompt_tokens"], f["content_tokens"], 3)
    return {
        "dataset": "ami",
        "part": part,
        "path": str(path),
        "agent": agent.name,
        "model": agent.model,
        "batch_token_budget": agent.batch_token_budget,
        "meetings": len(data.meetings),
        "meetings_skipped_without_transcript": data.skipped,
        "gold_items": overall.gold,
        "agent_scores": {**overall.as_dict(), "bands": {b: s.as_dict() for b, s in bands.items()}},
        "baseline_scores": {**baseline.as_dict(), "rule": BASELINE_RULE},
        "prefilter": {
            "messages": f["messages"],
            "kept": f["kept"],
            "dropped_share": dropped_share,
            "dropped_by_reason": dict(sorted(dropped.items())),
            "gold_source_messages": f["gold_sources"],
            "gold_source_messages_kept": f["gold_sources_kept"],
            "gold_source_kept_share": kept_share,
        },
        "prompt_tokens": {
            "counted_with": "tiktoken cl100k_base, the whole request (agents.prompts.request_tokens)",
            **_request_report(f),
        },
        "llm": {
            "calls": f["llm_calls"],
            "prompt_tokens": f["llm_prompt_tokens"],
            "completion_tokens": f["llm_completion_tokens"],
            "cost": str(cost),
            "llm_seconds": round(f["llm_seconds"], 1),
            "wall_seconds": round(f["wall_seconds"], 1),
            "batches": f["batches"],
            "batches_failed": dict(sorted(failed.items())),
        },
        "meetings_detail": per_meeting,
        "targets": {
            "prefilter_dropped_share": _target(
                dropped_share, at_least=TARGETS["prefilter_dropped_share_at_least"]
            ),
            "gold_source_kept_share": _target(
                kept_share, at_least=TARGETS["gold_source_kept_share_at_least"]
            ),
            "prompt_to_content_ratio": _target(ratio, at_most=TARGETS["prompt_to_content_ratio_at_most"]),
        },
    }


def meeting_names(meeting: Meeting) -> list[str]:
    """The names the meeting's speakers address each other by: their roles."""
    return sorted({AMI_ROLE_NAMES[role] for role in meeting.roles.values() if role in AMI_ROLE_NAMES})


def prefilter_folds(*, part: str, path: Path = AMI_PATH) -> list[dict[str, Any]]:
    """The prefilter alone (no LLM) on each fold of a part (`AMI_FOLDS`): messages, the
    share dropped and why, and the gold source messages it keeps, with the fold targets."""
    data = load_ami(part=part, path=path)
    rows = []
    for fold, belongs in AMI_FOLDS[part].items():
        meetings = [m for m in data.meetings if belongs(m.id)]
        dropped: Counter[str] = Counter()
        messages = sources = sources_kept = 0
        for meeting in meetings:
            pipeline_messages = [
                PipelineMessage(id=i, sent_at=MEETING_START, author=u.speaker, text=u.text)
                for i, u in enumerate(meeting.utterances)
            ]
            result = prefilter_messages(pipeline_messages, names=meeting_names(meeting))
            kept = {meeting.utterances[m.id].id for m in result.kept}
            gold = {i for g in meeting.gold for i in g.source_ids} & {u.id for u in meeting.utterances}
            messages += len(meeting.utterances)
            dropped.update(result.dropped)
            sources += len(gold)
            sources_kept += len(gold & kept)
        dropped_share = _ratio(sum(dropped.values()), messages)
        kept_share = _ratio(sources_kept, sources)
        rows.append(
            {
                "fold": fold,
                "meetings": len(meetings),
                "messages": messages,
                "dropped_share": dropped_share,
                "dropped_by_reason": dict(sorted(dropped.items())),
                "gold_source_messages": sources,
                "gold_source_messages_kept": sources_kept,
                "gold_source_kept_share": kept_share,
                "targets": {
                    "dropped_share": _target(dropped_share, at_least=FOLD_TARGETS["dropped_share_at_least"]),
                    # A fold without linked sources cannot say: its target is left out.
                    **(
                        {
                            "gold_source_kept_share": _target(
                                kept_share, at_least=FOLD_TARGETS["gold_source_kept_share_at_least"]
                            )
                        }
                        if sources
                        else {}
                    ),
                },
            }
        )
    return rows


def evaluate_email_intent(*, part: str, directory: Path = EMAIL_INTENT_DIR) -> dict[str, Any]:
    """The prefilter over the part's sentences: recall on `Yes`, share of `No` dropped."""
    pairs = load_email_intent(part=part, directory=directory)
    if not pairs:
        raise EvaluationError(f"No labelled sentence in the {part} part under {directory}.")
    messages = [
        PipelineMessage(id=i, sent_at=MEETING_START, author="", text=s) for i, (_, s) in enumerate(pairs)
    ]
    result = prefilter_messages(messages)
    kept = {m.id for m in result.kept}
    yes_kept = sum(1 for i, (actionable, _) in enumerate(pairs) if actionable and i in kept)
    no_dropped = sum(1 for i, (actionable, _) in enumerate(pairs) if not actionable and i not in kept)
    yes = sum(1 for actionable, _ in pairs if actionable)
    recall = _ratio(yes_kept, yes)
    return {
        "dataset": "email-intent",
        "part": part,
        "path": str(directory / EMAIL_INTENT_FILES[part]),
        "sentences": len(pairs),
        "yes": yes,
        "no": len(pairs) - yes,
        "yes_kept": yes_kept,
        "yes_recall": recall,
        "no_dropped": no_dropped,
        "no_dropped_share": _ratio(no_dropped, len(pairs) - yes),
        "dropped_by_reason": result.stats,
        "targets": {"yes_recall": _target(recall, at_least=TARGETS["yes_recall_at_least"])},
    }


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
