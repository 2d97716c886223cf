from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agents.crypto import decrypt, encrypt
from agents.validators import validate_json_schema, validate_llm_base_url


# The choices of LLMProvider's fields, at module level so that its constraints can name their values.
class LLMProviderHealth(models.TextChoices):
    PENDING = "pending", "Pending"
    VALIDATING = "validating", "Validating"
    CONNECTED = "connected", "Connected"
    ERROR = "error", "Error"


class LLMProvider(models.Model):
    """An OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp server)."""

    Health = LLMProviderHealth

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(
        max_length=500, validators=[validate_llm_base_url], help_text="e.g. https://api.openai.com/v1"
    )
    # Fernet token of the key; read and written through `api_key`, never shown back.
    api_key_encrypted = models.TextField(blank=True, editable=False)
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(1.0)])
    max_concurrency = models.PositiveIntegerField(default=4, validators=[MinValueValidator(1)])
    requests_per_minute = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1)])
    price_per_1k_input = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    price_per_1k_output = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    is_active = models.BooleanField(default=True)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.PENDING)
    health_error = models.TextField(blank=True)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    available_models = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(health__in=LLMProviderHealth.values),
                name="provider_health_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(timeout_seconds__gt=0), name="provider_timeout_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def api_key(self) -> str:
        return decrypt(self.api_key_encrypted)

    @api_key.setter
    def api_key(self, value: str) -> None:
        self.api_key_encrypted = encrypt(value) if value else ""

    @property
    def api_key_masked(self) -> str:
        key = self.api_key
        if not key:
            return ""
        return f"{'•' * 8}{key[-4:]}" if len(key) > 8 else "•" * 8


class Agent(models.Model):
    name = models.CharField(max_length=100, unique=True)
    provider = models.ForeignKey(LLMProvider, on_delete=models.PROTECT, related_name="agents")
    model = models.CharField(max_length=200)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=0.2, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    max_output_tokens = models.PositiveIntegerField(default=2048, validators=[MinValueValidator(1)])
    batch_token_budget = models.PositiveIntegerField(
        default=3000, validators=[MinValueValidator(100)], help_text="Message tokens per batch."
    )
    is_active = models.BooleanField(default=True)
    # Quoted: the field is generic in its stub only.
    task_configs: "models.ManyToManyField[TaskConfig, AgentTaskAssignment]" = models.ManyToManyField(
        "TaskConfig", through="AgentTaskAssignment", related_name="agents", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(temperature__gte=0) & models.Q(temperature__lte=2),
                name="agent_temperature_range",
            ),
            models.CheckConstraint(condition=~models.Q(model=""), name="agent_model_required"),
        ]

    def __str__(self) -> str:
        return self.name


# However a task config is set, one batch's answer makes no more proposals than this.
MAX_PROPOSALS_PER_BATCH = 20
# Past review decisions a batch's prompt may show (`review_examples`), and the most tokens
# they may take (`review_examples_tokens`, taken from the agent's batch budget).
MAX_REVIEW_EXAMPLES = 10
MAX_REVIEW_EXAMPLES_TOKENS = 4000


class TaskConfig(models.Model):
    """A reusable analysis task: what to extract, and the JSON Schema of the answer."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    instructions = models.TextField()
    response_schema = models.JSONField(
        validators=[validate_json_schema], help_text="JSON Schema the LLM's answer must satisfy."
    )
    # What one answer may create: a model told by a message to "output 50 tasks" is cut
    # back to the most confident ones (the batch says so).
    max_proposals_per_batch = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_PROPOSALS_PER_BATCH)],
        help_text=f"At most this many proposals from one batch. Empty: one per message of the batch, "
        f"never more than {MAX_PROPOSALS_PER_BATCH}.",
    )
    max_proposals_per_message = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_PROPOSALS_PER_BATCH)],
        help_text="At most this many proposals of one batch may cite the same message.",
    )
    # Past reviews shown to the model as examples (`proposals.examples`): off by default,
    # since they cost prompt tokens the batch's messages then do without.
    review_examples = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(MAX_REVIEW_EXAMPLES)],
        help_text=f"At most this many past review decisions of the run's projects (approved proposals as "
        f"edited, rejected ones with their reasons) shown in each batch's prompt, most similar first. "
        f"0: none. At most {MAX_REVIEW_EXAMPLES}.",
    )
    review_examples_tokens = models.PositiveIntegerField(
        default=400,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_REVIEW_EXAMPLES_TOKENS)],
        help_text="Prompt tokens the examples may take, out of the agent's batch token budget: batches "
        "are cut this much smaller when examples are asked for.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_proposals_per_batch__isnull=True)
                | models.Q(
                    max_proposals_per_batch__gte=1, max_proposals_per_batch__lte=MAX_PROPOSALS_PER_BATCH
                ),
                name="task_config_batch_cap_range",
            ),
            models.CheckConstraint(
                condition=models.Q(max_proposals_per_message__range=(1, MAX_PROPOSALS_PER_BATCH)),
                name="task_config_message_cap_range",
            ),
            models.CheckConstraint(
                condition=models.Q(review_examples__range=(0, MAX_REVIEW_EXAMPLES)),
                name="task_config_review_examples_range",
            ),
            models.CheckConstraint(
                condition=models.Q(review_examples_tokens__range=(1, MAX_REVIEW_EXAMPLES_TOKENS)),
                name="task_config_review_examples_tokens_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def proposal_cap(self, message_count: int) -> int:
        """How many proposals one batch of `message_count` messages may make."""
        return max(1, min(self.max_proposals_per_batch or message_count, MAX_PROPOSALS_PER_BATCH))


class AgentTaskAssignment(models.Model):
    """An agent assigned a task config: what a run uses."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="assignments")
    task_config = models.ForeignKey(TaskConfig, on_delete=models.CASCADE, related_name="assignments")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "task_config"]
        constraints = [models.UniqueConstraint(fields=["agent", "task_config"], name="assignment_unique")]

    def __str__(self) -> str:
        return f"{self.agent} → {self.task_config}"
