import secrets

from django.conf import settings
from django.db import models
from django.urls import reverse


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True)
    is_active = models.BooleanField(default=True)
    default_assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="default_assignee_of",
    )
    # What its reviews say of each agent's confidence, recomputed when a run closes
    # (analysis.calibration): {"agents": {"<agent id>": {reliability table, thresholds}}}.
    band_calibration = models.JSONField(default=dict, blank=True, db_default={})
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("admin:projects_project_change", args=[self.pk])


class MembershipRole(models.TextChoices):
    """A user's role in a project, `ProjectMembership.Role`; what each may do is said in
    `projects.access`. Outside the model so that its `Meta` can name the values."""

    LEAD = "lead", "Team lead"
    REVIEWER = "reviewer", "Reviewer"
    MEMBER = "member", "Member"


class ProjectMembership(models.Model):
    Role = MembershipRole

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="project_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "role", "user"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique"),
            models.CheckConstraint(
                condition=models.Q(role__in=MembershipRole.values), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}) in {self.project}"


class ProjectConfig(models.Model):
    """One immutable version of a project's configuration; the current one is flagged.

    Versions are semantic: major when what the project reads or who is on it changes
    (chats, team), minor when what the analysis looks for changes (keywords, exclude
    keywords, glossary, components, priority rules), patch for anything else.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="configs")
    major = models.PositiveIntegerField(default=1)
    minor = models.PositiveIntegerField(default=0)
    patch = models.PositiveIntegerField(default=0)
    is_current = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    language = models.CharField(max_length=16, default="en")
    keywords = models.JSONField(default=list, blank=True)
    exclude_keywords = models.JSONField(default=list, blank=True)
    glossary = models.JSONField(default=list, blank=True, help_text='[{"term": ..., "meaning": ...}]')
    components = models.JSONField(default=list, blank=True, help_text='[{"name": ..., "keywords": [...]}]')
    priority_rules = models.JSONField(default=list, blank=True)
    chats = models.ManyToManyField("sources.Chat", blank=True, related_name="project_configs")
    team = models.JSONField(
        default=list, blank=True, help_text='Snapshot of the team: [{"user_id": ..., "role": ...}]'
    )
    default_assignee_id_snapshot = models.BigIntegerField(null=True, blank=True)
    batch_time_gap_minutes = models.PositiveIntegerField(default=60)
    # Auto-approval (proposals.services.auto): off while the band is empty.
    auto_approve_band = models.CharField(
        max_length=8,
        blank=True,
        default="",
        help_text="Auto-approve new-task proposals of this band (high or medium); empty for off.",
    )
    auto_approve_min_rate = models.FloatField(default=0.95)
    auto_approve_min_reviews = models.PositiveIntegerField(default=50)
    schedule = models.CharField(
        max_length=64, blank=True, help_text="Cron expression for scheduled runs; empty for none."
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    change_summary = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-major", "-minor", "-patch"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "major", "minor", "patch"], name="config_version_unique"
            ),
            models.UniqueConstraint(
                fields=["project"], condition=models.Q(is_current=True), name="config_one_current"
            ),
            # projects.services.clean_config's bounds of the auto-approval rule.
            models.CheckConstraint(
                condition=models.Q(auto_approve_band__in=["", "high", "medium"])
                & models.Q(auto_approve_min_rate__gte=0.5)
                & models.Q(auto_approve_min_rate__lte=1)
                & models.Q(auto_approve_min_reviews__gte=10),
                name="config_auto_approve_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} v{self.version}"

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


# The choices of Task's fields, at module level so that its constraints can name their values.
class TaskStatus(models.TextChoices):
    OPEN = "open", "Open"
    IN_PROGRESS = "in_progress", "In progress"
    DONE = "done", "Done"
    CANCELLED = "cancelled", "Cancelled"


class TaskPriority(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class TaskCategory(models.TextChoices):
    BUG = "bug", "Bug"
    FEATURE = "feature", "Feature"
    IMPROVEMENT = "improvement", "Improvement"
    QUESTION = "question", "Question"
    CHORE = "chore", "Chore"


class Task(models.Model):
    """A task of a project, usually born from an approved proposal (see `proposals`)."""

    Status = TaskStatus
    Priority = TaskPriority
    Category = TaskCategory

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    title = models.CharField(max_length=300)
    description = models.TextField(blank=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    priority = models.CharField(max_length=16, choices=Priority.choices, default=Priority.MEDIUM)
    category = models.CharField(max_length=16, choices=Category.choices, default=Category.FEATURE)
    tags = models.JSONField(default=list, blank=True)
    due_date = models.DateField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=TaskStatus.values),
                name="task_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(priority__in=TaskPriority.values),
                name="task_priority_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(category__in=TaskCategory.values),
                name="task_category_valid",
            ),
        ]
        indexes = [models.Index(fields=["project", "status"], name="task_project_status_idx")]

    def __str__(self) -> str:
        return self.title


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class WebhookEndpoint(models.Model):
    """A URL of an integration that receives signed JSON POSTs about a project."""

    class Event(models.TextChoices):
        PROPOSAL_APPROVED = "proposal.approved", "Proposal approved"
        TASK_STATUS_CHANGED = "task.status_changed", "Task status changed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    # The HMAC key the receiver checks signatures with.
    secret = models.CharField(max_length=128, default=new_webhook_secret)
    events = models.JSONField(default=list, help_text="Events sent; empty for all.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "url"]

    def __str__(self) -> str:
        return f"{self.project}: {self.url}"

    def wants(self, event: str) -> bool:
        return self.is_active and (not self.events or event in self.events)


class WebhookDelivery(models.Model):
    """One POST of one event to one endpoint, retried with backoff, and its outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "created_at"], name="webhook_delivery_status_idx")]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint.url} ({self.status})"
