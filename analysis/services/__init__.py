"""The analysis lifecycle: start, fetch, prefilter, batch, process, complete, cancel, retry.

A run is resumable and spread over workers: each batch is a Celery task of its own that
claims its `Batch` row, calls the LLM outside any transaction (renewing the batch's
heartbeat meanwhile), then commits the batch with its proposals and the run's counters
in one transaction. The batch that commits last completes the run, decided by
conditional UPDATEs in the database. A batch whose heartbeat stops (its worker died) is
released and queued again by `resume_stale_runs`, or at once by `requeue_stalled_batches`.

`runs` holds the status changes of runs and batches, a run's events and operator actions;
`batches` the pipeline; `answers` the reading of a batch's answer.
"""

from analysis.services.answers import cap_proposals, read_answer, read_item
from analysis.services.batches import (
    PROMPT_FIELDS,
    BatchPrompt,
    batch_prompt,
    claim_batch,
    fetch_messages,
    plan_run,
    process_batch,
    save_proposals,
    to_pipeline,
)
from analysis.services.runs import (
    FINISH_EVENTS,
    begin_run,
    cancel_run,
    close_run,
    emit,
    fail_run,
    finish_run_if_done,
    requeue_stalled_batches,
    requeued_batches,
    resume_stale_runs,
    retry_failed_batches,
    run_state,
    stalled_batches,
    start_run,
    start_scheduled_runs,
    transition_batches,
    transition_run,
)

__all__ = [
    "FINISH_EVENTS",
    "PROMPT_FIELDS",
    "BatchPrompt",
    "batch_prompt",
    "begin_run",
    "cancel_run",
    "cap_proposals",
    "claim_batch",
    "close_run",
    "emit",
    "fail_run",
    "fetch_messages",
    "finish_run_if_done",
    "plan_run",
    "process_batch",
    "read_answer",
    "read_item",
    "requeue_stalled_batches",
    "requeued_batches",
    "resume_stale_runs",
    "retry_failed_batches",
    "run_state",
    "save_proposals",
    "stalled_batches",
    "start_run",
    "start_scheduled_runs",
    "to_pipeline",
    "transition_batches",
    "transition_run",
]
