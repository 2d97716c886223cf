"""Runs: their status changes and events, starting, completion, operator actions, schedules.

`transition_run` is the only writer of a run's `status`, `transition_batches` of a batch's;
`emit` numbers and sends a run's events.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, F, Func, IntegerField, Q, QuerySet
from django.utils import timezone

from agents.models import AgentTaskAssignment
from analysis.calibration import bands_for, recalibrate
from analysis.consumers import run_group
from analysis.models import AnalysisRun, Batch
from projects.models import Project, ProjectConfig
from projects.schedules import parse_schedule
from proposals.models import FIXED_BANDS, ReviewEvent, TaskProposal, confidence_band
from sources.models import Chat
from tasktracker.celery import app as celery_app
from tasktracker.exceptions import DomainError
from tasktracker.realtime import broadcast

logger = logging.getLogger(__name__)

# The analysis tasks, queued by their names: `analysis.tasks` imports the services, which
# import no tasks module.
RUN_TASK = "analysis.run_analysis"
BATCH_TASK = "analysis.process_batch"


def queue_run(run_id: int) -> None:
    celery_app.send_task(RUN_TASK, args=[run_id])


def queue_batch(batch_id: int, *, countdown: float | None = None) -> None:
    celery_app.send_task(BATCH_TASK, args=[batch_id], countdown=countdown)


def queue_batches(batch_ids: Iterable[int]) -> None:
    for batch_id in batch_ids:
        queue_batch(batch_id)


Status = AnalysisRun.Status


# Status changes


def transition_run(
    *, run_id: int, to: str, from_: str | None = None, when: Q | None = None, **fields: Any
) -> bool:
    """Move a run to `to` if that is a legal move from its current status, atomically: one
    UPDATE conditional on the status the move starts from (and on `when`, a condition on
    the run's row, tested in the same UPDATE), writing `fields` with it.

    The move starts from `from_` when given, else from the status the run has now. Returns
    False when the run is not (or no longer) there or `when` does not hold (another worker
    won, or the run moved on); raises `DomainError` (409) when the move is illegal
    (`AnalysisRun.TRANSITIONS`), and (404) when, with no `from_`, there is no such run.
    """
    current = from_
    if current is None:
        current = AnalysisRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        if current is None:
            raise DomainError(f"There is no run {run_id}.", code="not_found", status=404)
    if to not in AnalysisRun.TRANSITIONS[current]:
        raise DomainError(
            f"Run {run_id} is {current}; it cannot become {to}.", code="illegal_transition", status=409
        )
    rows = AnalysisRun.objects.filter(pk=run_id, status=current)
    if when is not None:
        rows = rows.filter(when)
    return bool(rows.update(status=to, **fields))


def transition_batches(
    batches: QuerySet[Batch], *, to: str, from_: str | Sequence[str], **fields: Any
) -> int:
    """Move those of `batches` that are in (one of) `from_` to `to`, writing `fields` with
    it; returns how many moved. The only writer of `Batch.status`.

    Every move from `from_` to `to` must be legal (`Batch.TRANSITIONS`), else `DomainError`
    (409), whether or not a row would move. The move is one conditional UPDATE whose WHERE
    is `batches`' own plus the status: a caller's conditions on the row (its claim, its
    heartbeat) are tested with it, by the database, on the row's newest version.
    """
    sources = [from_] if isinstance(from_, str) else list(from_)
    illegal = [source for source in sources if to not in Batch.TRANSITIONS[source]]
    if illegal:
        raise DomainError(
            f"A batch that is {' or '.join(illegal)} cannot become {to}.",
            code="illegal_transition",
            status=409,
        )
    return batches.filter(status__in=sources).update(status=to, **fields)


def emit(run_id: int, event: str) -> None:
    """Number and send a run event after commit, with the run's state (`run_state`) as data."""
    AnalysisRun.objects.filter(pk=run_id).update(event_seq=F("event_seq") + 1)
    _announce(AnalysisRun.objects.only(*RUN_STATE_FIELDS).get(pk=run_id), event)


def _announce(run: AnalysisRun, *events: str) -> None:
    """Send `events` in order, numbered up to the run's event_seq (read after it was bumped
    once per event), each with the state of `run`, on commit."""
    data = run_state(run)
    first = run.event_seq - len(events) + 1

    def send() -> None:
        for seq, event in enumerate(events, start=first):
            broadcast(run_group(run.pk), event, data, seq=seq)

    transaction.on_commit(send)


# What `run_state` reads (not the config snapshot nor the review statistics, JSON to parse;
# the prefilter's counts are a few keys).
RUN_STATE_FIELDS = (
    "status",
    "event_seq",
    "window_start",
    "window_end",
    "prefilter_stats",
    "messages_fetched",
    "messages_kept",
    "batches_total",
    "batches_done",
    "batches_failed",
    "proposals_created",
    "llm_calls",
    "prompt_tokens",
    "completion_tokens",
    "llm_seconds",
    "cost",
    "error",
)


def run_state(run: AnalysisRun) -> dict[str, Any]:
    """What a browser shows of a run: the snapshot it loads and the data of every event.

    Complete (the run's counters and every batch's state), so a page re-renders from the
    newest one it has. Costs one query (the batches), whatever their number.

    A running run's batches whose worker stopped renewing their heartbeat are listed
    (`stalled_indexes`), counted, explained, and offered to its operators to requeue;
    nothing sends an event when a worker dies, so the page asks again within `lease_seconds`.
    """
    done_percent, failed_percent = _progress_parts(run)
    rows = _batch_rows(run_id=run.pk)
    stale_before = _stale_before(settings.BATCH_LEASE_SECONDS) if run.status == Status.RUNNING else None
    stalled = [row["index"] for row in rows if _is_stalled(row, stale_before)]
    return {
        "id": run.pk,
        "status": run.status,
        "seq": run.event_seq,
        "messages_fetched": run.messages_fetched,
        "messages_kept": run.messages_kept,
        "batches_total": run.batches_total,
        "batches_done": run.batches_done,
        "batches_failed": run.batches_failed,
        "proposals_created": run.proposals_created,
        "progress_percent": run.progress_percent,
        "done_percent": done_percent,
        "failed_percent": failed_percent,
        "progress_label": _progress_label(run),
        "llm_calls": run.llm_calls,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "llm_seconds": round(run.llm_seconds, 3),
        "cost": str(run.cost),
        "error": run.error,
        "notice": _empty_run_notice(run),
        # Which operator actions apply now (the page shows only those; the services still
        # refuse a stale click).
        "can_cancel": Status.CANCELLED in AnalysisRun.TRANSITIONS[run.status],
        "can_retry": run.status in (Status.COMPLETED, Status.FAILED) and run.batches_failed > 0,
        "can_close": run.status == Status.COMPLETED,
        "can_requeue": bool(stalled),
        "stalled_batches": len(stalled),
        "stalled_indexes": stalled,
        "stalled_notice": _stalled_notice(len(stalled)),
        "lease_seconds": settings.BATCH_LEASE_SECONDS,
        "prefilter_summary": f"Dropped by the prefilter: {_dropped(run)}." if run.prefilter_stats else "",
        "batches": [_batch_state(row) for row in rows],
    }


def batch_states(*, run_id: int) -> list[dict[str, Any]]:
    """Every batch of a run as its page's table shows it, in index order, in one query."""
    return [_batch_state(row) for row in _batch_rows(run_id=run_id)]


class BatchRow(TypedDict):
    """A batch as `_batch_rows` reads it."""

    index: int
    status: str
    message_count: int
    token_count: int
    attempts: int
    llm_seconds: float
    error: str
    error_kind: str
    proposal_count: int
    heartbeat_at: datetime | None
    started_at: datetime | None


class JSONArrayLength(Func):
    """The length of a JSON array column, counted by the database (SQLite's
    `json_array_length`, PostgreSQL's `jsonb_array_length`)."""

    function = "JSON_ARRAY_LENGTH"
    output_field = IntegerField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, function="JSONB_ARRAY_LENGTH", **extra)


def _batch_rows(*, run_id: int) -> list[BatchRow]:
    # The batches' sizes, not their message ids: a run of 12,000 batches would read every
    # message id of its window for every event.
    return list(
        Batch.objects.filter(run_id=run_id)
        .order_by("index")
        .annotate(proposal_count=Count("proposals"), message_count=JSONArrayLength("message_ids"))
        .values(
            "index",
            "status",
            "message_count",
            "token_count",
            "attempts",
            "llm_seconds",
            "error",
            "error_kind",
            "proposal_count",
            "heartbeat_at",
            "started_at",
        )
    )


def _batch_state(row: BatchRow) -> dict[str, Any]:
    return {
        "index": row["index"],
        "status": row["status"],
        "messages": row["message_count"],
        "tokens": row["token_count"],
        "proposals": row["proposal_count"],
        "attempts": row["attempts"],
        "llm_seconds": round(row["llm_seconds"], 3),
        "error": row["error"],
        "error_kind": row["error_kind"],
    }


def _is_stalled(row: BatchRow, stale_before: datetime | None) -> bool:
    """`_stalled`, for a batch's row already read."""
    if stale_before is None or row["status"] != Batch.Status.RUNNING:
        return False
    beat = row["heartbeat_at"] or row["started_at"]
    return beat is not None and beat < stale_before


def _stalled_notice(stalled: int) -> str:
    if not stalled:
        return ""
    lease = f"{settings.BATCH_LEASE_SECONDS:g}"
    batches = "1 batch has" if stalled == 1 else f"{stalled} batches have"
    return (
        f"{batches} stalled: their worker sent no heartbeat for over {lease} s (it died or lost the"
        " database). Stalled batches are queued again every 30 s by the resume_stale_runs task when"
        " Celery beat runs; Requeue stalled batches does it now."
    )


def _progress_parts(run: AnalysisRun) -> tuple[int, int]:
    """The percentages of the bar's done and failed parts; they add up to `progress_percent`."""
    if not run.batches_total:
        return run.progress_percent, 0
    failed = round(100 * run.batches_failed / run.batches_total)
    return run.progress_percent - failed, failed


def _progress_label(run: AnalysisRun) -> str:
    if not run.batches_total:
        return "No batches" if run.status in (Status.COMPLETED, Status.CLOSED) else "No batches planned yet"
    label = f"{run.batches_done} of {run.batches_total} batches done"
    return f"{label}, {run.batches_failed} failed" if run.batches_failed else label


def _empty_run_notice(run: AnalysisRun) -> str:
    """Why a finished run had nothing to analyse, instead of an unexplained 0 / 0."""
    if run.status not in (Status.COMPLETED, Status.CLOSED) or run.messages_kept:
        return ""
    window = f"from {_minute(run.window_start)} to {_minute(run.window_end)}"
    if not run.messages_fetched:
        return f"No messages in this window ({window}) in the chats of its projects: choose a wider window."
    return (
        f"The prefilter dropped all {run.messages_fetched} messages of this window ({window})"
        f"{f': {_dropped(run)}' if run.prefilter_stats else ''}. Nothing was left to send to the LLM:"
        " check the projects' keywords and exclude keywords, or choose a wider window."
    )


def _dropped(run: AnalysisRun) -> str:
    # Sorted: PostgreSQL's jsonb keeps a dict's keys in an order of its own.
    return ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in sorted(run.prefilter_stats.items()))


def _minute(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M")


# Starting


def _config_snapshot(config: ProjectConfig, *, agent_id: int) -> dict[str, Any]:
    bands = bands_for(config.project, agent_id)
    return {
        "project_id": config.project_id,
        "slug": config.project.slug,
        "name": config.project.name,
        "config_id": config.pk,
        "version": config.version,
        "description": config.description,
        "language": config.language,
        "keywords": config.keywords,
        "exclude_keywords": config.exclude_keywords,
        "glossary": config.glossary,
        "components": config.components,
        "priority_rules": config.priority_rules,
        "batch_time_gap_minutes": config.batch_time_gap_minutes,
        # The auto-approval rule (proposals.services.auto), as the run applies it.
        "auto_approve": {
            "band": config.auto_approve_band,
            "min_rate": config.auto_approve_min_rate,
            "min_reviews": config.auto_approve_min_reviews,
        },
        "chat_ids": sorted(chat.pk for chat in config.chats.all()),
        "member_names": _member_names(config),
        # The band thresholds this run's proposals are saved with (analysis.calibration).
        "bands": {"high": bands.high, "low": bands.low, "calibrated": bands != FIXED_BANDS},
    }


def _member_names(config: ProjectConfig) -> list[str]:
    """The names the team goes by (usernames, first and last names): a message naming one is
    kept by the prefilter (`analysis.pipeline.keep_reason`)."""
    user_ids = [member["user_id"] for member in config.team]
    names = User.objects.filter(pk__in=user_ids).values_list("username", "first_name", "last_name")
    return sorted({name.strip() for row in names for name in row if len(name.strip()) >= 2})


@transaction.atomic
def start_run(
    *,
    window_start: datetime,
    window_end: datetime,
    projects: Sequence[Project],
    assignment: AgentTaskAssignment,
    chats: Sequence[Chat] | None = None,
    trigger: str = AnalysisRun.Trigger.MANUAL,
    user: User | None = None,
) -> AnalysisRun:
    """Create a pending run and enqueue it after commit.

    Locks the projects' rows so two overlapping starts cannot both pass the check that
    refuses (409) a run over a window overlapping a pending or running run of a project.
    """
    if window_end <= window_start:
        raise DomainError("The window must end after it starts.", code="invalid_window")
    if not projects:
        raise DomainError("Choose at least one project.", code="no_projects")
    agent = assignment.agent
    if not (assignment.is_active and assignment.task_config.is_active and agent.is_active):
        raise DomainError(f"{assignment} is switched off.", code="assignment_inactive")
    if not agent.provider.is_active:
        raise DomainError(f"The provider {agent.provider} is switched off.", code="provider_inactive")
    project_ids = sorted(p.pk for p in projects)
    list(Project.objects.select_for_update().filter(pk__in=project_ids))
    overlapping = AnalysisRun.objects.filter(
        status__in=AnalysisRun.ACTIVE_STATUSES,
        projects__in=project_ids,
        window_start__lt=window_end,
        window_end__gt=window_start,
    ).first()
    if overlapping is not None:
        raise DomainError(
            f"Run {overlapping.pk} is already {overlapping.status} over an overlapping window.",
            code="run_overlaps",
            status=409,
        )
    configs = list(
        ProjectConfig.objects.filter(project_id__in=project_ids, is_current=True)
        .select_related("project")
        .prefetch_related("chats")
    )
    missing = set(project_ids) - {c.project_id for c in configs}
    if missing:
        names = ", ".join(p.name for p in projects if p.pk in missing)
        raise DomainError(f"These projects have no configuration yet: {names}.", code="no_config")
    run = AnalysisRun.objects.create(
        window_start=window_start,
        window_end=window_end,
        assignment=assignment,
        trigger=trigger,
        started_by=user if user is not None and user.is_authenticated else None,
        config_snapshot={"projects": [_config_snapshot(c, agent_id=assignment.agent_id) for c in configs]},
    )
    run.projects.set(project_ids)
    run.config_versions.set(configs)
    if chats:
        run.chats.set(chats)
    transaction.on_commit(lambda: queue_run(run.pk))
    return run


FINISH_EVENTS: dict[str, str] = {Status.COMPLETED: "run_completed", Status.FAILED: "run_failed"}


def _finish_if_done(*, run_id: int) -> bool:
    """Complete the running run once every batch is done or failed (failed if none
    succeeded). Returns whether this call finished it.

    Two conditional UPDATEs through `transition_run`, each testing the counters and the
    running status in its WHERE: first the move to failed when no batch succeeded, then
    the one to completed. Only one move out of running ever matches, so exactly one
    batch's commit finishes the run. The caller holds the run's row lock (`_commit_batch`'s
    counters UPDATE, `plan_run`'s SELECT FOR UPDATE) until it commits, so no other commit
    changes the counters between the two UPDATEs. A run still planning (`planning`) does not
    finish: the planning's last transaction asks again once every batch is written.
    """
    # While planning (`plan_run`) writes batches, those written may all be counted already.
    all_counted = Q(batches_total=F("batches_done") + F("batches_failed"), planning=False)
    now = timezone.now()
    return transition_run(
        run_id=run_id,
        from_=Status.RUNNING,
        to=Status.FAILED,
        when=all_counted & Q(batches_done=0, batches_total__gt=0),
        finished_at=now,
        error="Every batch failed.",
    ) or transition_run(
        run_id=run_id, from_=Status.RUNNING, to=Status.COMPLETED, when=all_counted, finished_at=now
    )


def finish_run_if_done(*, run_id: int) -> None:
    """`_finish_if_done`, with its event. The caller holds the run's row lock."""
    if _finish_if_done(run_id=run_id):
        status = AnalysisRun.objects.filter(pk=run_id).values_list("status", flat=True).get()
        emit(run_id, FINISH_EVENTS[status])


# Operator actions


@transaction.atomic
def cancel_run(*, run: AnalysisRun, user: User | None = None) -> AnalysisRun:
    """Cancel a pending or running run; batches not yet claimed are never processed."""
    if not transition_run(run_id=run.pk, to=Status.CANCELLED, finished_at=timezone.now()):
        raise DomainError(f"Run {run.pk} changed meanwhile; reload it.", code="conflict", status=409)
    emit(run.pk, "run_cancelled")
    run.refresh_from_db()
    return run


@transaction.atomic
def retry_failed_batches(*, run: AnalysisRun) -> int:
    """Put a finished run's failed batches back in the queue; the run runs again."""
    failed = list(run.batches.filter(status=Batch.Status.FAILED).values_list("pk", flat=True))
    if not failed:
        raise DomainError(f"Run {run.pk} has no failed batches.", code="no_failed_batches")
    if not transition_run(run_id=run.pk, to=Status.RUNNING, finished_at=None, error=""):
        raise DomainError(f"Run {run.pk} changed meanwhile; reload it.", code="conflict", status=409)
    transition_batches(
        Batch.objects.filter(pk__in=failed),
        from_=Batch.Status.FAILED,
        to=Batch.Status.PENDING,
        attempts=0,
        claim_id="",
        error="",
    )
    AnalysisRun.objects.filter(pk=run.pk).update(batches_failed=F("batches_failed") - len(failed))
    emit(run.pk, "run_started")
    transaction.on_commit(lambda: queue_batches(failed))
    return len(failed)


def begin_run(*, run_id: int) -> bool:
    """Move a pending run to running (False when it is not pending: already begun, or
    cancelled)."""
    run = AnalysisRun.objects.filter(pk=run_id).only("status").first()
    if run is None or run.status != Status.PENDING:
        return run is not None and run.status == Status.RUNNING
    with transaction.atomic():
        if transition_run(run_id=run_id, to=Status.RUNNING, started_at=timezone.now()):
            emit(run_id, "run_started")
            return True
    return False


def fail_run(*, run_id: int, error: str) -> None:
    with transaction.atomic():
        if transition_run(run_id=run_id, to=Status.FAILED, finished_at=timezone.now(), error=error[:2000]):
            emit(run_id, "run_failed")


# Stalled batches: running, but their worker stopped renewing their heartbeat


def _stale_before(lease_seconds: float) -> datetime:
    return timezone.now() - timedelta(seconds=lease_seconds)


def _stalled(lease_seconds: float) -> Q:
    """Running batches whose heartbeat is older than `lease_seconds` (a batch claimed before
    heartbeats existed counts from its claim)."""
    stale = _stale_before(lease_seconds)
    return Q(status=Batch.Status.RUNNING) & (
        Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, started_at__lt=stale)
    )


def stalled_batches(*, lease_seconds: float | None = None) -> QuerySet[Batch]:
    """The batches of running runs that have stalled: their worker sent no heartbeat for
    longer than `lease_seconds` (`BATCH_LEASE_SECONDS`). What `resume_stale_runs` releases,
    and what the run page and /healthz count."""
    lease = settings.BATCH_LEASE_SECONDS if lease_seconds is None else lease_seconds
    return Batch.objects.filter(_stalled(lease), run__status=Status.RUNNING)


# A batch whose LLM call failed for one of these passing reasons goes back to the queue by
# itself, this much later (`process_batch`): Redis, which holds the provider's limits, was
# down for longer than the gateway's own retries.
REQUEUED_KINDS = frozenset({"limiter_unavailable"})
REQUEUE_DELAY_SECONDS = 30


def queue_batch_later(batch_id: int, *, delay: float) -> None:
    """Queue a batch again in `delay` seconds. The broker may be down with Redis: the batch
    then waits, pending, for `resume_stale_runs` (`requeued_batches`)."""
    try:
        queue_batch(batch_id, countdown=delay)
    except Exception:
        logger.warning("Batch %s could not be queued again now; resume_stale_runs will", batch_id)


def requeued_batches() -> QuerySet[Batch]:
    """Pending batches of running runs that were put back for a passing reason."""
    return Batch.objects.filter(
        run__status=Status.RUNNING, status=Batch.Status.PENDING, error_kind__in=REQUEUED_KINDS
    )


def _release_stalled(batches: QuerySet[Batch], *, lease_seconds: float) -> dict[int, list[int]]:
    """Put the stalled ones of `batches` back to pending with no claim, so that the next
    delivery takes them (their old holder's heartbeat and commit then match no row), and
    tell their runs' pages. Returns the released batches' ids by run; the caller queues them.

    The rows are locked and their condition re-tested on their newest version; a row its
    holder is renewing or committing right now is skipped (it is not stalled)."""
    released: dict[int, list[int]] = defaultdict(list)
    stalled = batches.filter(_stalled(lease_seconds))
    if not stalled.exists():  # the common case, without SQLite's write lock
        return {}
    with transaction.atomic():
        rows = (
            stalled.order_by("pk")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", "run_id", "started_at", "heartbeat_at")
        )
        for batch_id, run_id, started_at, heartbeat_at in rows:
            released[run_id].append(batch_id)
            # The LLM call its dead worker was making counts: one call, for as long as it was
            # seen alive. A renewed heartbeat says a call was under way (renewals happen only
            # during calls); one cut in its first third of a lease is not seen.
            seconds = (heartbeat_at - started_at).total_seconds() if heartbeat_at and started_at else 0.0
            calling = seconds > 0
            interrupted = {
                "llm_calls": F("llm_calls") + int(calling),
                "llm_seconds": F("llm_seconds") + seconds,
            }
            transition_batches(
                Batch.objects.filter(pk=batch_id),
                from_=Batch.Status.RUNNING,
                to=Batch.Status.PENDING,
                claim_id="",
                **interrupted,
            )
            AnalysisRun.objects.filter(pk=run_id).update(**interrupted)
        for run_id in released:
            emit(run_id, "progress_updated")
    for run_id, ids in released.items():
        logger.warning(
            "Run %s: released stalled batches %s (no heartbeat for %s s)", run_id, ids, lease_seconds
        )
    return dict(released)


@transaction.atomic
def requeue_stalled_batches(*, run: AnalysisRun) -> int:
    """Release a running run's stalled batches (`stalled_batches`) and queue them again now,
    rather than at the next `resume_stale_runs`, with the run's pending batches (their dead
    worker may have reserved some). Returns how many stalled batches were released; refuses
    a run that is not running (409) or has no stalled batch (400)."""
    released = _release_stalled(
        Batch.objects.filter(run_id=run.pk, run__status=Status.RUNNING),
        lease_seconds=settings.BATCH_LEASE_SECONDS,
    ).get(run.pk, [])
    if not released:
        status = AnalysisRun.objects.filter(pk=run.pk).values_list("status", flat=True).get()
        if status != Status.RUNNING:
            raise DomainError(
                f"Run {run.pk} is {status}; only a running run's batches stall.",
                code="not_running",
                status=409,
            )
        raise DomainError(f"Run {run.pk} has no stalled batches.", code="no_stalled_batches")
    pending = list(run.batches.filter(status=Batch.Status.PENDING).values_list("pk", flat=True))
    transaction.on_commit(lambda: queue_batches(pending))
    return len(released)


def resume_stale_runs(*, lease_seconds: float, planning_lease_seconds: float | None = None) -> int:
    """Queue again the unfinished work of running runs whose workers died.

    A running batch whose heartbeat is older than `lease_seconds` is released: its worker
    is gone (`stalled_batches`). Then every pending batch of a running run is queued again,
    the released ones and the others: a dead worker also loses the messages it had
    reserved and not begun, which the broker gives back only after its visibility timeout.
    A batch also still in the queue is claimed by one delivery only. When no worker was
    found dead, only the pending batches of runs with no sign of life for
    `planning_lease_seconds` (default `lease_seconds`: no batch renewed or finished since,
    nor the run begun, nor its planning written) are queued again, in case their messages
    were lost otherwise: this runs every 30 s, and queueing a waiting run's batches each
    time would flood the queue with copies. A run still pending, or running unplanned, that
    long after it was created is started again, and so is a run whose planning wrote nothing
    for that long (its worker died midway): its planning goes on from where it stopped
    (`plan_run`). Batches put back for a passing reason (`requeued_batches`) are queued
    too, in case the broker was down when they were put back. Returns the number of batches
    queued.
    """
    released = _release_stalled(Batch.objects.filter(run__status=Status.RUNNING), lease_seconds=lease_seconds)
    quiet_since = _stale_before(lease_seconds if planning_lease_seconds is None else planning_lease_seconds)
    pending = Batch.objects.filter(run__status=Status.RUNNING, status=Batch.Status.PENDING)
    if not released:
        alive = Batch.objects.filter(
            Q(heartbeat_at__gte=quiet_since) | Q(finished_at__gte=quiet_since), run__status=Status.RUNNING
        )
        pending = (
            pending.filter(run__started_at__lt=quiet_since)
            .exclude(run_id__in=alive.values("run_id"))
            .exclude(run__plan_saved_at__gte=quiet_since)  # planning wrote (and queued) lately
        )
    queued = sorted({*pending.values_list("pk", flat=True), *requeued_batches().values_list("pk", flat=True)})
    for batch_id in queued:
        queue_batch(batch_id)
    unplanned = Q(batches_total=0, planning=False) | Q(planning=True, plan_saved_at__lt=quiet_since)
    stuck_runs = AnalysisRun.objects.filter(
        Q(status=Status.PENDING) | Q(unplanned, status=Status.RUNNING), created_at__lt=quiet_since
    ).values_list("pk", flat=True)
    for run_id in stuck_runs:
        queue_run(run_id)
    return len(queued)


def start_scheduled_runs(*, now: datetime | None = None) -> list[AnalysisRun]:
    """Start the runs that projects' schedules make due, over the window since each
    project's last run (a day back for a first run). The agent is the one of the
    project's last run, else the first active assignment."""
    now = now or timezone.now()
    started = []
    configs = ProjectConfig.objects.filter(is_current=True, project__is_active=True).exclude(schedule="")
    for config in configs.select_related("project"):
        project = config.project
        last = project.analysis_runs.order_by("-window_end").first()
        last_at = last.created_at if last else config.created_at
        try:
            due = parse_schedule(config.schedule).is_due(timezone.localtime(last_at)).is_due
        except DomainError:
            logger.warning("Project %s has an invalid schedule %r", project, config.schedule)
            continue
        if not due:
            continue
        assignment = (
            last.assignment
            if last is not None
            else AgentTaskAssignment.objects.filter(is_active=True, agent__is_active=True).first()
        )
        if assignment is None:
            continue
        window_start = last.window_end if last is not None else now - timedelta(days=1)
        if window_start >= now:
            continue
        try:
            started.append(
                start_run(
                    window_start=window_start,
                    window_end=now,
                    projects=[project],
                    assignment=assignment,
                    trigger=AnalysisRun.Trigger.SCHEDULED,
                )
            )
        except DomainError as exc:
            logger.info("Scheduled run of %s not started: %s", project, exc.message)
    return started


@transaction.atomic
def close_run(*, run_id: int) -> AnalysisRun:
    """Close a completed run once none of its proposals is pending, storing its review
    figures: approved (of which `auto_approved` by the system), rejected, merged, approval
    rate overall and per confidence band."""
    run = AnalysisRun.objects.select_for_update().get(pk=run_id)
    if run.status != Status.COMPLETED:
        raise DomainError(
            f"Run {run.pk} is {run.status}; only completed runs close.", code="not_completed", status=409
        )
    pending = run.proposals.filter(status=TaskProposal.Status.PENDING).count()
    if pending:
        raise DomainError(
            f"Run {run.pk} still has {pending} pending proposal(s).", code="pending_left", status=409
        )
    counts: dict[str, dict[str, int]] = {}
    rows = run.proposals.values_list("status", "band", "confidence", "review_action")
    for status_value, band_name, confidence, action in rows:
        band = counts.setdefault(
            band_name or confidence_band(confidence),
            {"approved": 0, "rejected": 0, "merged": 0, "auto_approved": 0},
        )
        band[status_value] = band.get(status_value, 0) + 1
        # Approved by the system (proposals.services.auto): counted in `approved` too.
        if status_value == TaskProposal.Status.APPROVED and action == ReviewEvent.Action.AUTO_APPROVE:
            band["auto_approved"] += 1

    def rate(figures: dict[str, int]) -> float | None:
        decided = figures["approved"] + figures["rejected"]
        return round(figures["approved"] / decided, 3) if decided else None

    total = {
        key: sum(band[key] for band in counts.values())
        for key in ("approved", "rejected", "merged", "auto_approved")
    }
    stats = {
        **total,
        "approval_rate": rate(total),
        "bands": {
            name: {**figures, "approval_rate": rate(figures)} for name, figures in sorted(counts.items())
        },
    }
    transition_run(run_id=run.pk, to=Status.CLOSED, closed_at=timezone.now(), review_stats=stats)
    # Its reviews now count towards the agent's bands on its projects.
    agent = run.assignment.agent
    recalibrate(
        project_ids=run.projects.values_list("pk", flat=True), agent_id=agent.pk, agent_name=agent.name
    )
    emit(run.pk, "run_closed")
    run.refresh_from_db()
    return run
