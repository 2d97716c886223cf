"""The pipeline of a run: fetch, prefilter and batch its messages once (`plan_run`), then
for each batch claim it, ask the LLM and commit the batch with its proposals.

A batch's LLM call happens outside any transaction, while a thread renews the batch's
heartbeat (`heartbeat`); its commit is one transaction whose queries do not grow with the
number of messages or proposals.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from agents.models import Agent, TaskConfig
from agents.prompts import (
    PromptExample,
    PromptMessage,
    batch_schema,
    count_tokens,
    numbered,
    render_examples,
    schema_asks_for,
    system_prompt,
    user_prompt,
)
from agents.usage import LLMError, LLMUsage
from analysis.models import AnalysisRun, Batch
from analysis.pipeline import BatchCutter, PipelineMessage, PlannedBatch, prefilter_messages
from analysis.services.answers import read_answer
from analysis.services.runs import (
    FINISH_EVENTS,
    REQUEUE_DELAY_SECONDS,
    REQUEUED_KINDS,
    RUN_STATE_FIELDS,
    _announce,
    _finish_if_done,
    emit,
    finish_run_if_done,
    queue_batch_later,
    transition_batches,
)
from projects.models import Project
from proposals.examples import ReviewExample, select_review_examples
from proposals.models import Bands, TaskProposal
from proposals.services import NewProposal, create_proposals
from proposals.services.auto import AutoApprovalRule, auto_approve_proposals
from sources.models import Chat, Message

logger = logging.getLogger(__name__)
Status = AnalysisRun.Status

# The pipeline

# What the pipeline reads of a message (not its raw update, often kilobytes).
PROMPT_FIELDS = ("pk", "chat_id", "telegram_id", "author_name", "text", "sent_at", "reply_to_telegram_id")

# Messages read per query when planning, and per transaction that writes their batches: the
# planning's memory is a chunk and the open batch, whatever the window.
PLAN_CHUNK_SIZE = 2000
# A planning announces its progress at most this often (and when it ends): each event
# carries the run's state with every batch so far (`run_state`), one read of them all.
PLAN_PROGRESS_SECONDS = 5.0


def _window_chat_ids(run: AnalysisRun) -> set[int]:
    """The active chats of the run's projects (those of `run.chats` when it names some)."""
    chat_ids = {cid for p in run.config_snapshot.get("projects", []) for cid in p["chat_ids"]}
    restricted = set(run.chats.values_list("pk", flat=True))
    if restricted:
        chat_ids &= restricted
    return set(Chat.objects.filter(pk__in=chat_ids, is_active=True).values_list("pk", flat=True))


def _window(run: AnalysisRun, chat_ids: set[int]) -> QuerySet[Message]:
    return Message.objects.filter(
        chat_id__in=chat_ids, sent_at__gte=run.window_start, sent_at__lt=run.window_end
    ).order_by("sent_at", "pk")


def fetch_messages(*, run: AnalysisRun) -> list[Message]:
    """The messages of the run's window in the active chats its projects read."""
    return list(_window(run, _window_chat_ids(run)).only(*PROMPT_FIELDS))


def to_pipeline(messages: Sequence[Message]) -> list[PipelineMessage]:
    pks = {(m.chat_id, m.telegram_id): m.pk for m in messages}
    return [
        PipelineMessage(
            id=m.pk,
            sent_at=m.sent_at,
            author=m.author_name,
            text=m.text,
            reply_to=pks.get((m.chat_id, m.reply_to_telegram_id)) if m.reply_to_telegram_id else None,
        )
        for m in messages
    ]


def _as_pipeline(run: AnalysisRun, messages: QuerySet[Message]) -> list[PipelineMessage]:
    """`messages` as the pipeline sees them, each reply's parent looked up in the run's window
    (by the unique (chat, telegram id) index), as `to_pipeline` finds it among the whole
    window's messages: a parent outside the window is no parent."""
    parents = Message.objects.filter(
        chat_id=OuterRef("chat_id"),
        telegram_id=OuterRef("reply_to_telegram_id"),
        sent_at__gte=run.window_start,
        sent_at__lt=run.window_end,
    ).values("pk")[:1]
    rows = messages.annotate(parent=Subquery(parents)).values_list(
        "pk", "sent_at", "author_name", "text", "reply_to_telegram_id", "parent"
    )
    return [
        PipelineMessage(
            id=pk, sent_at=sent_at, author=author, text=text, reply_to=parent if reply_to else None
        )
        for pk, sent_at, author, text, reply_to, parent in rows
    ]


def _read_chunk(
    run: AnalysisRun, chat_ids: set[int], *, after: dict[str, Any], size: int
) -> list[PipelineMessage]:
    """The next `size` messages of the window after the cursor `after`, in (sent_at, id)
    order: a keyset read, which the `sent_at` index serves without an OFFSET."""
    rows = _window(run, chat_ids)
    if after:
        sent_at = datetime.fromisoformat(after["sent_at"])
        rows = rows.filter(
            Q(sent_at__gt=sent_at) | Q(sent_at=sent_at, pk__gt=after["id"]), sent_at__gte=sent_at
        )
    return _as_pipeline(run, rows[:size])


def _open_batch(run: AnalysisRun, cursor: dict[str, Any]) -> list[PipelineMessage]:
    """The batch a stopped planning left open, in its order (a repeated parent first)."""
    ids = cursor.get("open", [])
    if not ids:
        return []
    found = {m.id: m for m in _as_pipeline(run, Message.objects.filter(pk__in=ids).order_by())}
    return [found[pk] for pk in ids if pk in found]


@dataclass
class _Planning:
    """What one planning process knows of the run it plans."""

    run_id: int
    cursor: dict[str, Any]  # as this process last wrote it (or found it)
    planned: list[int]  # the batches it wrote or found unfinished
    finished: bool = False  # planned already: nothing to read
    announced_at: float = float("-inf")  # time.monotonic() of its last progress event


def _begin_planning(run_id: int, on_batches: Callable[[list[int]], None] | None) -> _Planning | None:
    """Mark a running run as planning, and hand over the batches an earlier planning of it
    wrote that no worker finished (their claims keep any from being done twice). None when
    the run is not running; `finished` when it was planned already (a restarted task)."""
    with transaction.atomic():
        run = AnalysisRun.objects.select_for_update().get(pk=run_id)
        if run.status != Status.RUNNING:
            return None
        unfinished = list(
            run.batches.filter(status__in=[Batch.Status.PENDING, Batch.Status.RUNNING])
            .order_by("index")
            .values_list("pk", flat=True)
        )
        _hand_over(unfinished, on_batches)
        if not run.planning and (run.plan_cursor or run.batches_total):
            return _Planning(run_id, run.plan_cursor, list(unfinished), finished=True)
        if not run.planning:
            AnalysisRun.objects.filter(pk=run_id).update(planning=True, plan_saved_at=timezone.now())
        return _Planning(run_id, run.plan_cursor, list(unfinished))


def _hand_over(batch_ids: list[int], on_batches: Callable[[list[int]], None] | None) -> None:
    if batch_ids and on_batches is not None:
        transaction.on_commit(lambda: on_batches(batch_ids))


def _save_chunk(
    planning: _Planning,
    *,
    closed: list[PlannedBatch],
    cutter: BatchCutter,
    last: PipelineMessage | None,
    fetched: int,
    kept: int,
    dropped: dict[str, int],
    done: bool,
    on_batches: Callable[[list[int]], None] | None,
) -> bool:
    """Write a chunk's batches, the run's counters and the planning's cursor in one
    transaction, and hand the batches over once it commits. False when the run is no longer
    this planning's to write (cancelled, or another planning of it went on from the same
    cursor): nothing is written then.

    The run's row is locked and its cursor compared with the one this planning started from,
    so two plannings of one run never both write a chunk; a batch's commit, which locks the
    row too, sees the counters and `planning` as a whole chunk left them."""
    with transaction.atomic():
        run = (
            AnalysisRun.objects.select_for_update()
            .only("status", "planning", "plan_cursor", "batches_total", "prefilter_stats")
            .get(pk=planning.run_id)
        )
        if run.status != Status.RUNNING or not run.planning or run.plan_cursor != planning.cursor:
            return False
        batches = Batch.objects.bulk_create(
            Batch(run_id=run.pk, index=run.batches_total + i, message_ids=b.message_ids, token_count=b.tokens)
            for i, b in enumerate(closed)
        )
        stats = Counter(run.prefilter_stats) + Counter(dropped)
        cursor = (
            {
                "sent_at": last.sent_at.isoformat(),
                "id": last.id,
                "open": [m.id for m in cutter.open],
                "tokens": cutter.tokens,
            }
            if last is not None
            else planning.cursor
        )
        AnalysisRun.objects.filter(pk=run.pk).update(
            messages_fetched=F("messages_fetched") + fetched,
            messages_kept=F("messages_kept") + kept,
            prefilter_stats=dict(sorted(stats.items())),
            batches_total=F("batches_total") + len(batches),
            plan_cursor=cursor,
            plan_saved_at=timezone.now(),
            planning=not done,
        )
        planning.cursor = cursor
        ids = [b.pk for b in batches]
        planning.planned.extend(ids)
        if done or time.monotonic() - planning.announced_at >= PLAN_PROGRESS_SECONDS:
            planning.announced_at = time.monotonic()
            emit(run.pk, "progress_updated")
        if done:
            finish_run_if_done(run_id=run.pk)
        _hand_over(ids, on_batches)
    return True


# However many tokens a task config's review examples ask for, a batch's messages keep at
# least this many of the agent's budget (the agent's smallest allowed budget), or all of
# it when the budget is smaller still.
MIN_MESSAGE_TOKENS = 100


def message_token_budget(agent: Agent, task_config: TaskConfig) -> int:
    """The tokens a batch's messages may take: the agent's `batch_token_budget`, less the
    task config's `review_examples_tokens` when it asks for examples. Clamped rather than
    refused: the messages keep `MIN_MESSAGE_TOKENS`, and the examples get what is left
    (`examples_token_budget`), so messages and examples together never exceed the agent's
    budget."""
    budget = agent.batch_token_budget
    if not task_config.review_examples:
        return budget
    return max(budget - task_config.review_examples_tokens, min(budget, MIN_MESSAGE_TOKENS))


def examples_token_budget(agent: Agent, task_config: TaskConfig, *, message_tokens: int) -> int:
    """The tokens a batch's examples may take: the task config's `review_examples_tokens`,
    within what the batch's messages (`message_tokens`, as planned) left of the agent's
    budget. A batch planned before examples were asked for has little or none left."""
    if not task_config.review_examples:
        return 0
    return max(0, min(task_config.review_examples_tokens, agent.batch_token_budget - message_tokens))


def plan_run(
    *,
    run_id: int,
    on_batches: Callable[[list[int]], None] | None = None,
    chunk_size: int = PLAN_CHUNK_SIZE,
) -> list[int]:
    """Fetch, prefilter and batch a running run's messages once; return the batches to do.

    The window is read `chunk_size` messages at a time in (sent_at, id) order; each chunk's
    closed batches, the run's counters and where planning stands (`plan_cursor`: the last
    message read and the batch still open) are written in one transaction, and handed to
    `on_batches` (the task queues them) once it commits: workers start on the first batches
    while the rest is planned, and the memory is a chunk's, whatever the window. The batches
    are those one pass over the whole window cuts (`BatchCutter`). The run completes only
    once planning has finished (`planning`) and every batch is counted.

    Idempotent and resumable: a planning that stopped midway (its worker killed) goes on from
    its cursor; a run planned already gets its unfinished batches.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1.")
    planning = _begin_planning(run_id, on_batches)
    if planning is None or planning.finished:
        return planning.planned if planning is not None else []
    run = AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config").get(pk=run_id)
    projects = run.config_snapshot.get("projects", [])
    keywords = [k for p in projects for k in p["keywords"]]
    exclude_keywords = [k for p in projects for k in p["exclude_keywords"]]
    # Runs snapshotted before member names were: none.
    names = [n for p in projects for n in p.get("member_names", [])]
    gap = min((p["batch_time_gap_minutes"] for p in projects), default=60)
    cutter = BatchCutter(
        token_budget=message_token_budget(run.assignment.agent, run.assignment.task_config),
        time_gap=timedelta(minutes=gap),
        open=_open_batch(run, planning.cursor),
        tokens=planning.cursor.get("tokens", 0),
    )
    chat_ids = _window_chat_ids(run)
    while True:
        chunk = _read_chunk(run, chat_ids, after=planning.cursor, size=chunk_size)
        done = len(chunk) < chunk_size
        kept = prefilter_messages(chunk, keywords=keywords, exclude_keywords=exclude_keywords, names=names)
        closed = [batch for m in kept.kept if (batch := cutter.add(m)) is not None]
        if done and (last_batch := cutter.finish()) is not None:
            closed.append(last_batch)
        saved = _save_chunk(
            planning,
            closed=closed,
            cutter=cutter,
            last=chunk[-1] if chunk else None,
            fetched=len(chunk),
            kept=len(kept.kept),
            dropped=kept.stats,
            done=done,
            on_batches=on_batches,
        )
        if not saved or done:
            return planning.planned


def claim_batch(*, batch_id: int, claim_id: str) -> Batch | None:
    """Take a pending batch of a running run (or one this same task held when its worker
    died) and announce it (`batch_started`, numbered with the run's other events, sent on
    commit). A batch tried `ANALYSIS_MAX_BATCH_ATTEMPTS` times is failed instead of tried again.

    The claim is `claim_id` with the attempt it counts (the returned batch's `attempts`):
    its heartbeat and its commit hold only while both are the batch's, so a delivery that
    took the batch over (even one of the same task) leaves the old holder nothing to commit.

    The claim is one UPDATE whose WHERE tests the batch row's own columns (the run's status
    through a plain subquery on `run_id`, no join), so PostgreSQL re-checks the batch's
    condition on the row's newest version when two deliveries race (a join would make
    Django select the row in a subquery on a stale snapshot and let both win);
    `transition_batches` adds to it only a test of the batch's own status. The claim and
    its event's number commit together: a page never sees one without the other.
    """
    claimable = Q(status=Batch.Status.PENDING) | Q(status=Batch.Status.RUNNING, claim_id=claim_id)
    running = AnalysisRun.objects.filter(status=Status.RUNNING).values("pk")
    with transaction.atomic():
        now = timezone.now()
        claimed = transition_batches(
            Batch.objects.filter(claimable, pk=batch_id, run_id__in=Subquery(running)),
            from_=(Batch.Status.PENDING, Batch.Status.RUNNING),
            to=Batch.Status.RUNNING,
            claim_id=claim_id,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
        )
        if not claimed:
            return None
        batch = Batch.objects.select_related(
            "run__assignment__agent__provider", "run__assignment__task_config"
        ).get(pk=batch_id)
        if batch.attempts > settings.ANALYSIS_MAX_BATCH_ATTEMPTS:
            _commit_batch(
                batch=batch,
                claim_id=claim_id,
                usage=LLMUsage(),
                error=f"Gave up after {batch.attempts - 1} attempts.",
                kind="attempts",
            )
            return None
        emit(batch.run_id, "batch_started")
    return batch


def _held(*, batch: Batch, claim_id: str) -> QuerySet[Batch]:
    """The batch's row while this claim holds it: running, with its claim id and attempt."""
    return Batch.objects.filter(
        pk=batch.pk, status=Batch.Status.RUNNING, claim_id=claim_id, attempts=batch.attempts
    )


@contextmanager
def heartbeat(*, batch: Batch, claim_id: str) -> Iterator[None]:
    """Renew a claimed batch's `heartbeat_at` every third of `BATCH_LEASE_SECONDS` while the
    block runs (the LLM call, however long it waits for a provider slot or retries), so a
    batch stalls only when its worker is gone, whatever the task time limit.

    A daemon thread with its own database connection bumps it with an UPDATE conditional on
    the claim; it stops when the block ends, or when the claim is no longer the batch's
    (released as stalled, taken over): then the holder's commit is refused as well. A failed
    renewal (the database busy or away) is logged and tried again at the next beat.
    """
    stop = threading.Event()
    interval = settings.BATCH_LEASE_SECONDS / 3

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    renewed = _held(batch=batch, claim_id=claim_id).update(heartbeat_at=timezone.now())
                except Exception:
                    logger.exception("Renewing the heartbeat of batch %s failed", batch.pk)
                    continue
                if not renewed:
                    logger.warning("Batch %s is no longer held by %s: no more heartbeat", batch.pk, claim_id)
                    return
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"batch-{batch.pk}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # Not waited for long: a renewal still waiting on a lock the commit will need must
        # not hold the commit up, and one that lands after the commit matches no row.
        thread.join(timeout=1.0)


@dataclass(frozen=True)
class BatchPrompt:
    system: str
    user: str
    lines: list[PromptMessage]  # the messages as shown, numbered 1..n
    numbers: dict[int, int]  # a number of the prompt -> the message's id


# What the LLM is told of each project, from the run's snapshot of its configuration (the
# instructions refer to the language and priority rules; empty values are left out).
PROJECT_CONTEXT_FIELDS = (
    "slug",
    "name",
    "description",
    "language",
    "glossary",
    "components",
    "priority_rules",
)


def batch_prompt(
    *, run: AnalysisRun, messages: Sequence[Message], examples: Sequence[ReviewExample] = ()
) -> BatchPrompt:
    """What the LLM is sent for a batch of `messages` (in order): the agent's and the task
    config's instructions, the run's projects as context, past review decisions as
    `examples` (`batch_examples`; none: the prompt has no examples section), the messages
    numbered from 1 (`agents.prompts.numbered`). The answer cites those numbers; `numbers`
    maps them back.

    The projects are described only to a task config whose answer names a project: a task
    config without one (the small models') gets the messages alone. Measured on the demo
    with SmolLM2-135M, the projects' glossary ended up as the titles of unrelated proposals
    ("Release checklist"), and the prompt was a third longer."""
    agent, task_config = run.assignment.agent, run.assignment.task_config
    context = (
        {
            "projects": [
                {k: p[k] for k in PROJECT_CONTEXT_FIELDS if p.get(k)}
                for p in run.config_snapshot.get("projects", [])
            ]
        }
        if schema_asks_for(task_config.response_schema, "project")
        else None
    )
    lines, numbers = numbered([m.prompt() for m in to_pipeline(messages)])
    shown = [prompt_example(example) for example in examples]
    return BatchPrompt(system_prompt(agent, task_config), user_prompt(lines, context, shown), lines, numbers)


def prompt_example(example: ReviewExample) -> PromptExample:
    return PromptExample(
        approved=example.approved,
        title=example.title,
        description=example.description,
        sources=example.sources,
        reason=example.reason,
    )


def _examples_tokens(examples: Sequence[ReviewExample]) -> int:
    # The section and the line break that follows it in the user prompt.
    return count_tokens(render_examples([prompt_example(e) for e in examples]) + "\n")


def batch_examples(*, run: AnalysisRun, batch: Batch, messages: Sequence[Message]) -> list[ReviewExample]:
    """The past review decisions a batch's prompt shows (`proposals.examples`): at most the
    task config's `review_examples`, of the run's projects, other runs' only, most similar
    to the batch first, within `examples_token_budget` as the prompt renders them."""
    agent, task_config = run.assignment.agent, run.assignment.task_config
    budget = examples_token_budget(agent, task_config, message_tokens=batch.token_count)
    if not budget:
        return []
    return select_review_examples(
        project_ids=[p["project_id"] for p in run.config_snapshot.get("projects", [])],
        chat_ids={m.chat_id for m in messages},
        texts=[m.text for m in messages],
        exclude_run_id=run.pk,
        limit=task_config.review_examples,
        budget=budget,
        cost=_examples_tokens,
    )


def process_batch(*, batch_id: int, claim_id: str) -> None:
    """Ask the LLM for the batch's proposals and commit them with the batch. A failure
    of the LLM or a malformed answer fails this batch only. The batch's heartbeat is
    renewed while the LLM answers (`heartbeat`)."""
    batch = claim_batch(batch_id=batch_id, claim_id=claim_id)
    if batch is None:
        return
    run = batch.run
    agent, task_config = run.assignment.agent, run.assignment.task_config
    messages = {
        m.pk: m for m in Message.objects.filter(pk__in=batch.message_ids).order_by().only(*PROMPT_FIELDS)
    }
    ordered = [messages[pk] for pk in batch.message_ids if pk in messages]
    examples = batch_examples(run=run, batch=batch, messages=ordered)
    if examples or batch.review_example_ids:
        # Recorded as sent, before the call: a retry that sends others replaces them.
        _held(batch=batch, claim_id=claim_id).update(review_example_ids=[e.id for e in examples])
    prompt = batch_prompt(run=run, messages=ordered, examples=examples)
    from agents.llm import complete_json  # the openai SDK, where a call is made (agents.usage)

    try:
        with heartbeat(batch=batch, claim_id=claim_id):
            result = complete_json(
                provider=agent.provider,
                model=agent.model,
                system_prompt=prompt.system,
                user_prompt=prompt.user,
                schema=task_config.response_schema,
                request_schema=batch_schema(
                    task_config.response_schema,
                    len(prompt.lines),
                    max_items=task_config.proposal_cap(len(prompt.lines)),
                ),
                schema_name="proposals",
                temperature=agent.temperature,
                max_output_tokens=agent.max_output_tokens,
            )
            # Read before the commit's transaction, which holds SQLite's write lock.
            proposals, rejected = read_answer(
                run=run, answer=result.data, messages=messages, numbers=prompt.numbers
            )
    except LLMError as exc:
        if exc.kind in REQUEUED_KINDS and _put_back(batch=batch, claim_id=claim_id, error=exc):
            return
        _commit_batch(batch=batch, claim_id=claim_id, usage=exc.usage, error=exc.message, kind=exc.kind)
        return
    except Exception as exc:
        # Fail the batch rather than leave it running for ever; the error is kept.
        logger.exception("Batch %s of run %s failed unexpectedly", batch.pk, run.pk)
        _commit_batch(
            batch=batch, claim_id=claim_id, usage=LLMUsage(), error=f"Internal error: {exc}", kind="internal"
        )
        return
    _commit_batch(batch=batch, claim_id=claim_id, usage=result.usage, proposals=proposals, rejected=rejected)
    auto_approve_batch(batch=batch)


def auto_approve_batch(*, batch: Batch) -> list[int]:
    """Auto-approve the batch's new proposals that their project's rule, as the run
    snapshotted it, allows (`proposals.services.auto`); return their ids. Called once the
    batch is committed: a failure here is logged and leaves the proposals pending, never
    fails the batch. Proposals reviewed already (an auto-approval undone) are left alone."""
    run = batch.run
    rules = {
        p["project_id"]: AutoApprovalRule.of(p.get("auto_approve"))
        for p in run.config_snapshot.get("projects", [])
    }
    if not any(rules.values()):
        return []
    try:
        ids = TaskProposal.objects.filter(
            batch_id=batch.pk, status=TaskProposal.Status.PENDING, review_action=""
        ).values_list("pk", flat=True)
        return auto_approve_proposals(proposal_ids=ids, rules=rules, agent_id=run.assignment.agent_id)
    except Exception:
        logger.exception("Auto-approving the proposals of batch %s failed; they stay pending", batch.pk)
        return []


def _usage_added(usage: LLMUsage) -> dict[str, Any]:
    """A batch's or run's usage counters plus `usage`, as UPDATE expressions."""
    return {
        "llm_calls": F("llm_calls") + usage.calls,
        "prompt_tokens": F("prompt_tokens") + usage.prompt_tokens,
        "completion_tokens": F("completion_tokens") + usage.completion_tokens,
        "llm_seconds": F("llm_seconds") + usage.latency_seconds,
        "cost": F("cost") + usage.cost,
    }


def _put_back(*, batch: Batch, claim_id: str, error: LLMError) -> bool:
    """Put a batch whose call failed for a passing reason (`REQUEUED_KINDS`: Redis, which
    holds the provider's limits, was down longer than the gateway's retries) back in the
    queue, to be tried again in `REQUEUE_DELAY_SECONDS`, keeping its usage and the reason.
    False when it has had its `ANALYSIS_MAX_BATCH_ATTEMPTS`: it fails then, and retrying
    failed batches tries it again. Should the broker be down too, `resume_stale_runs` queues
    it (`requeued_batches`)."""
    if batch.attempts >= settings.ANALYSIS_MAX_BATCH_ATTEMPTS:
        return False
    with transaction.atomic():
        held = transition_batches(
            _held(batch=batch, claim_id=claim_id),
            from_=Batch.Status.RUNNING,
            to=Batch.Status.PENDING,
            claim_id="",
            error=f"{error.message} Tried again in {REQUEUE_DELAY_SECONDS} s.",
            error_kind=error.kind,
            **_usage_added(error.usage),
        )
        if held:
            AnalysisRun.objects.filter(pk=batch.run_id).update(**_usage_added(error.usage))
            transaction.on_commit(lambda: queue_batch_later(batch.pk, delay=REQUEUE_DELAY_SECONDS))
    logger.warning("Batch %s of run %s put back in the queue: %s", batch.pk, batch.run_id, error.message)
    return True


@transaction.atomic
def _commit_batch(
    *,
    batch: Batch,
    claim_id: str,
    usage: LLMUsage,
    proposals: Sequence[NewProposal] = (),
    rejected: Sequence[str] = (),
    error: str = "",
    kind: str = "",
) -> None:
    """Commit a batch's outcome, its proposals (`save_proposals`) and the run's counters in
    one transaction, and send its run events on commit: `progress_updated`, then
    `proposals_created` when it made some, then the run's completion when it was the last.
    Its queries do not depend on the number of messages or proposals."""
    failed = bool(error)
    # The claim's holder alone commits: the UPDATE is conditional on the claim (its task id
    # and attempt), and locks the batch's row for the rest of the transaction. A holder
    # whose batch was released as stalled and taken over, even by a redelivery of its own
    # task, matches no row: the batch's proposals are saved once.
    held = transition_batches(
        _held(batch=batch, claim_id=claim_id),
        from_=Batch.Status.RUNNING,
        to=Batch.Status.FAILED if failed else Batch.Status.DONE,
        error=error or "; ".join(rejected),
        error_kind=kind,
        finished_at=timezone.now(),
        **_usage_added(usage),
    )
    if not held:
        # Another delivery holds or finished the batch (its claim was released as stalled
        # and taken over): nothing counts twice.
        logger.warning("Batch %s is no longer held by %s: its outcome is dropped", batch.pk, claim_id)
        return
    run = batch.run
    created = [] if failed else save_proposals(run=run, batch=batch, proposals=proposals)
    events = ["progress_updated", "proposals_created"] if created else ["progress_updated"]
    AnalysisRun.objects.filter(pk=run.pk).update(
        batches_done=F("batches_done") + (0 if failed else 1),
        batches_failed=F("batches_failed") + (1 if failed else 0),
        proposals_created=F("proposals_created") + len(created),
        event_seq=F("event_seq") + len(events),
        **_usage_added(usage),
    )
    if not failed:
        # A reply's parent repeated at the head of the next batch is already there.
        RunMessage = AnalysisRun.messages.through
        RunMessage.objects.bulk_create(
            (RunMessage(analysisrun_id=run.pk, message_id=pk) for pk in batch.message_ids),
            ignore_conflicts=True,
        )
    # The counters UPDATE above locked the run's row until this transaction ends: the two
    # conditional UPDATEs of `_finish_if_done` see the counters as this commit left them,
    # and only one commit of the run's batches finds it running with every batch counted.
    finished = _finish_if_done(run_id=run.pk)
    if finished:
        AnalysisRun.objects.filter(pk=run.pk).update(event_seq=F("event_seq") + 1)
    state = AnalysisRun.objects.only(*RUN_STATE_FIELDS).get(pk=run.pk)
    if finished:
        events.append(FINISH_EVENTS[state.status])
    _announce(state, *events)


def save_proposals(*, run: AnalysisRun, batch: Batch, proposals: Sequence[NewProposal]) -> list[TaskProposal]:
    """Save a batch's proposals, each marked with what it repeats. Call inside the
    transaction that commits the batch.

    The rows of the proposals' projects are locked first (in id order, so two batches never
    wait on each other crosswise): batches of one project, of this run or another, detect
    duplicates one after the other, each seeing the proposals of those committed before it.
    On SQLite the write transaction already serialises them."""
    if not proposals:
        return []
    project_ids = sorted({proposal.project.pk for proposal in proposals})
    list(Project.objects.select_for_update().filter(pk__in=project_ids).order_by("pk").values_list("pk"))
    return create_proposals(proposals=proposals, run_id=run.pk, batch_id=batch.pk, bands=run_bands(run))


def run_bands(run: AnalysisRun) -> dict[int, Bands]:
    """The band thresholds the run snapshotted per project (analysis.calibration); runs
    started before they were snapshotted use the fixed ones."""
    return {
        p["project_id"]: Bands(high=p["bands"]["high"], low=p["bands"]["low"])
        for p in run.config_snapshot.get("projects", [])
        if "bands" in p
    }
