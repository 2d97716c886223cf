from django.conf import settings
from django.db import models
from django.urls import reverse


class UsageFields(models.Model):
    """LLM usage, counted per batch and summed per run."""

    llm_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    llm_seconds = models.FloatField(default=0.0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    class Meta:
        abstract = True


# The choices of the models' fields, at module level so that their constraints can name
# their values (a `Meta` does not see its model's class body).
class AnalysisRunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    CLOSED = "closed", "Closed"


class AnalysisRunTrigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULED = "scheduled", "Scheduled"


class BatchStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class AnalysisRun(UsageFields):
    """One analysis of a window of chat for some projects, by one agent and task config."""

    Status = AnalysisRunStatus
    Trigger = AnalysisRunTrigger

    # The legal moves; `analysis.services.transition_run` is the only writer of `status`.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
        Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED}),
        Status.COMPLETED: frozenset({Status.CLOSED, Status.RUNNING}),
        Status.FAILED: frozenset({Status.RUNNING}),
        Status.CANCELLED: frozenset(),
        Status.CLOSED: frozenset(),
    }
    ACTIVE_STATUSES = (Status.PENDING, Status.RUNNING)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    projects = models.ManyToManyField("projects.Project", related_name="analysis_runs")
    chats = models.ManyToManyField(
        "sources.Chat",
        blank=True,
        related_name="analysis_runs",
        help_text="Empty: every chat of the projects.",
    )
    assignment = models.ForeignKey(
        "agents.AgentTaskAssignment", on_delete=models.PROTECT, related_name="runs"
    )
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    config_versions = models.ManyToManyField("projects.ProjectConfig", blank=True, related_name="runs")
    config_snapshot = models.JSONField(default=dict, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    messages = models.ManyToManyField("sources.Message", blank=True, related_name="analysis_runs")
    messages_fetched = models.PositiveIntegerField(default=0)
    messages_kept = models.PositiveIntegerField(default=0)
    prefilter_stats = models.JSONField(default=dict, blank=True, help_text="Messages dropped, by reason.")
    batches_total = models.PositiveIntegerField(default=0)
    # Planning reads the window in chunks and writes each chunk's batches in a transaction of
    # its own (`analysis.services.plan_run`), queuing them as it goes: while `planning`, the
    # run does not complete however many of its batches are done. `plan_cursor` is where it
    # stopped (the last message read, the batch still open), `plan_saved_at` when it last
    # wrote: a planning killed midway goes on from there.
    planning = models.BooleanField(default=False)
    plan_cursor = models.JSONField(default=dict, blank=True)
    plan_saved_at = models.DateTimeField(null=True, blank=True)
    batches_done = models.PositiveIntegerField(default=0)
    batches_failed = models.PositiveIntegerField(default=0)
    proposals_created = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    review_stats = models.JSONField(default=dict, blank=True)
    event_seq = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=AnalysisRunStatus.values), name="run_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(window_end__gt=models.F("window_start")), name="run_window_ordered"
            ),
            models.CheckConstraint(
                condition=models.Q(trigger__in=AnalysisRunTrigger.values), name="run_trigger_valid"
            ),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="run_status_created_idx")]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("admin:analysis_analysisrun_change", args=[self.pk])

    @property
    def progress_percent(self) -> int:
        if not self.batches_total:
            return 100 if self.status in (self.Status.COMPLETED, self.Status.CLOSED) else 0
        return round(100 * (self.batches_done + self.batches_failed) / self.batches_total)


class Batch(UsageFields):
    """A slice of a run's kept messages that fits the agent's token budget."""

    Status = BatchStatus

    # The legal moves; `analysis.services.transition_batches` is the only writer of `status`.
    # A batch is claimed (pending -> running), then done or failed by its holder, or put
    # back to pending (released as stalled, or its call failed for a passing reason); a
    # running batch is claimed again by a redelivery of the task that held it when its
    # worker died (running -> running); retrying a run's failed batches makes them pending.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.PENDING: frozenset({Status.RUNNING}),
        Status.RUNNING: frozenset({Status.RUNNING, Status.PENDING, Status.DONE, Status.FAILED}),
        Status.DONE: frozenset(),
        Status.FAILED: frozenset({Status.PENDING}),
    }

    run = models.ForeignKey(AnalysisRun, on_delete=models.CASCADE, related_name="batches")
    index = models.PositiveIntegerField()
    message_ids = models.JSONField(default=list)
    token_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # The Celery task id that holds the batch: a redelivery of the same task may take it
    # over after its worker died; any other task may not. A claim is this id with the
    # attempt it counted, so a holder whose batch was taken over commits nothing.
    claim_id = models.CharField(max_length=64, blank=True)
    # Renewed by the holder while it works: a running batch whose heartbeat is older than
    # BATCH_LEASE_SECONDS lost its worker, and `resume_stale_runs` releases it.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The past reviewed proposals its last prompt showed as examples (`proposals.examples`):
    # ids, not a foreign key, so that a deleted proposal leaves the record as it was sent.
    review_example_ids = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["run", "index"]
        verbose_name_plural = "batches"
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="batch_unique_index"),
            models.CheckConstraint(
                condition=models.Q(status__in=BatchStatus.values),
                name="batch_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["run", "status"], name="batch_run_status_idx")]

    def __str__(self) -> str:
        return f"Run {self.run_id} batch {self.index} ({self.status})"
