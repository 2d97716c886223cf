"""The admin of the `agents` app: providers, agents, task configs and their assignments.

Every write goes through `agents.services`, as from the API: saves by the create and
update services, deletes by `delete_configuration` (which refuses one still in use), and
the refusals of a service become a form error or an admin message, never a 500.
"""

from typing import TYPE_CHECKING, Any, TypedDict, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Model, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from agents.prompts import PromptMessage
from agents.services import (
    assign_task_config,
    check_agent_provider,
    create_agent,
    create_provider,
    create_task_config,
    delete_configuration,
    request_provider_check,
    sample_messages,
    test_agent,
    update_agent,
    update_assignment,
    update_provider,
    update_task_config,
)
from tasktracker.exceptions import DomainError

if TYPE_CHECKING:
    # A type checker's dependency only (django-stubs brings it): not installed in production.
    from django_stubs_ext import WithAnnotations

# What `delete_configuration` deletes.
Configuration = LLMProvider | Agent | TaskConfig | AgentTaskAssignment


class AgentCount(TypedDict):
    agent_count: int


class RunCount(TypedDict):
    run_count: int


def _form_fields(form: forms.ModelForm) -> dict[str, Any]:
    """The model fields the form edits, with their cleaned values: what the service writes,
    like a PUT of the API."""
    model_fields = form._meta.model._meta.concrete_fields
    return {f.name: form.cleaned_data[f.name] for f in model_fields if f.name in form.cleaned_data}


def _take_saved_row(obj: Model, saved: Model) -> None:
    # The admin goes on with the instance it passed to save_model (the inlines, the log
    # entry, the redirect), so it becomes the row the service created.
    vars(obj).update(vars(saved))


class DeletesThroughService(admin.ModelAdmin):
    """Deletes by `delete_configuration`, the API's delete, so that the same refusal holds
    (one still in use stays, and the message says what uses it).

    Django's delete page and `delete_selected` list protected rows and refuse first; the
    service's refusal is for what changed meanwhile. It rolls back the whole request (the
    log entries, the other rows of a bulk delete) and becomes an error message."""

    def delete_model(self, request: HttpRequest, obj: Configuration) -> None:
        delete_configuration(instance=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Configuration]) -> None:
        for obj in queryset:
            delete_configuration(instance=obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Configuration], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        # `*args, **kwargs`: what a later Django passes (the stubs know its `action_location`).
        try:
            with transaction.atomic():
                return super().response_action(request, queryset, *args, **kwargs)
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class LLMProviderForm(forms.ModelForm):
    """The API key is write-only: the input never renders a value, and a blank one keeps
    the stored key (`LLMProviderAdmin.save_model` hands the key to the provider services,
    which store it encrypted)."""

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
        super().clean()
        cleaned_data = self.cleaned_data
        if cleaned_data.get("api_key") and cleaned_data.get("clear_api_key"):
            raise forms.ValidationError("Enter a new API key or remove the key, not both.")
        return cleaned_data


@admin.register(LLMProvider)
class LLMProviderAdmin(DeletesThroughService):
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

    actions = ["check_health"]

    @admin.display(description="Current API key")
    def masked_api_key(self, obj: LLMProvider) -> str:
        return obj.api_key_masked or self.get_empty_value_display()

    def save_model(self, request: HttpRequest, obj: LLMProvider, form: forms.ModelForm, change: bool) -> None:
        # Through the same services as the API: a new provider, or a new address or key, is
        # checked again in the background once committed.
        typed = form.cleaned_data.get("api_key")
        api_key = typed if typed else ("" if form.cleaned_data.get("clear_api_key") else None)
        if change:
            # `obj` already holds the form's values; the service compares with the stored row.
            stored = LLMProvider.objects.get(pk=obj.pk)
            _take_saved_row(obj, update_provider(provider=stored, api_key=api_key, **_form_fields(form)))
        else:
            _take_saved_row(obj, create_provider(api_key=api_key or "", **_form_fields(form)))

    @admin.action(description="Check health (model list) now")
    def check_health(self, request: HttpRequest, queryset: QuerySet[LLMProvider]) -> None:
        for provider in queryset:
            request_provider_check(provider=provider)
        self.message_user(
            request, f"Checking {len(queryset)} provider(s) in the background.", messages.SUCCESS
        )


class AssignmentFormSet(BaseInlineFormSet):
    """An agent's task configs, or a task config's agents, saved through the services the
    API uses: a new row by `assign_task_config`, a switch by `update_assignment`, a removal
    by `delete_configuration`. The pair of a saved row stays as it is (its runs record what
    they ran by it): a different pair is a new row."""

    def add_fields(self, form: forms.ModelForm, index: int | None) -> None:
        super().add_fields(form, index)
        if form.instance.pk is not None:
            for name in ("agent", "task_config"):
                if name != self.fk.name and name in form.fields:
                    form.fields[name].disabled = True

    def save_new(self, form: forms.ModelForm, commit: bool = True) -> AgentTaskAssignment:
        new = form.instance
        setattr(new, self.fk.name, self.instance)  # the agent or task config saved above
        _take_saved_row(
            new, assign_task_config(agent=new.agent, task_config=new.task_config, is_active=new.is_active)
        )
        return new

    def save_existing(
        self, form: forms.ModelForm, obj: AgentTaskAssignment, commit: bool = True
    ) -> AgentTaskAssignment:
        return update_assignment(assignment=obj, is_active=form.cleaned_data["is_active"])

    def delete_existing(self, obj: AgentTaskAssignment, commit: bool = True) -> None:
        # The formset has refused already, as a form error, to delete one that runs used.
        if commit:
            delete_configuration(instance=obj)


class AssignmentInline(admin.TabularInline):
    model = AgentTaskAssignment
    formset = AssignmentFormSet
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


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = [
            "name",
            "provider",
            "model",
            "is_active",
            "system_prompt",
            "temperature",
            "max_output_tokens",
            "batch_token_budget",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Offer the models the providers reported at their last health check.
        models = sorted({m for p in LLMProvider.objects.filter(is_active=True) for m in p.available_models})
        self.fields["model"].widget.attrs["list"] = "provider-models"
        self.fields["model"].help_text = "Models the provider reported: " + (", ".join(models) or "none yet")

    def clean_provider(self) -> LLMProvider:
        # The API's rule, asked of the same function; `self.instance` is still the stored row.
        provider = self.cleaned_data["provider"]
        try:
            check_agent_provider(provider=provider, agent=self.instance)
        except DomainError as exc:
            raise forms.ValidationError(exc.message, code=exc.code) from exc
        return provider


class AgentTestForm(forms.Form):
    task_config = forms.ModelChoiceField(queryset=TaskConfig.objects.none(), required=False)
    sample = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 100}),
        required=False,
        help_text="One message a line as `Author: text`. Empty: a built-in sample chat.",
    )

    def __init__(self, *args: Any, agent: Agent, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        task_config = cast(forms.ModelChoiceField, self.fields["task_config"])
        task_config.queryset = agent.task_configs.filter(is_active=True)

    def clean_sample(self) -> list[PromptMessage] | None:
        lines = [line.strip() for line in self.cleaned_data["sample"].splitlines() if line.strip()]
        if not lines:
            return None
        template = sample_messages()[0]
        result = []
        for number, line in enumerate(lines, start=1):
            author, _, text = line.partition(":")
            if not text.strip():
                raise forms.ValidationError(f"Line {number} is not `Author: text`.")
            result.append(
                PromptMessage(id=number, sent_at=template.sent_at, author=author.strip(), text=text.strip())
            )
        return result


@admin.register(Agent)
class AgentAdmin(DeletesThroughService):
    form = AgentForm
    change_form_template = "admin/agents/agent/change_form.html"
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

    def save_model(self, request: HttpRequest, obj: Agent, form: forms.ModelForm, change: bool) -> None:
        if change:
            # `obj` already holds the form's values; the service compares with the stored row.
            stored = Agent.objects.get(pk=obj.pk)
            _take_saved_row(obj, update_agent(agent=stored, **_form_fields(form)))
        else:
            _take_saved_row(obj, create_agent(**_form_fields(form)))

    def get_urls(self) -> list[URLPattern]:
        test_url = path(
            "<int:agent_id>/test/", self.admin_site.admin_view(self.test_view), name="agents_agent_test"
        )
        return [test_url, *super().get_urls()]

    def test_view(self, request: HttpRequest, agent_id: int) -> HttpResponse:
        """ "Test this agent": sample messages in, the proposals, latency, tokens and cost out."""
        agent = get_object_or_404(Agent.objects.select_related("provider"), pk=agent_id)
        if not self.has_change_permission(request, agent):
            raise PermissionDenied
        form = AgentTestForm(request.POST or None, agent=agent)
        result = None
        if request.method == "POST" and form.is_valid():
            result = test_agent(
                agent=agent,
                task_config=form.cleaned_data["task_config"],
                messages=form.cleaned_data["sample"],
            )
            if result.ok:
                self.message_user(request, f"{agent} answered with {len(result.proposals)} proposal(s).")
            else:
                self.message_user(request, result.error, messages.ERROR)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": agent,
            "title": f"Test {agent}",
            "form": form,
            "result": result,
            "sample": sample_messages(),
        }
        return TemplateResponse(request, "admin/agents/agent/test.html", context)


@admin.register(TaskConfig)
class TaskConfigAdmin(DeletesThroughService):
    list_display = ["name", "is_active", "agent_count", "updated_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "updated_at"]
    fields = [
        "name",
        "description",
        "instructions",
        "response_schema",
        ("max_proposals_per_batch", "max_proposals_per_message"),
        ("review_examples", "review_examples_tokens"),
        "is_active",
        "created_at",
        "updated_at",
    ]
    inlines = [AgentAssignmentInline]

    def save_model(self, request: HttpRequest, obj: TaskConfig, form: forms.ModelForm, change: bool) -> None:
        if change:
            update_task_config(task_config=obj, **_form_fields(form))
        else:
            _take_saved_row(obj, create_task_config(**_form_fields(form)))

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskConfig]:
        return super().get_queryset(request).annotate(agent_count=Count("assignments"))

    @admin.display(description="Agents", ordering="agent_count")
    def agent_count(self, obj: "WithAnnotations[TaskConfig, AgentCount]") -> int:
        return obj.agent_count


@admin.register(AgentTaskAssignment)
class AgentTaskAssignmentAdmin(DeletesThroughService):
    list_display = ["__str__", "agent", "task_config", "is_active", "run_count", "created_at"]
    list_filter = ["is_active", "agent", "task_config"]
    list_select_related = ["agent", "task_config"]
    search_fields = ["agent__name", "task_config__name"]
    autocomplete_fields = ["agent", "task_config"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AgentTaskAssignment]:
        return super().get_queryset(request).annotate(run_count=Count("runs"))

    def get_readonly_fields(self, request: HttpRequest, obj: AgentTaskAssignment | None = None) -> list[str]:
        # A saved assignment keeps its pair (its runs record what they ran by it).
        return [*self.readonly_fields, "agent", "task_config"] if obj is not None else self.readonly_fields

    def save_model(
        self, request: HttpRequest, obj: AgentTaskAssignment, form: forms.ModelForm, change: bool
    ) -> None:
        # Through the same services as the API (which only adds and removes assignments).
        if change:
            update_assignment(assignment=obj, is_active=form.cleaned_data["is_active"])
        else:
            _take_saved_row(
                obj,
                assign_task_config(agent=obj.agent, task_config=obj.task_config, is_active=obj.is_active),
            )

    @admin.display(description="Runs", ordering="run_count")
    def run_count(self, obj: "WithAnnotations[AgentTaskAssignment, RunCount]") -> int:
        return obj.run_count
