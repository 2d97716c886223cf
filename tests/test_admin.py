from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Model
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from analysis.models import AnalysisRun, Batch
from projects.models import Project, ProjectConfig, ProjectMembership, Task, WebhookDelivery, WebhookEndpoint
from proposals.models import ReviewEvent, TaskProposal
from sources.models import Chat, Message, MessageEdit, PollingState, TelegramUpdate
from tests.factories import (
    TEST_API_KEY,
    AgentFactory,
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    BatchFactory,
    ChatFactory,
    LLMProviderFactory,
    MessageEditFactory,
    MessageFactory,
    PollingStateFactory,
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    ReviewEventFactory,
    TaskFactory,
    TaskProposalFactory,
    TelegramUpdateFactory,
    UserFactory,
    WebhookDeliveryFactory,
    WebhookEndpointFactory,
)

pytestmark = pytest.mark.django_db

OUR_APPS = ["sources", "projects", "agents", "analysis", "proposals"]

# Models people configure in the admin; everything else is written by services
# (ingestion, `bump_config`, the pipeline, the review services) and only shown.
EDITABLE = [
    Chat,
    Project,
    Task,
    WebhookEndpoint,
    LLMProvider,
    Agent,
    TaskConfig,
    AgentTaskAssignment,
]
VIEW_ONLY = [
    Message,
    MessageEdit,
    TelegramUpdate,
    PollingState,
    ProjectMembership,
    ProjectConfig,
    AnalysisRun,
    Batch,
    TaskProposal,
    ReviewEvent,
    WebhookDelivery,
]
ALL_MODELS = EDITABLE + VIEW_ONLY

# For the query-count test: makes n rows of a model, each with its own related rows.
MAKERS: dict[type[Model], Callable[[int], Any]] = {
    Chat: lambda n: [MessageFactory(chat=chat) for chat in ChatFactory.create_batch(n)],
    Message: lambda n: MessageFactory.create_batch(n),
    MessageEdit: lambda n: MessageEditFactory.create_batch(n),
    TelegramUpdate: lambda n: TelegramUpdateFactory.create_batch(n),
    PollingState: lambda n: PollingStateFactory.create_batch(n),
    Project: lambda n: [
        ProjectConfigFactory(
            project=ProjectMembershipFactory(project__default_assignee=UserFactory()).project
        )
        for _ in range(n)
    ],
    ProjectMembership: lambda n: ProjectMembershipFactory.create_batch(n),
    ProjectConfig: lambda n: ProjectConfigFactory.create_batch(n, author=UserFactory()),
    Task: lambda n: TaskFactory.create_batch(n, assignee=UserFactory()),
    WebhookEndpoint: lambda n: WebhookEndpointFactory.create_batch(n),
    WebhookDelivery: lambda n: WebhookDeliveryFactory.create_batch(n),
    LLMProvider: lambda n: LLMProviderFactory.create_batch(n),
    Agent: lambda n: AgentFactory.create_batch(n),
    TaskConfig: lambda n: [AgentTaskAssignmentFactory().task_config for _ in range(n)],
    AgentTaskAssignment: lambda n: [AnalysisRunFactory().assignment for _ in range(n)],
    AnalysisRun: lambda n: AnalysisRunFactory.create_batch(n, started_by=UserFactory()),
    Batch: lambda n: BatchFactory.create_batch(n),
    TaskProposal: lambda n: TaskProposalFactory.create_batch(n, reviewer=UserFactory()),
    ReviewEvent: lambda n: ReviewEventFactory.create_batch(n, task=TaskFactory()),
}


def changelist_url(model: type[Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def add_url(model: type[Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")


def change_url(obj: Model) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def delete_url(obj: Model) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_delete", args=[obj.pk])


def form_data(response: Any) -> dict[str, Any]:
    """The POST data the admin change page in `response` would send unchanged."""
    data: dict[str, Any] = {}

    def add(form: Any) -> None:
        for name in form.fields:
            field = form[name]
            value = field.value()
            if value is None or value is False:
                continue
            if value is True:
                data[field.html_name] = "on"
            elif isinstance(value, list | tuple):
                data[field.html_name] = [str(item) for item in value]
            else:
                data[field.html_name] = str(value)

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        add(inline.formset.management_form)
        for form in inline.formset.forms:
            add(form)
    return data


@pytest.fixture
def objects() -> dict[type[Model], Model]:
    """One row of every model, linked the way the pipeline links them."""
    user = UserFactory()
    chat = ChatFactory()
    message, *_ = MessageFactory.create_batch(3, chat=chat)
    project = ProjectFactory(default_assignee=user)
    task = TaskFactory(project=project, assignee=user)
    assignment = AgentTaskAssignmentFactory()
    run = AnalysisRunFactory(
        assignment=assignment, projects=[project], chats=[chat], batches_total=2, batches_done=1
    )
    batch = BatchFactory(run=run, index=0, message_ids=[message.pk])
    proposal = TaskProposalFactory(
        run=run, batch=batch, project=project, source_messages=[message], reviewer=user
    )
    return {
        Chat: chat,
        Message: message,
        MessageEdit: MessageEditFactory(message=message),
        TelegramUpdate: TelegramUpdateFactory(),
        PollingState: PollingStateFactory(),
        Project: project,
        ProjectMembership: ProjectMembershipFactory(
            project=project, user=user, role=ProjectMembership.Role.LEAD
        ),
        ProjectConfig: ProjectConfigFactory(project=project, chats=[chat], author=user),
        Task: task,
        LLMProvider: assignment.agent.provider,
        Agent: assignment.agent,
        TaskConfig: assignment.task_config,
        AgentTaskAssignment: assignment,
        AnalysisRun: run,
        Batch: batch,
        TaskProposal: proposal,
        ReviewEvent: ReviewEventFactory(proposal=proposal, user=user, task=task),
        WebhookEndpoint: (endpoint := WebhookEndpointFactory(project=project)),
        WebhookDelivery: WebhookDeliveryFactory(endpoint=endpoint),
    }


def test_every_model_of_the_apps_is_registered() -> None:
    # The URLconf registers the admin modules (SimpleAdminConfig, tasktracker/urls.py): a
    # process that has not resolved a URL yet has not registered them.
    reverse("admin:index")
    models = {model for label in OUR_APPS for model in apps.get_app_config(label).get_models()}
    assert {model for model in models if not admin.site.is_registered(model)} == set()
    assert set(ALL_MODELS) == models


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda model: model.__name__)
def test_changelist_lists_the_rows(
    admin_client: Client, objects: dict[type[Model], Model], model: type[Model]
) -> None:
    response = admin_client.get(changelist_url(model))

    assert response.status_code == 200
    assert objects[model] in response.context["cl"].result_list


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda model: model.__name__)
def test_change_page_shows_the_object(
    admin_client: Client, objects: dict[type[Model], Model], model: type[Model]
) -> None:
    response = admin_client.get(change_url(objects[model]))

    assert response.status_code == 200
    assert response.context["original"] == objects[model]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda model: model.__name__)
def test_add_page_loads_only_where_adding_is_allowed(admin_client: Client, model: type[Model]) -> None:
    response = admin_client.get(add_url(model))

    assert response.status_code == (200 if model in EDITABLE else 403)


# Pending proposals are edited in the admin, through `edit_proposal` (tests/proposals).
@pytest.mark.parametrize(
    "model", [m for m in VIEW_ONLY if m is not TaskProposal], ids=lambda model: model.__name__
)
def test_view_only_models_refuse_changes(
    admin_client: Client, objects: dict[type[Model], Model], model: type[Model]
) -> None:
    obj = objects[model]
    before = model.objects.filter(pk=obj.pk).values().get()

    response = admin_client.post(change_url(obj), {"_save": "Save"})

    assert response.status_code == 403
    assert model.objects.filter(pk=obj.pk).values().get() == before


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda model: model.__name__)
def test_changelist_queries_do_not_grow_with_rows(admin_client: Client, model: type[Model]) -> None:
    url = changelist_url(model)
    seeded = model.objects.count()  # A migration seeds the default task config.
    MAKERS[model](5)
    admin_client.get(url)  # Warm the session and content-type caches.
    with CaptureQueriesContext(connection) as few:
        response = admin_client.get(url)
    assert response.context["cl"].result_count == seeded + 5

    MAKERS[model](20)
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(url)

    assert response.context["cl"].result_count == seeded + 25
    assert len(many) == len(few)


# Review events are the audit trail.


def test_review_events_cannot_be_deleted(admin_client: Client, objects: dict[type[Model], Model]) -> None:
    event = objects[ReviewEvent]

    response = admin_client.post(delete_url(event), {"post": "yes"})
    changelist = admin_client.get(changelist_url(ReviewEvent))

    assert response.status_code == 403
    assert ReviewEvent.objects.filter(pk=event.pk).exists()
    assert changelist.context["action_form"] is None


def test_a_reviewed_proposal_cannot_be_deleted_with_its_audit_trail(
    admin_client: Client, objects: dict[type[Model], Model]
) -> None:
    proposal = objects[TaskProposal]

    response = admin_client.post(delete_url(proposal), {"post": "yes"})

    assert response.status_code == 403
    assert TaskProposal.objects.filter(pk=proposal.pk).exists()
    assert ReviewEvent.objects.filter(proposal=proposal).exists()


def test_proposal_change_page_shows_its_review_events(
    admin_client: Client, objects: dict[type[Model], Model]
) -> None:
    event = objects[ReviewEvent]
    ReviewEvent.objects.filter(pk=event.pk).update(note="Looks right, approving")

    response = admin_client.get(change_url(event.proposal))

    assert "Looks right, approving" in response.content.decode()


# Providers: the API key is write-only.


def test_provider_pages_never_show_the_key(admin_client: Client) -> None:
    provider = LLMProviderFactory()

    pages = [admin_client.get(change_url(provider)), admin_client.get(changelist_url(LLMProvider))]

    for page in pages:
        html = page.content.decode()
        assert TEST_API_KEY not in html
        assert provider.api_key_encrypted not in html
        assert "••••••••7890" in html


def test_saving_a_provider_with_a_blank_key_keeps_the_key(admin_client: Client) -> None:
    provider = LLMProviderFactory()
    data = form_data(admin_client.get(change_url(provider)))
    data.update(api_key="", max_concurrency="7")

    response = admin_client.post(change_url(provider), data)

    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.max_concurrency == 7
    assert provider.api_key == TEST_API_KEY


def test_saving_a_provider_with_a_new_key_replaces_the_key(admin_client: Client) -> None:
    provider = LLMProviderFactory()
    data = form_data(admin_client.get(change_url(provider)))
    data.update(api_key="sk-live-new-key-abcd")

    response = admin_client.post(change_url(provider), data)

    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.api_key == "sk-live-new-key-abcd"
    assert "sk-live-new-key-abcd" not in provider.api_key_encrypted


def test_removing_a_provider_key_leaves_none(admin_client: Client) -> None:
    provider = LLMProviderFactory()
    data = form_data(admin_client.get(change_url(provider)))
    data.update(clear_api_key="on")

    response = admin_client.post(change_url(provider), data)

    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.api_key == ""


def test_a_provider_form_with_errors_does_not_echo_the_new_key(admin_client: Client) -> None:
    provider = LLMProviderFactory()
    data = form_data(admin_client.get(change_url(provider)))
    data.update(api_key="sk-typed-but-invalid-form", base_url="not a url")

    response = admin_client.post(change_url(provider), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert "sk-typed-but-invalid-form" not in response.content.decode()
    provider.refresh_from_db()
    assert provider.api_key == TEST_API_KEY


def test_adding_a_provider_stores_the_key_encrypted(admin_client: Client) -> None:
    data = form_data(admin_client.get(add_url(LLMProvider)))
    data.update(name="Local", base_url="http://127.0.0.1:11434/v1", api_key="sk-fresh-key-9876")

    response = admin_client.post(add_url(LLMProvider), data)

    assert response.status_code == 302
    provider = LLMProvider.objects.get(name="Local")
    assert provider.api_key == "sk-fresh-key-9876"
    assert provider.api_key_encrypted
    assert "sk-fresh-key-9876" not in provider.api_key_encrypted


# Proposals: confidence bands, search.


@pytest.mark.parametrize(
    ("band", "expected"),
    [
        ("high", {0.91, 1.0}),
        ("medium", {0.7, 0.8, 0.9}),
        ("low", {0.0, 0.69}),
        (None, {0.0, 0.69, 0.7, 0.8, 0.9, 0.91, 1.0}),
    ],
)
def test_confidence_band_filter_uses_the_exact_thresholds(
    admin_client: Client, band: str | None, expected: set[float]
) -> None:
    run = AnalysisRunFactory()
    for confidence in [0.0, 0.69, 0.7, 0.8, 0.9, 0.91, 1.0]:
        TaskProposalFactory(run=run, confidence=confidence)

    response = admin_client.get(changelist_url(TaskProposal), {"band": band} if band else {})

    assert response.status_code == 200
    assert {proposal.confidence for proposal in response.context["cl"].result_list} == expected


def test_proposal_changelist_shows_confidence_as_a_coloured_band(admin_client: Client) -> None:
    run = AnalysisRunFactory()
    for confidence in [0.95, 0.8, 0.5]:
        TaskProposalFactory(run=run, confidence=confidence)

    html = admin_client.get(changelist_url(TaskProposal)).content.decode()

    assert 'class="confidence confidence-high" title="High confidence" style="background:#2e7d32' in html
    assert 'class="confidence confidence-medium" title="Medium confidence" style="background:#b26a00' in html
    assert 'class="confidence confidence-low" title="Low confidence" style="background:#c62828' in html
    assert ">0.95</span>" in html


def test_proposal_search_finds_source_message_text_once(admin_client: Client) -> None:
    chat = ChatFactory()
    wanted = TaskProposalFactory(
        source_messages=[
            MessageFactory(chat=chat, text="the invoice export crashes"),
            MessageFactory(chat=chat, text="yes the invoice export is broken"),
        ]
    )
    TaskProposalFactory(source_messages=[MessageFactory(chat=chat, text="lunch at noon?")])

    response = admin_client.get(changelist_url(TaskProposal), {"q": "invoice"})

    assert list(response.context["cl"].result_list) == [wanted]


def test_proposal_change_page_shows_reasoning_and_sources(
    admin_client: Client, objects: dict[type[Model], Model]
) -> None:
    proposal = objects[TaskProposal]

    html = admin_client.get(change_url(proposal)).content.decode()

    assert proposal.reasoning in html
    assert proposal.source_messages.get().text in html
    assert "New task" in html


def test_chat_text_on_the_proposal_page_is_escaped(admin_client: Client) -> None:
    proposal = TaskProposalFactory(source_messages=[MessageFactory(text="<script>alert(1)</script>")])

    html = admin_client.get(change_url(proposal)).content.decode()

    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# Other pages.


def test_chat_changelist_counts_messages(admin_client: Client) -> None:
    busy = ChatFactory(title="Busy")
    MessageFactory.create_batch(3, chat=busy)
    ChatFactory(title="Quiet")

    response = admin_client.get(changelist_url(Chat))

    counts = {chat.title: chat.message_count for chat in response.context["cl"].result_list}
    assert counts == {"Busy": 3, "Quiet": 0}


def test_chats_can_be_switched_off_from_the_list(admin_client: Client) -> None:
    chat = ChatFactory(is_active=True)
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": str(chat.pk),
        "_save": "Save",
    }

    response = admin_client.post(changelist_url(Chat), data)

    assert response.status_code == 302
    chat.refresh_from_db()
    assert chat.is_active is False


def test_message_change_page_shows_earlier_texts(
    admin_client: Client, objects: dict[type[Model], Model]
) -> None:
    edit = objects[MessageEdit]

    html = admin_client.get(change_url(edit.message)).content.decode()

    assert edit.previous_text in html


def test_the_project_admin_shows_the_team_and_sends_changes_to_the_versioned_page(
    admin_client: Client, objects: dict[type[Model], Model]
) -> None:
    project = objects[Project]
    lead = objects[ProjectMembership].user
    newcomer = UserFactory()
    response = admin_client.get(change_url(project))
    data = form_data(response)
    total = int(data["memberships-TOTAL_FORMS"])
    data.update(
        {
            "memberships-TOTAL_FORMS": str(total + 1),
            f"memberships-{total}-user": str(newcomer.pk),
            f"memberships-{total}-role": ProjectMembership.Role.MEMBER,
            "default_assignee": str(newcomer.pk),
            "name": "Renamed project",
        }
    )

    saved = admin_client.post(change_url(project), data)

    html = response.content.decode()
    assert lead.username in html
    assert reverse("projects:project-edit", args=[project.slug]) in html
    assert saved.status_code == 302
    project.refresh_from_db()
    assert project.name == "Renamed project"
    # The team and the default assignee change only through a new version.
    assert not project.memberships.filter(user=newcomer).exists()
    assert project.default_assignee_id != newcomer.pk
    assert project.configs.count() == 1


def test_project_changelist_shows_the_current_config_version(admin_client: Client) -> None:
    project = ProjectFactory()
    ProjectConfigFactory(project=project, major=1, is_current=False)
    ProjectConfigFactory(project=project, major=2, minor=1, is_current=True)

    html = admin_client.get(changelist_url(Project)).content.decode()

    assert "2.1.0" in html


def test_adding_a_task_records_who_created_it(admin_client: Client, admin_user: User) -> None:
    project = ProjectFactory()
    data = form_data(admin_client.get(add_url(Task)))
    data.update(project=str(project.pk), title="Ship the export")

    response = admin_client.post(add_url(Task), data)

    assert response.status_code == 302
    assert Task.objects.get(title="Ship the export").created_by == admin_user


def test_run_changelist_shows_agent_and_progress(admin_client: Client) -> None:
    run = AnalysisRunFactory(batches_total=4, batches_done=2, batches_failed=1)

    html = admin_client.get(changelist_url(AnalysisRun)).content.decode()

    assert run.assignment.agent.name in html
    assert "2/4 (1 failed)" in html


def test_run_change_page_lists_its_batches_and_links_its_proposals(
    admin_client: Client, objects: dict[type[Model], Model]
) -> None:
    run = objects[AnalysisRun]

    response = admin_client.get(change_url(run))

    html = response.content.decode()
    assert f"{changelist_url(TaskProposal)}?run__id__exact={run.pk}" in html
    batches = next(
        inline for inline in response.context["inline_admin_formsets"] if inline.opts.model is Batch
    )
    assert [form.instance for form in batches.formset.forms] == [objects[Batch]]
