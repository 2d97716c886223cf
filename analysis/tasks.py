"""Celery tasks of the analysis: thin, idempotent, taking ids only."""

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from analysis import services
from analysis.services.runs import queue_run


@shared_task(bind=True, name="analysis.run_analysis")
def run_analysis_task(self: Task, run_id: int) -> int:
    """Begin a run and plan its batches once, queuing each batch as a task of its own as
    soon as the chunk of planning that wrote it commits: workers start on the first batches
    while the rest of the window is planned.

    A redelivered or restarted task goes on planning from where the last one stopped, and
    queues the unfinished batches again; their claims keep any batch from being processed
    twice. A planning cut by the soft time limit is queued again to go on from its cursor.
    """
    if not services.begin_run(run_id=run_id):
        return 0
    try:
        batch_ids = services.plan_run(run_id=run_id, on_batches=_queue_batches)
    except SoftTimeLimitExceeded:
        queue_run(run_id)
        raise
    except Exception as exc:
        services.fail_run(run_id=run_id, error=f"Planning the run failed: {exc}")
        raise
    return len(batch_ids)


def _queue_batches(batch_ids: list[int]) -> None:
    for batch_id in batch_ids:
        process_batch_task.delay(batch_id)


@shared_task(bind=True, name="analysis.process_batch")
def process_batch_task(self: Task, batch_id: int) -> None:
    services.process_batch(batch_id=batch_id, claim_id=self.request.id or "")


@shared_task(name="analysis.resume_stale_runs")
def resume_stale_runs_task() -> int:
    """Periodic (beat, every 30 s): re-queue the work of runs whose workers died: batches
    whose heartbeat is older than the batch lease (BATCH_LEASE_SECONDS), and runs whose
    planning outlived any task (the task time limit)."""
    return services.resume_stale_runs(
        lease_seconds=settings.BATCH_LEASE_SECONDS, planning_lease_seconds=settings.CELERY_TASK_TIME_LIMIT
    )


@shared_task(name="analysis.start_scheduled_runs")
def start_scheduled_runs_task() -> int:
    """Periodic (beat, every minute): start the runs projects' schedules make due."""
    return len(services.start_scheduled_runs())
