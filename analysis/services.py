"""The analysis lifecycle: start, fetch, prefilter, batch, process, complete, cancel, retry.

A run is resumable and spread over workers: each batch is a Celery task of its own that
claims its `Batch` row, calls the LLM outside any transaction, then commits the batch
with its proposals and the run's counters in one transaction. The batch that commits
last completes the run, decided by a conditional UPDATE in the database.
"""

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from celery.schedules import ParseException, crontab
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Case, CharField, F, Q, Subquery, TextField, Value, When
from django.utils import timezone

from agents.llm import LLMError, LLMUsage, complete_json
from agents.models import AgentTaskAssignment
from agents.prompts import system_prompt, user_prompt
from analysis import tasks
from analysis.consumers import run_group
from analysis.models import AnalysisRun, Batch
from analysis.pipeline import PipelineMessage, create_batches, prefilter_messages
from projects.models import Project, ProjectConfig
from proposals.models import TaskProposal, confidence_band
from proposals.services import NewProposal, ProposalData, create_proposals
from sources.models import Message
from tasktracker.exceptions import DomainError
from tasktracker.realtime import broadcast

logger = logging.getLogger(__name__)
Status = AnalysisRun.Status


# Status changes


def transition_run(*, run_id: int, to: str, **fields: Any) -> bool:
    """Move a run to `to` if that is a legal move from its current status, atomically.

    Returns False when the run moved on meanwhile (another worker won); raises
    `DomainError` when the move is illegal from the status it has.
    """
    current = AnalysisRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    if current is None:
        raise DomainError(f"There is no run {run_id}.", code="not_found", status=404)
    if to not in AnalysisRun.TRANSITIONS[current]:
        raise DomainError(
            f"Run {run_id} is {current}; it cannot become {to}.", code="illegal_transition", status=409
        )
    return bool(AnalysisRun.objects.filter(pk=run_id, status=current).update(status=to, **fields))


def emit(run_id: int, event: str) -> None:
    """Number and send a run event after commit, with the run's counters as data."""
    AnalysisRun.objects.filter(pk=run_id).update(event_seq=F("event_seq") + 1)
    _announce(AnalysisRun.objects.get(pk=run_id), event)


def _announce(run: AnalysisRun, event: str) -> None:
    """Send `event` with the state of `run`, read after its event_seq was bumped, on commit."""
    data = run_state(run)
    transaction.on_commit(lambda: broadcast(run_group(run.pk), event, data, seq=run.event_seq))


def run_state(run: AnalysisRun) -> dict[str, Any]:
    """What a browser shows of a run: the snapshot it loads and the data of every event."""
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
        "llm_calls": run.llm_calls,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "llm_seconds": round(run.llm_seconds, 3),
        "cost": str(run.cost),
        "error": run.error,
    }


# Starting


def _config_snapshot(config: ProjectConfig) -> dict[str, Any]:
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
        "chat_ids": sorted(chat.pk for chat in config.chats.all()),
    }


@transaction.atomic
def start_run(
    *,
    window_start: datetime,
    window_end: datetime,
    projects: Sequence[Project],
    assignment: AgentTaskAssignment,
    chats: Sequence[Any] | None = None,
    trigger: str = AnalysisRun.Trigger.MANUAL,
    user: AbstractBaseUser | None = None,
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
        config_snapshot={"projects": [_config_snapshot(c) for c in configs]},
    )
    run.projects.set(project_ids)
    run.config_versions.set(configs)
    if chats:
        run.chats.set(chats)
    transaction.on_commit(lambda: tasks.run_analysis_task.delay(run.pk))
    return run


# The pipeline

# What the pipeline reads of a message (not its raw update, often kilobytes).
PROMPT_FIELDS = ("pk", "chat_id", "telegram_id", "author_name", "text", "sent_at", "reply_to_telegram_id")


def fetch_messages(*, run: AnalysisRun) -> list[Message]:
    """The messages of the run's window in the active chats its projects read."""
    chat_ids = {cid for p in run.config_snapshot.get("projects", []) for cid in p["chat_ids"]}
    restricted = set(run.chats.values_list("pk", flat=True))
    if restricted:
        chat_ids &= restricted
    return list(
        Message.objects.filter(
            chat_id__in=chat_ids,
            chat__is_active=True,
            sent_at__gte=run.window_start,
            sent_at__lt=run.window_end,
        )
        .order_by("sent_at", "pk")
        .only(*PROMPT_FIELDS)
    )


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


@transaction.atomic
def plan_run(*, run_id: int) -> list[int]:
    """Fetch, prefilter and batch a running run's messages once; return the batches to do.

    Idempotent: a run whose batches exist (a restarted task) gets its unfinished ones.
    """
    run = AnalysisRun.objects.select_for_update().get(pk=run_id)
    if run.batches.exists():
        return list(
            run.batches.filter(status__in=[Batch.Status.PENDING, Batch.Status.RUNNING]).values_list(
                "pk", flat=True
            )
        )
    projects = run.config_snapshot.get("projects", [])
    messages = fetch_messages(run=run)
    kept = prefilter_messages(
        to_pipeline(messages),
        keywords=[k for p in projects for k in p["keywords"]],
        exclude_keywords=[k for p in projects for k in p["exclude_keywords"]],
    )
    gap = min((p["batch_time_gap_minutes"] for p in projects), default=60)
    planned = create_batches(
        kept.kept, token_budget=run.assignment.agent.batch_token_budget, time_gap=timedelta(minutes=gap)
    )
    batches = Batch.objects.bulk_create(
        Batch(run=run, index=i, message_ids=b.message_ids, token_count=b.tokens)
        for i, b in enumerate(planned)
    )
    run.messages_fetched = len(messages)
    run.messages_kept = len(kept.kept)
    run.prefilter_stats = kept.stats
    run.batches_total = len(batches)
    run.save(update_fields=["messages_fetched", "messages_kept", "prefilter_stats", "batches_total"])
    emit(run.pk, "progress_updated")
    if not batches:
        finish_run_if_done(run_id=run.pk)
    return [b.pk for b in batches]


def claim_batch(*, batch_id: int, claim_id: str) -> Batch | None:
    """Take a pending batch of a running run (or one this same task held when its worker
    died). A batch tried `ANALYSIS_MAX_BATCH_ATTEMPTS` times is failed instead of tried again.

    The claim is one UPDATE whose WHERE tests the batch row's own columns (the run's status
    through a plain subquery on `run_id`, no join), so PostgreSQL re-checks the batch's
    condition on the row's newest version when two deliveries race (a join would make
    Django select the row in a subquery on a stale snapshot and let both win).
    """
    claimable = Q(status=Batch.Status.PENDING) | Q(status=Batch.Status.RUNNING, claim_id=claim_id)
    running = AnalysisRun.objects.filter(status=Status.RUNNING).values("pk")
    claimed = Batch.objects.filter(claimable, pk=batch_id, run_id__in=Subquery(running)).update(
        status=Batch.Status.RUNNING, claim_id=claim_id, attempts=F("attempts") + 1, started_at=timezone.now()
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
    return batch


def process_batch(*, batch_id: int, claim_id: str) -> None:
    """Ask the LLM for the batch's proposals and commit them with the batch. A failure
    of the LLM or a malformed answer fails this batch only."""
    batch = claim_batch(batch_id=batch_id, claim_id=claim_id)
    if batch is None:
        return
    run = batch.run
    agent, task_config = run.assignment.agent, run.assignment.task_config
    messages = {
        m.pk: m for m in Message.objects.filter(pk__in=batch.message_ids).order_by().only(*PROMPT_FIELDS)
    }
    ordered = [messages[pk] for pk in batch.message_ids if pk in messages]
    projects = run.config_snapshot.get("projects", [])
    context = {
        "projects": [
            {k: p[k] for k in ("slug", "name", "description", "glossary", "components") if p.get(k)}
            for p in projects
        ]
    }
    try:
        result = complete_json(
            provider=agent.provider,
            model=agent.model,
            system_prompt=system_prompt(agent, task_config),
            user_prompt=user_prompt([m.prompt() for m in to_pipeline(ordered)], context),
            schema=task_config.response_schema,
            schema_name="proposals",
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
        )
    except LLMError as exc:
        _commit_batch(batch=batch, claim_id=claim_id, usage=exc.usage, error=exc.message, kind=exc.kind)
        return
    except Exception as exc:
        # Fail the batch rather than leave it running for ever; the error is kept.
        logger.exception("Batch %s of run %s failed unexpectedly", batch.pk, run.pk)
        _commit_batch(
            batch=batch, claim_id=claim_id, usage=LLMUsage(), error=f"Internal error: {exc}", kind="internal"
        )
        return
    _commit_batch(batch=batch, claim_id=claim_id, usage=result.usage, answer=result.data, messages=messages)


@transaction.atomic
def _commit_batch(
    *,
    batch: Batch,
    claim_id: str,
    usage: LLMUsage,
    answer: dict[str, Any] | None = None,
    messages: dict[int, Message] | None = None,
    error: str = "",
    kind: str = "",
) -> None:
    """Commit a batch's outcome, its proposals and the run's counters in one transaction,
    and send one run event for it on commit (the run's completion, when this batch was
    its last). Its queries do not depend on the number of messages or proposals."""
    locked = Batch.objects.select_for_update().get(pk=batch.pk)
    if locked.status != Batch.Status.RUNNING or locked.claim_id != claim_id:
        # Another delivery holds or finished the batch (its claim was released as stale
        # and taken over): only the holder of the claim commits, so nothing counts twice.
        return
    run = batch.run
    created: list[TaskProposal] = []
    rejected: list[str] = []
    if answer is not None and not error:
        created, rejected = save_proposals(run=run, batch=batch, answer=answer, messages=messages or {})
    failed = bool(error)
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.FAILED if failed else Batch.Status.DONE,
        error=error or "; ".join(rejected),
        error_kind=kind,
        finished_at=timezone.now(),
        llm_calls=F("llm_calls") + usage.calls,
        prompt_tokens=F("prompt_tokens") + usage.prompt_tokens,
        completion_tokens=F("completion_tokens") + usage.completion_tokens,
        llm_seconds=F("llm_seconds") + usage.latency_seconds,
        cost=F("cost") + usage.cost,
    )
    AnalysisRun.objects.filter(pk=run.pk).update(
        batches_done=F("batches_done") + (0 if failed else 1),
        batches_failed=F("batches_failed") + (1 if failed else 0),
        proposals_created=F("proposals_created") + len(created),
        llm_calls=F("llm_calls") + usage.calls,
        prompt_tokens=F("prompt_tokens") + usage.prompt_tokens,
        completion_tokens=F("completion_tokens") + usage.completion_tokens,
        llm_seconds=F("llm_seconds") + usage.latency_seconds,
        cost=F("cost") + usage.cost,
        event_seq=F("event_seq") + 1,
    )
    if not failed:
        # A reply's parent repeated at the head of the next batch is already there.
        RunMessage = AnalysisRun.messages.through
        RunMessage.objects.bulk_create(
            (RunMessage(analysisrun_id=run.pk, message_id=pk) for pk in batch.message_ids),
            ignore_conflicts=True,
        )
    finished = _finish_if_done(run_id=run.pk)
    state = AnalysisRun.objects.get(pk=run.pk)
    if finished:
        event = FINISH_EVENTS[state.status]
    else:
        event = "proposals_created" if created else "progress_updated"
    _announce(state, event)


def _due_date(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def save_proposals(
    *, run: AnalysisRun, batch: Batch, answer: dict[str, Any], messages: dict[int, Message]
) -> tuple[list[TaskProposal], list[str]]:
    """Validate and save an answer's proposals. Returns the saved ones and the reasons
    the others were rejected (ids outside the batch, an unknown project, a bad confidence)."""
    items = answer.get("proposals", [])
    if not items:
        return [], []
    projects = {
        p.slug: p
        for p in run.projects.prefetch_related("memberships__user").select_related("default_assignee")
    }
    in_batch = set(batch.message_ids)
    new: list[NewProposal] = []
    rejected: list[str] = []
    for index, item in enumerate(items):
        ids = [i for i in item.get("source_message_ids", []) if isinstance(i, int)]
        outside = [i for i in ids if i not in in_batch]
        if not ids or outside:
            rejected.append(f"proposal {index}: message ids {outside or ids} are not in the batch")
            continue
        project = projects.get(str(item.get("project") or "")) or (
            next(iter(projects.values())) if len(projects) == 1 else None
        )
        if project is None:
            rejected.append(f"proposal {index}: project {item.get('project')!r} is not one of the run's")
            continue
        confidence = item.get("confidence")
        if not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
            rejected.append(f"proposal {index}: confidence {confidence!r} is not between 0 and 1")
            continue
        data = ProposalData(
            title=str(item.get("title") or "").strip() or "(untitled)",
            description=str(item.get("description") or ""),
            priority=item.get("priority") or "medium",
            category=item.get("category") or "feature",
            tags=[str(t) for t in item.get("tags") or []],
            due_date=_due_date(item.get("due_date")),
            confidence=float(confidence),
            reasoning=str(item.get("reasoning") or ""),
            recommendation=item.get("recommendation") or TaskProposal.Recommendation.NEW_TASK,
            assignee_name=str(item.get("assignee") or ""),
        )
        new.append(
            NewProposal(
                project=project,
                data=data,
                source_messages=[messages[i] for i in ids if i in messages],
                suggested_assignee=_assignee(project, data.assignee_name),
            )
        )
    return create_proposals(proposals=new, run=run, batch=batch), rejected


def _assignee(project: Project, name: str) -> Any:
    """The team member the LLM named (username, full or first name), else the default."""
    wanted = name.strip().lstrip("@").casefold()
    if wanted:
        for membership in project.memberships.all():
            user = membership.user
            names = {
                user.get_username().casefold(),
                user.get_full_name().casefold(),
                user.first_name.casefold(),
            }
            if wanted in names - {""}:
                return user
    return project.default_assignee


FINISH_EVENTS = {Status.COMPLETED: "run_completed", Status.FAILED: "run_failed"}


def _finish_if_done(*, run_id: int) -> bool:
    """Complete the run once every batch is done or failed (failed if none succeeded).
    Decided by one conditional UPDATE, so exactly one batch's commit does it."""
    none_done = Q(batches_done=0, batches_total__gt=0)
    return bool(
        AnalysisRun.objects.filter(
            pk=run_id, status=Status.RUNNING, batches_total=F("batches_done") + F("batches_failed")
        ).update(
            status=Case(
                When(none_done, then=Value(Status.FAILED)),
                default=Value(Status.COMPLETED),
                output_field=CharField(),
            ),
            error=Case(
                When(none_done, then=Value("Every batch failed.")),
                default=F("error"),
                output_field=TextField(),
            ),
            finished_at=timezone.now(),
        )
    )


def finish_run_if_done(*, run_id: int) -> None:
    """`_finish_if_done`, with its event."""
    if _finish_if_done(run_id=run_id):
        status = AnalysisRun.objects.filter(pk=run_id).values_list("status", flat=True).get()
        emit(run_id, FINISH_EVENTS[status])


# Operator actions


@transaction.atomic
def cancel_run(*, run: AnalysisRun, user: AbstractBaseUser | None = None) -> AnalysisRun:
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
    Batch.objects.filter(pk__in=failed).update(status=Batch.Status.PENDING, attempts=0, claim_id="", error="")
    AnalysisRun.objects.filter(pk=run.pk).update(batches_failed=F("batches_failed") - len(failed))
    emit(run.pk, "run_started")
    transaction.on_commit(lambda: [tasks.process_batch_task.delay(pk) for pk in failed])
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


def resume_stale_runs(*, lease_seconds: float) -> int:
    """Queue again the unfinished work of running runs whose workers died.

    A batch claimed longer than `lease_seconds` ago (longer than any task may run) is
    released: its worker is gone. Every pending batch of a running run is queued again
    (a batch already in the queue is then claimed by one delivery only), and a pending
    run that never began is started again. Returns the number of batches queued.
    """
    stale = timezone.now() - timedelta(seconds=lease_seconds)
    Batch.objects.filter(
        run__status=Status.RUNNING, status=Batch.Status.RUNNING, started_at__lt=stale
    ).update(status=Batch.Status.PENDING, claim_id="")
    pending = list(
        Batch.objects.filter(run__status=Status.RUNNING, status=Batch.Status.PENDING).values_list(
            "pk", flat=True
        )
    )
    for batch_id in pending:
        tasks.process_batch_task.delay(batch_id)
    stuck_runs = AnalysisRun.objects.filter(
        Q(status=Status.PENDING) | Q(status=Status.RUNNING, batches_total=0), created_at__lt=stale
    ).values_list("pk", flat=True)
    for run_id in stuck_runs:
        tasks.run_analysis_task.delay(run_id)
    return len(pending)


def parse_schedule(expression: str) -> crontab:
    """A five-field cron expression (minute hour day-of-month month day-of-week)."""
    fields = expression.split()
    if len(fields) != 5:
        raise DomainError(f"{expression!r} is not a five-field cron expression.", code="invalid_schedule")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ValueError, ParseException) as exc:
        raise DomainError(
            f"{expression!r} is not a valid cron expression: {exc}", code="invalid_schedule"
        ) from exc


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
    figures: approved, rejected, merged, approval rate overall and per confidence band."""
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
    for status_value, confidence in run.proposals.values_list("status", "confidence"):
        band = counts.setdefault(confidence_band(confidence), {"approved": 0, "rejected": 0, "merged": 0})
        band[status_value] = band.get(status_value, 0) + 1

    def rate(figures: dict[str, int]) -> float | None:
        decided = figures["approved"] + figures["rejected"]
        return round(figures["approved"] / decided, 3) if decided else None

    total = {key: sum(band[key] for band in counts.values()) for key in ("approved", "rejected", "merged")}
    stats = {
        **total,
        "approval_rate": rate(total),
        "bands": {
            name: {**figures, "approval_rate": rate(figures)} for name, figures in sorted(counts.items())
        },
    }
    transition_run(run_id=run.pk, to=Status.CLOSED, closed_at=timezone.now(), review_stats=stats)
    emit(run.pk, "run_closed")
    run.refresh_from_db()
    return run
