from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse

from projects.models import Task

HIGH_CONFIDENCE = 0.9
# SQLite's FTS5 trigram index of proposals' titles and descriptions, kept by triggers
# (migration 0004); PostgreSQL has GIN trigram indexes on UPPER(title) and UPPER(description).
PROPOSAL_FTS = "proposals_taskproposal_fts"
MEDIUM_CONFIDENCE = 0.7


# The choices of TaskProposal's fields, at module level so that its constraints can name their values.
class TaskProposalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    MERGED = "merged", "Merged"


class TaskProposalRecommendation(models.TextChoices):
    NEW_TASK = "new_task", "New task"
    UPDATE_EXISTING = "update_existing", "Update existing"
    MERGE = "merge", "Merge"
    REJECT = "reject", "Reject"


class TaskProposal(models.Model):
    """A task the LLM proposes from chat messages, waiting for a reviewer."""

    Status = TaskProposalStatus
    Recommendation = TaskProposalRecommendation

    # The legal moves; `proposals.services.reviews.transition_proposal` is the only writer
    # of `status`. A pending proposal is reviewed: approved (made a task or added to one),
    # rejected, or merged (into another, as a duplicate of a proposal or task, or split). A
    # rejected or merged one reopens. Undo restores the status before the last review:
    # pending again after any of those (an approval's task is then deleted), or rejected or
    # merged again when it undoes a reopen.
    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.PENDING: frozenset({Status.APPROVED, Status.REJECTED, Status.MERGED}),
        Status.APPROVED: frozenset({Status.PENDING}),
        Status.REJECTED: frozenset({Status.PENDING}),
        Status.MERGED: frozenset({Status.PENDING}),
    }

    class SimilarityKind(models.TextChoices):
        SAME_MESSAGES = "same_messages", "Same messages"
        OVERLAPPING_MESSAGES = "overlapping_messages", "Overlapping messages"
        SIMILAR_TITLE = "similar_title", "Similar title"

    class Band(models.TextChoices):
        HIGH = "high", "High"
        MEDIUM = "medium", "Medium"
        LOW = "low", "Low"

    run = models.ForeignKey(
        "analysis.AnalysisRun", null=True, blank=True, on_delete=models.CASCADE, related_name="proposals"
    )
    batch = models.ForeignKey(
        "analysis.Batch", null=True, blank=True, on_delete=models.SET_NULL, related_name="proposals"
    )
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="proposals")
    title = models.CharField(max_length=300)
    description = models.TextField(blank=True)
    suggested_assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    suggested_assignee_name = models.CharField(max_length=255, blank=True)
    priority = models.CharField(max_length=16, choices=Task.Priority.choices, default=Task.Priority.MEDIUM)
    category = models.CharField(max_length=16, choices=Task.Category.choices, default=Task.Category.FEATURE)
    tags = models.JSONField(default=list, blank=True)
    due_date = models.DateField(null=True, blank=True)
    confidence = models.FloatField()
    recommendation = models.CharField(
        max_length=20, choices=Recommendation.choices, default=Recommendation.NEW_TASK
    )
    reasoning = models.TextField(blank=True)
    source_messages = models.ManyToManyField("sources.Message", blank=True, related_name="proposals")
    similar_proposal = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="similar_to"
    )
    similar_task = models.ForeignKey(
        "projects.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="similar_proposals"
    )
    # Set when saved, from the thresholds its run used (a snapshot of the project's calibrated
    # bands, else the fixed ones): the band it was proposed in, whatever they become later.
    band = models.CharField(max_length=8, choices=Band.choices, blank=True, db_default="", db_index=True)
    similarity_score = models.FloatField(null=True, blank=True)
    similarity_kind = models.CharField(max_length=24, choices=SimilarityKind.choices, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reviewed_proposals",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_action = models.CharField(max_length=32, blank=True)
    review_note = models.TextField(blank=True)
    task = models.ForeignKey(
        "projects.Task",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="proposals",
        help_text="The task this proposal became or was added to.",
    )
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-confidence", "created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(confidence__gte=0) & models.Q(confidence__lte=1),
                name="proposal_confidence_range",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=TaskProposalStatus.values),
                name="proposal_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(recommendation__in=TaskProposalRecommendation.values),
                name="proposal_recommendation_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(similarity_score__isnull=True)
                | (models.Q(similarity_score__gte=0) & models.Q(similarity_score__lte=1)),
                name="proposal_similarity_range",
            ),
        ]
        indexes = [
            # The review queue: pending first, most confident, oldest.
            models.Index(fields=["status", "-confidence", "created_at"], name="proposal_queue_idx"),
            models.Index(fields=["project", "status"], name="proposal_project_status_idx"),
            models.Index(fields=["run", "status"], name="proposal_run_status_idx"),
        ]

    def __str__(self) -> str:
        return self.title

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Saved one by one (the admin, factories): the fixed bands, unless a band was given.
        # (Not given, it holds Django's DatabaseDefault, not a string.)
        if not isinstance(self.band, str) or not self.band:
            self.band = confidence_band(self.confidence)
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("admin:proposals_taskproposal_change", args=[self.pk])

    @property
    def auto_approved(self) -> bool:
        """Approved by the system (proposals.services.auto), and not reviewed since."""
        return self.status == TaskProposalStatus.APPROVED and self.review_action == "auto_approve"


@dataclass(frozen=True)
class Bands:
    """Confidence band thresholds: high above `high`, low below `low`, medium between."""

    high: float
    low: float


# Until a project's reviews calibrate them (analysis.calibration).
FIXED_BANDS = Bands(high=HIGH_CONFIDENCE, low=MEDIUM_CONFIDENCE)


def confidence_band(confidence: float, bands: Bands = FIXED_BANDS) -> str:
    """High above `bands.high`, low below `bands.low`, medium from one to the other; by
    default the fixed bands: high above 0.9, medium from 0.7 to 0.9, low below 0.7."""
    if confidence > bands.high:
        return TaskProposal.Band.HIGH
    if confidence >= bands.low:
        return TaskProposal.Band.MEDIUM
    return TaskProposal.Band.LOW


class ReviewEvent(models.Model):
    """The audit trail of reviews: who did what to a proposal, when, before and after."""

    class Action(models.TextChoices):
        APPROVE = "approve", "Approve"
        # By the system (`user` None), under the project's rule (proposals.services.auto).
        AUTO_APPROVE = "auto_approve", "Auto-approve"
        EDIT = "edit", "Edit"
        REJECT = "reject", "Reject"
        MERGE = "merge", "Merge"
        SPLIT = "split", "Split"
        MARK_DUPLICATE = "mark_duplicate", "Mark duplicate"
        ADD_TO_TASK = "add_to_task", "Add to task"
        UNDO = "undo", "Undo"
        REOPEN = "reopen", "Reopen"

    proposal = models.ForeignKey(TaskProposal, on_delete=models.CASCADE, related_name="review_events")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=20, choices=Action.choices)
    note = models.TextField(blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    task = models.ForeignKey(
        "projects.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["proposal", "-created_at"], name="review_event_proposal_idx")]

    def __str__(self) -> str:
        return f"{self.user} {self.action} {self.proposal_id} at {self.created_at}"
