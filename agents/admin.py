from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig


class LLMProviderForm(forms.ModelForm):
    """The API key is write-only: the input never renders a value, and a blank one keeps
    the stored key. `LLMProvider.api_key` encrypts what is assigned to it."""

    api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(
        label="Remove the API key",
        required=False,
        help_text="For endpoints that need none, such as a local Ollama or llama.cpp server.",
    )

    class Meta:
        model = LLMProvider
        # An allow-list: `api_key_encrypted` must never reach a form.
        fields = [
            "name",
            "base_url",
            "is_active",
            "timeout_seconds",
            "max_concurrency",
            "requests_per_minute",
            "price_per_1k_input",
            "price_per_1k_output",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        if cleaned_data.get("api_key") and cleaned_data.get("clear_api_key"):
            raise forms.ValidationError("Enter a new API key or remove the key, not both.")
        return cleaned_data

    def save(self, commit: bool = True) -> LLMProvider:
        if self.cleaned_data.get("api_key"):
            self.instance.api_key = self.cleaned_data["api_key"]
        elif self.cleaned_data.get("clear_api_key"):
            self.instance.api_key = ""
        return super().save(commit=commit)


@admin.register(LLMProvider)
class LLMProviderAdmin(admin.ModelAdmin):
    form = LLMProviderForm
    list_display = [
        "name",
        "base_url",
        "masked_api_key",
        "health",
        "is_active",
        "max_concurrency",
        "requests_per_minute",
        "timeout_seconds",
        "health_checked_at",
    ]
    list_filter = ["is_active", "health"]
    search_fields = ["name", "base_url"]
    fieldsets = [
        (None, {"fields": ["name", "base_url", "is_active"]}),
        ("API key", {"fields": ["masked_api_key", "api_key", "clear_api_key"]}),
        (
            "Limits and prices",
            {
                "fields": [
                    "timeout_seconds",
                    "max_concurrency",
                    "requests_per_minute",
                    "price_per_1k_input",
                    "price_per_1k_output",
                ]
            },
        ),
        ("Health", {"fields": ["health", "health_error", "health_checked_at", "available_models"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]
    readonly_fields = [
        "masked_api_key",
        "health",
        "health_error",
        "health_checked_at",
        "available_models",
        "created_at",
        "updated_at",
    ]

    @admin.display(description="Current API key")
    def masked_api_key(self, obj: LLMProvider) -> str:
        return obj.api_key_masked or self.get_empty_value_display()


class AssignmentInline(admin.TabularInline):
    model = AgentTaskAssignment
    extra = 0
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AgentTaskAssignment]:
        return super().get_queryset(request).select_related("agent", "task_config")


class TaskConfigAssignmentInline(AssignmentInline):
    """Under an agent: the task configs it is assigned."""

    fields = ["task_config", "is_active", "created_at"]
    autocomplete_fields = ["task_config"]


class AgentAssignmentInline(AssignmentInline):
    """Under a task config: the agents assigned it."""

    fields = ["agent", "is_active", "created_at"]
    autocomplete_fields = ["agent"]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "provider",
        "model",
        "temperature",
        "max_output_tokens",
        "batch_token_budget",
        "is_active",
        "updated_at",
    ]
    list_filter = ["is_active", "provider"]
    list_select_related = ["provider"]
    search_fields = ["name", "model", "provider__name"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "provider", "model", "is_active"]}),
        (
            "Generation",
            {"fields": ["system_prompt", "temperature", "max_output_tokens", "batch_token_budget"]},
        ),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]
    inlines = [TaskConfigAssignmentInline]


@admin.register(TaskConfig)
class TaskConfigAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "agent_count", "updated_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "updated_at"]
    fields = [
        "name",
        "description",
        "instructions",
        "response_schema",
        "is_active",
        "created_at",
        "updated_at",
    ]
    inlines = [AgentAssignmentInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskConfig]:
        return super().get_queryset(request).annotate(agent_count=Count("assignments"))

    @admin.display(description="Agents", ordering="agent_count")
    def agent_count(self, obj: TaskConfig) -> int:
        return obj.agent_count


@admin.register(AgentTaskAssignment)
class AgentTaskAssignmentAdmin(admin.ModelAdmin):
    list_display = ["__str__", "agent", "task_config", "is_active", "run_count", "created_at"]
    list_filter = ["is_active", "agent", "task_config"]
    list_select_related = ["agent", "task_config"]
    search_fields = ["agent__name", "task_config__name"]
    autocomplete_fields = ["agent", "task_config"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AgentTaskAssignment]:
        return super().get_queryset(request).annotate(run_count=Count("runs"))

    @admin.display(description="Runs", ordering="run_count")
    def run_count(self, obj: AgentTaskAssignment) -> int:
        return obj.run_count
