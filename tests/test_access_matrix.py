"""Who sees what, walked for every role over every operation of the API, every page, every
admin page and every WebSocket route.

Two projects: Alpha, where the users hold each role (member, reviewer, lead), and Bravo,
where none of them is. An outsider is on no project; staff are on none but see all. For
each operation:
- a row of Bravo (chat, message, run, proposal, task, project, configuration, webhook)
  is a 404 to everyone but staff, lists leave it out, and a write to it changes no row;
- a row of Alpha is seen, and changed, by the roles `projects.access` says may.

The operations are generated from the served OpenAPI schema, the URL configuration, the
admin's registry and the WebSocket routes: one that is neither described here nor listed
as public, with a reason, fails `test_every_*_is_described`. The rows are made once for
the module (committed, so that the consumers' database thread reads them) and each test
runs in a transaction rolled back after it.
"""

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.contrib import admin
from django.db import connections
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from analysis.models import AnalysisRun, Batch
from projects.models import Project, ProjectMembership, Task, WebhookDelivery, WebhookEndpoint
from projects.services import bump_config, create_project
from proposals.models import ReviewEvent, TaskProposal
from proposals.services import reject_proposal
from sources.models import Chat, Message, MessageEdit, PollingState, TelegramUpdate
from tasktracker.routing import websocket_urlpatterns
from tests.factories import (
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    BatchFactory,
    ChatFactory,
    MessageEditFactory,
    MessageFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
    WebhookDeliveryFactory,
    WebhookEndpointFactory,
)
from tests.projects.helpers import form_data

pytestmark = pytest.mark.django_db

ROLES = ("member", "reviewer", "lead", "outsider", "staff")
EVERYONE = frozenset({"member", "reviewer", "lead", "outsider"})
ON_ALPHA = frozenset({"member", "reviewer", "lead"})
REVIEWS = frozenset({"reviewer", "lead"})
LEADS = frozenset({"lead"})
NOBODY = frozenset[str]()
APPS = ("sources", "projects", "agents", "analysis", "proposals")


# The rows, made once


def _project_rows(name: str, lead: Any, team: list[dict[str, Any]], assignment: AgentTaskAssignment) -> Any:
    """A project as its lead makes it (two versions), reading a chat of its own, with a row
    of every kind the access rules cover."""
    chat = ChatFactory(title=f"{name} chat")
    first, second = MessageFactory(chat=chat), MessageFactory(chat=chat)
    project = create_project(
        name=name, slug=name.lower(), user=lead, changes={"chats": [chat.pk], "team": team}
    )
    bump_config(project=project, user=lead, changes={"keywords": ["crash"]})
    now = timezone.now()
    pending_run = AnalysisRunFactory(assignment=assignment, projects=[project])
    failed_run = AnalysisRunFactory(
        assignment=assignment,
        projects=[project],
        status=AnalysisRun.Status.FAILED,
        window_start=now - timedelta(days=30),
        window_end=now - timedelta(days=29),
    )
    batch = BatchFactory(run=failed_run, index=0, status=Batch.Status.FAILED)
    AnalysisRun.objects.filter(pk=failed_run.pk).update(batches_total=1, batches_failed=1)
    completed_run = AnalysisRunFactory(
        assignment=assignment,
        projects=[project],
        status=AnalysisRun.Status.COMPLETED,
        window_start=now - timedelta(days=60),
        window_end=now - timedelta(days=59),
    )
    stalled_run = AnalysisRunFactory(
        assignment=assignment,
        projects=[project],
        status=AnalysisRun.Status.RUNNING,
        window_start=now - timedelta(days=90),
        window_end=now - timedelta(days=89),
    )
    BatchFactory(
        run=stalled_run,
        index=0,
        status=Batch.Status.RUNNING,
        claim_id="gone",
        started_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(hours=1),
    )
    second_proposal = TaskProposalFactory(
        run=None, project=project, title=f"{name} proposal two", confidence=0.7
    )
    proposal = TaskProposalFactory(
        run=None,
        project=project,
        title=f"{name} proposal one",
        confidence=0.95,
        source_messages=[first, second],
        similar_proposal=second_proposal,
    )
    rejected = TaskProposalFactory(run=None, project=project, title=f"{name} proposal rejected")
    reject_proposal(proposal_id=rejected.pk, user=lead, reason="Not a task")
    webhook = WebhookEndpointFactory(project=project)
    return SimpleNamespace(
        project=project,
        config=project.configs.get(is_current=True),
        membership=project.memberships.get(user=lead),
        chat=chat,
        message=first,
        message_edit=MessageEditFactory(message=first),
        run=pending_run,
        failed_run=failed_run,
        completed_run=completed_run,
        stalled_run=stalled_run,
        batch=batch,
        proposal=proposal,
        second_proposal=second_proposal,
        rejected=rejected,
        event=rejected.review_events.get(),
        task=TaskFactory(project=project, title=f"{name} task"),
        webhook=webhook,
        delivery=WebhookDeliveryFactory(endpoint=webhook),
    )


def _existing() -> dict[type, set[Any]]:
    return {
        model: set(model._base_manager.values_list("pk", flat=True))
        for model in [*_models(), apps.get_model("auth", "User")]
    }


def _models() -> list[type]:
    return [model for label in APPS for model in apps.get_app_config(label).get_models()]


# Deleted in this order: a run protects its assignment, a project its proposals' runs.
CLEAN_UP = (
    TaskProposal,
    AnalysisRun,
    Project,
    Chat,
    AgentTaskAssignment,
    Agent,
    LLMProvider,
    TaskConfig,
)


@pytest.fixture(scope="module")
def rows(django_db_setup: None, django_db_blocker: Any) -> Iterator[Any]:
    with django_db_blocker.unblock():
        before = _existing()
        try:
            yield _make_rows()
        finally:
            # Committed rows: the tests of other modules must not find them.
            for model in CLEAN_UP:
                model._base_manager.exclude(pk__in=before[model]).delete()
            for model, pks in before.items():
                model._base_manager.exclude(pk__in=pks).delete()


def _make_rows() -> Any:
    users = {
        "member": UserFactory(username="matrix-member"),
        "reviewer": UserFactory(username="matrix-reviewer"),
        "lead": UserFactory(username="matrix-lead"),
        "outsider": UserFactory(username="matrix-outsider"),
        # A superuser too, so that the admin's model permissions hide none of its pages.
        "staff": UserFactory(username="matrix-staff", is_staff=True, is_superuser=True),
    }
    assignment = AgentTaskAssignmentFactory()
    team = [
        {"user_id": users["member"].pk, "role": ProjectMembership.Role.MEMBER},
        {"user_id": users["reviewer"].pk, "role": ProjectMembership.Role.REVIEWER},
    ]
    alpha = _project_rows("Alpha", users["lead"], team, assignment)
    bravo = _project_rows("Bravo", UserFactory(username="matrix-bravo-lead"), [], assignment)
    return SimpleNamespace(users=users, a=alpha, b=bravo, assignment=assignment)


def fingerprint() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the apps' tables (and their many-to-many tables), to compare."""
    return {
        model._meta.label: list(model._base_manager.order_by("pk").values_list())
        for label in APPS
        for model in apps.get_app_config(label).get_models(include_auto_created=True)
    }


def side(rows: Any, target: str) -> Any:
    return rows.a if target == "a" else rows.b


@dataclass(frozen=True)
class Rule:
    """What an operation does to a row of Alpha (Bravo's are seen by staff only).

    `seen_by`: the roles to whom the row exists; `may`: the roles that may do the
    operation (staff may always). Statuses: `ok` for who may, `refused` for who sees the
    row but may not, `unknown` for who does not see it (an int, or one per role).
    `row`: the attribute of the project's rows the path names; `body`: the request's body
    for a write, from the target project's rows; `lists`: for a list, the kind of row it
    lists.
    """

    row: str | None = None
    body: Callable[[Any, Any], dict[str, Any]] | None = None
    may: frozenset[str] = ON_ALPHA
    seen_by: frozenset[str] = ON_ALPHA
    ok: int = 200
    refused: int = 403
    unknown: int | dict[str, int] = 404
    lists: str | None = None
    one_target: bool = False

    def expected(self, target: str, role: str) -> int:
        if role == "staff":
            return self.ok
        if target == "b" or role not in self.seen_by:
            return self.unknown if isinstance(self.unknown, int) else self.unknown[role]
        return self.ok if role in self.may else self.refused

    def allowed(self, target: str, role: str) -> bool:
        return role == "staff" or (target == "a" and role in self.may and role in self.seen_by)


def _new_message(project: Any, rows: Any) -> dict[str, Any]:
    chat = project.chat
    return {
        "chat": {"telegram_id": chat.telegram_id, "title": chat.title, "type": chat.type},
        "messages": [{"telegram_id": 9999, "sent_at": "2026-01-01T09:00:00Z", "text": "A new message"}],
    }


def _split(project: Any, rows: Any) -> dict[str, Any]:
    first, second = sorted(project.proposal.source_messages.values_list("pk", flat=True))
    return {
        "parts": [
            {"title": "One part", "source_message_ids": [first]},
            {"title": "The other", "source_message_ids": [second]},
        ]
    }


def _run(project: Any, rows: Any) -> dict[str, Any]:
    return {
        "window_start": "2020-01-01T00:00:00Z",
        "window_end": "2020-01-02T00:00:00Z",
        "projects": [project.project.pk],
        "assignment": rows.assignment.pk,
    }


# Every operation of the API, by method and path as the schema gives them.
API: dict[tuple[str, str], Rule] = {
    ("GET", "/api/v1/chats/"): Rule(lists="chat"),
    ("GET", "/api/v1/chats/{id}/"): Rule(row="chat"),
    ("PATCH", "/api/v1/chats/{id}/"): Rule(row="chat", body=lambda p, r: {"title": "Renamed"}, may=NOBODY),
    ("GET", "/api/v1/messages/"): Rule(lists="message"),
    ("GET", "/api/v1/messages/{id}/"): Rule(row="message"),
    ("POST", "/api/v1/messages/bulk/"): Rule(body=_new_message, may=NOBODY, unknown=403),
    ("GET", "/api/v1/projects/"): Rule(lists="project"),
    ("POST", "/api/v1/projects/"): Rule(
        body=lambda p, r: {"name": "Zulu"}, may=NOBODY, ok=201, unknown=403, one_target=True
    ),
    ("GET", "/api/v1/projects/{slug}/"): Rule(row="project"),
    ("PATCH", "/api/v1/projects/{slug}/"): Rule(
        row="project", body=lambda p, r: {"description": "Changed"}, may=LEADS
    ),
    ("GET", "/api/v1/projects/{slug}/configs/"): Rule(row="project"),
    ("GET", "/api/v1/projects/{slug}/configs/{version}/"): Rule(row="project"),
    ("POST", "/api/v1/projects/{slug}/rollback/"): Rule(
        row="project", body=lambda p, r: {"version": "1.0.0"}, may=LEADS
    ),
    ("GET", "/api/v1/proposals/"): Rule(lists="proposal"),
    ("GET", "/api/v1/proposals/{id}/"): Rule(row="proposal"),
    ("PATCH", "/api/v1/proposals/{id}/"): Rule(
        row="proposal", body=lambda p, r: {"title": "Edited"}, may=REVIEWS
    ),
    ("POST", "/api/v1/proposals/{id}/approve/"): Rule(
        row="proposal", body=lambda p, r: {}, may=REVIEWS, ok=201
    ),
    ("POST", "/api/v1/proposals/{id}/duplicate/"): Rule(
        row="proposal", body=lambda p, r: {"of": p.second_proposal.pk}, may=REVIEWS
    ),
    ("POST", "/api/v1/proposals/{id}/reject/"): Rule(
        row="proposal", body=lambda p, r: {"reason": "Not a task"}, may=REVIEWS
    ),
    ("POST", "/api/v1/proposals/{id}/reopen/"): Rule(row="rejected", body=lambda p, r: {}, may=REVIEWS),
    ("POST", "/api/v1/proposals/{id}/split/"): Rule(row="proposal", body=_split, may=REVIEWS, ok=201),
    ("POST", "/api/v1/proposals/{id}/undo/"): Rule(row="rejected", body=lambda p, r: {}, may=REVIEWS),
    # A bulk review reports each proposal it refuses, as one of no project the user is on.
    ("POST", "/api/v1/proposals/bulk/"): Rule(
        body=lambda p, r: {"proposal_ids": [p.proposal.pk], "action": "approve"},
        may=REVIEWS,
        unknown={"member": 403, "reviewer": 200, "lead": 200, "outsider": 403},
    ),
    ("POST", "/api/v1/proposals/merge/"): Rule(
        body=lambda p, r: {"proposal_ids": [p.proposal.pk, p.second_proposal.pk]}, may=REVIEWS
    ),
    ("GET", "/api/v1/runs/"): Rule(lists="run"),
    # A project the user is not on is no valid choice: a 400 naming the field.
    ("POST", "/api/v1/runs/"): Rule(body=_run, may=LEADS, ok=201, unknown=400),
    ("GET", "/api/v1/runs/{id}/"): Rule(row="run"),
    ("GET", "/api/v1/runs/{id}/batches/"): Rule(row="failed_run"),
    ("POST", "/api/v1/runs/{id}/cancel/"): Rule(row="run", body=lambda p, r: {}, may=LEADS),
    ("POST", "/api/v1/runs/{id}/close/"): Rule(row="completed_run", body=lambda p, r: {}, may=LEADS),
    ("POST", "/api/v1/runs/{id}/requeue-stalled/"): Rule(
        row="stalled_run", body=lambda p, r: {}, may=LEADS, ok=202
    ),
    ("POST", "/api/v1/runs/{id}/retry/"): Rule(row="failed_run", body=lambda p, r: {}, may=LEADS, ok=202),
    ("GET", "/api/v1/tasks/"): Rule(lists="task"),
    ("GET", "/api/v1/tasks/{id}/"): Rule(row="task"),
    ("PATCH", "/api/v1/tasks/{id}/"): Rule(row="task", body=lambda p, r: {"status": "in_progress"}),
    # Webhooks are configuration: only leads see them.
    ("GET", "/api/v1/webhooks/"): Rule(lists="webhook", seen_by=LEADS),
    ("POST", "/api/v1/webhooks/"): Rule(
        body=lambda p, r: {"project": p.project.pk, "url": "https://hooks.example.com/new"},
        may=LEADS,
        ok=201,
        unknown=400,
    ),
    ("GET", "/api/v1/webhooks/{id}/"): Rule(row="webhook", seen_by=LEADS),
    ("DELETE", "/api/v1/webhooks/{id}/"): Rule(
        row="webhook", body=lambda p, r: {}, may=LEADS, seen_by=LEADS, ok=204
    ),
    ("GET", "/api/v1/webhooks/{id}/deliveries/"): Rule(row="webhook", seen_by=LEADS),
}

# Providers, agents, task configs and assignments belong to no project: staff only (their
# own tests, tests/agents, cover what staff do with them).
STAFF_ONLY_PREFIXES = (
    "/api/v1/providers/",
    "/api/v1/agents/",
    "/api/v1/task-configs/",
    "/api/v1/assignments/",
)


def _schema_operations() -> list[tuple[str, str]]:
    # Collected before the test database exists: the schema generator reads no rows.
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/api/")
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    ]


OPERATIONS = _schema_operations()


def test_every_api_operation_is_described() -> None:
    undescribed = [op for op in OPERATIONS if op not in API and not op[1].startswith(STAFF_ONLY_PREFIXES)]
    assert undescribed == [], "Say who may do these in API (or STAFF_ONLY_PREFIXES)."
    assert set(API) <= set(OPERATIONS), "API describes operations the schema no longer has."


# One client per role for the module: a new client loads the middleware again, and the
# static files middleware reads every static file when it loads (a tenth of a second).


@pytest.fixture(scope="module")
def api_clients(rows: Any) -> dict[str, APIClient]:
    clients = {}
    for role in ROLES:
        clients[role] = APIClient()
        clients[role].force_authenticate(rows.users[role])
    return clients


@pytest.fixture(scope="module")
def page_clients() -> dict[str, Client]:
    return {role: Client() for role in ROLES}


@pytest.fixture
def signed_in(rows: Any, page_clients: dict[str, Client]) -> Callable[[str], Client]:
    """The role's page client, signed in (its session is gone with the test's transaction)."""

    def sign_in(role: str) -> Client:
        page_clients[role].force_login(rows.users[role])
        return page_clients[role]

    return sign_in


def _path(path: str, rule: Rule, project: Any) -> str:
    row = getattr(project, rule.row) if rule.row else None
    return (
        path.replace("{id}", str(row.pk) if row is not None else "")
        .replace("{slug}", project.project.slug)
        .replace("{version}", "1.0.0")
    )


def _api_cases() -> list[Any]:
    cases = []
    for method, path in OPERATIONS:
        rule = API.get((method, path))
        if rule is None:
            continue
        for target in ("a",) if rule.one_target else ("a", "b"):
            for role in ROLES:
                cases.append(pytest.param(method, path, target, role, id=f"{method} {path} {target} {role}"))
    return cases


def _ids(body: Any) -> set[Any]:
    items = body["results"] if isinstance(body, dict) else body
    return {item["id"] for item in items}


@pytest.mark.parametrize(("method", "path", "target", "role"), _api_cases())
def test_the_api_answers_each_role(
    rows: Any, api_clients: dict[str, APIClient], method: str, path: str, target: str, role: str
) -> None:
    rule = API[(method, path)]
    project = side(rows, target)
    client = api_clients[role]
    url = _path(path, rule, project)

    if rule.lists:
        response = client.get(url)
        assert response.status_code == 200
        listed = getattr(project, rule.lists).pk in _ids(response.json())
        assert listed == (role == "staff" or (target == "a" and role in rule.seen_by))
        return
    if rule.body is None:
        assert client.get(url).status_code == rule.expected(target, role)
        return
    before = fingerprint()
    body = json.dumps(rule.body(project, rows))
    response = client.generic(method, url, data=body, content_type="application/json")
    assert response.status_code == rule.expected(target, role), response.content[:300]
    # A write refused changes nothing; one allowed changes something (its body is a real one).
    assert (fingerprint() == before) == (not rule.allowed(target, role))


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        pytest.param(method, path, role, id=f"{method} {path} {role}")
        for method, path in OPERATIONS
        if path.startswith(STAFF_ONLY_PREFIXES)
        for role in ROLES
        if role != "staff"
    ],
)
def test_providers_and_agents_are_staffs_only(
    rows: Any, api_clients: dict[str, APIClient], method: str, path: str, role: str
) -> None:
    ids = {
        "/api/v1/providers/": rows.assignment.agent.provider_id,
        "/api/v1/agents/": rows.assignment.agent_id,
        "/api/v1/task-configs/": rows.assignment.task_config_id,
        "/api/v1/assignments/": rows.assignment.pk,
    }
    prefix = next(p for p in STAFF_ONLY_PREFIXES if path.startswith(p))
    before = fingerprint()

    response = api_clients[role].generic(
        method, path.replace("{id}", str(ids[prefix])), data="{}", content_type="application/json"
    )

    assert response.status_code == 403
    assert fingerprint() == before


# Pages


def _edit_project(client: Client, project: Any, rows: Any) -> dict[str, Any]:
    """The configuration page's form as it is, with a new description: what saving it sends."""
    response = client.get(reverse("projects:project-edit", args=[project.project.slug]))
    if response.status_code != 200:
        return {"description": "Changed"}
    return {**form_data(response), "description": "Changed"}


def _edit_proposal(client: Client, project: Any, rows: Any) -> dict[str, Any]:
    return {"title": "Edited", "description": "", "priority": "medium", "category": "feature", "tags": ""}


def _split_page(client: Client, project: Any, rows: Any) -> dict[str, Any]:
    sources = list(project.proposal.source_messages.values_list("pk", flat=True))
    return {
        "part-TOTAL_FORMS": "2",
        "part-INITIAL_FORMS": "0",
        **{f"part-{n}-title": f"Part {n}" for n in range(2)},
        **{f"part-{n}-sources": sources for n in range(2)},
    }


def _new_run(client: Client, project: Any, rows: Any) -> dict[str, Any]:
    return {
        "projects": [project.project.pk],
        "assignment": rows.assignment.pk,
        "window_start": "2020-01-01T00:00",
        "window_end": "2020-01-02T00:00",
    }


@dataclass(frozen=True)
class PageRule(Rule):
    """A page: `data(client, project rows, rows)` is the POST's form data. A list page
    (`lists`) answers 200 to the roles in `may` and shows a row by its `marker`."""

    data: Callable[[Client, Any, Any], dict[str, Any]] | None = None
    marker: Callable[[Any], str] | None = None


def _run_link(row: Any) -> str:
    return reverse("analysis:run-detail", args=[row.pk])


CANNOT_START = {"member": 403, "reviewer": 403, "outsider": 403, "lead": 400}
PAGES: dict[tuple[str, str], PageRule] = {
    ("analysis:run-list", "GET"): PageRule(lists="run", marker=_run_link, may=EVERYONE),
    ("analysis:run-new", "GET"): PageRule(may=LEADS, unknown={**CANNOT_START, "lead": 200}, one_target=True),
    # A lead picking a project they do not lead gets the form back, with its error.
    ("analysis:run-new", "POST"): PageRule(data=_new_run, may=LEADS, ok=302, unknown=CANNOT_START),
    ("analysis:run-detail", "GET"): PageRule(row="run"),
    ("analysis:run-state", "GET"): PageRule(row="run"),
    ("analysis:run-cancel", "POST"): PageRule(row="run", data=lambda c, p, r: {}, may=LEADS, ok=302),
    ("analysis:run-retry", "POST"): PageRule(row="failed_run", data=lambda c, p, r: {}, may=LEADS, ok=302),
    ("analysis:run-close", "GET"): PageRule(row="completed_run", may=LEADS),
    ("analysis:run-requeue", "POST"): PageRule(row="stalled_run", data=lambda c, p, r: {}, may=LEADS, ok=302),
    ("analysis:run-close", "POST"): PageRule(row="completed_run", data=lambda c, p, r: {}, may=LEADS, ok=302),
    ("projects:project-list", "GET"): PageRule(
        lists="project", marker=lambda row: reverse("projects:project-detail", args=[row.slug]), may=EVERYONE
    ),
    ("projects:project-new", "GET"): PageRule(may=NOBODY, unknown=403, one_target=True),
    ("projects:project-new", "POST"): PageRule(
        data=lambda c, p, r: {"name": "Zulu"}, may=NOBODY, ok=302, unknown=403, one_target=True
    ),
    ("projects:project-detail", "GET"): PageRule(row="project"),
    ("projects:project-edit", "GET"): PageRule(row="project", may=LEADS),
    ("projects:project-edit", "POST"): PageRule(row="project", data=_edit_project, may=LEADS, ok=302),
    ("projects:project-history", "GET"): PageRule(row="project"),
    ("projects:project-tasks", "GET"): PageRule(row="project"),
    # Anyone on the project moves its tasks (a member too); the list it returns to is theirs.
    ("projects:task-update", "POST"): PageRule(
        row="task", data=lambda c, p, r: {f"t{p.task.pk}-status": "in_progress"}, ok=302
    ),
    ("projects:project-rollback", "POST"): PageRule(
        row="project", data=lambda c, p, r: {"version": "1.0.0"}, may=LEADS, ok=302
    ),
    # Someone who reviews no project gets a page saying who does (a 403).
    # The queue shows one proposal at a time; the projects it offers to filter by are those
    # whose proposals it holds.
    ("proposals:queue", "GET"): PageRule(
        lists="project", marker=lambda row: f'<option value="{row.pk}">{row.name}</option>', may=REVIEWS
    ),
    ("proposals:queue-state", "GET"): PageRule(may=REVIEWS, unknown=403, one_target=True),
    ("proposals:proposal", "GET"): PageRule(row="proposal", may=REVIEWS),
    ("proposals:approve", "POST"): PageRule(row="proposal", data=lambda c, p, r: {}, may=REVIEWS, ok=302),
    ("proposals:reject", "POST"): PageRule(
        row="proposal", data=lambda c, p, r: {"reason": "Not a task"}, may=REVIEWS, ok=302
    ),
    ("proposals:edit", "GET"): PageRule(row="proposal", may=REVIEWS),
    ("proposals:edit", "POST"): PageRule(row="proposal", data=_edit_proposal, may=REVIEWS, ok=302),
    ("proposals:merge", "POST"): PageRule(row="proposal", data=lambda c, p, r: {}, may=REVIEWS, ok=302),
    ("proposals:undo", "POST"): PageRule(row="rejected", data=lambda c, p, r: {}, may=REVIEWS, ok=302),
    ("proposals:split", "GET"): PageRule(row="proposal", may=REVIEWS),
    ("proposals:split", "POST"): PageRule(row="proposal", data=_split_page, may=REVIEWS, ok=302),
    ("proposals:duplicate", "GET"): PageRule(row="proposal", may=REVIEWS),
    ("proposals:duplicate", "POST"): PageRule(
        row="proposal", data=lambda c, p, r: {"of": f"task-{p.task.pk}"}, may=REVIEWS, ok=302
    ),
}

# Pages that show no row of a project, each with why.
PUBLIC_PAGES = {
    "": "redirects to the run list",
    "healthz": "says whether the database, Redis and a worker answer; no rows",
    "sources:telegram-webhook": "Telegram's webhook: checked by its secret token, not a user's role",
    "api-schema": "the API's description; no rows",
    "api-docs": "the API's documentation page; no rows",
    "login": "Django's sign-in pages (accounts/)",
    "logout": "Django's sign-in pages (accounts/)",
    "password_change": "Django's sign-in pages (accounts/)",
    "password_change_done": "Django's sign-in pages (accounts/)",
    "password_reset": "Django's sign-in pages (accounts/)",
    "password_reset_done": "Django's sign-in pages (accounts/)",
    "password_reset_confirm": "Django's sign-in pages (accounts/)",
    "password_reset_complete": "Django's sign-in pages (accounts/)",
    "rest_framework:login": "the browsable API's sign-in pages",
    "rest_framework:logout": "the browsable API's sign-in pages",
}
# Covered by their own matrices: the API (from its schema) and the admin (from its registry).
COVERED_ELSEWHERE = ("api/v1/", "admin/")


def _url_names(patterns: list[Any], prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = (
                f"{namespace}:{pattern.namespace}" if namespace and pattern.namespace else pattern.namespace
            )
            yield from _url_names(pattern.url_patterns, route, inner or namespace)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else (pattern.name or "")
            yield route, name


PAGE_URLS = [
    (route, name)
    for route, name in _url_names(get_resolver().url_patterns)
    if not route.startswith(COVERED_ELSEWHERE)
]


def test_every_page_is_described() -> None:
    described = {name for name, _ in PAGES}
    undescribed = [
        (route, name) for route, name in PAGE_URLS if name not in described and name not in PUBLIC_PAGES
    ]
    assert undescribed == [], "Say who may see these pages in PAGES (or why they are public in PUBLIC_PAGES)."
    assert described <= {name for _, name in PAGE_URLS}, "PAGES describes pages the URLs no longer have."


def _page_url(name: str, rule: PageRule, project: Any) -> str:
    if rule.row is None:
        return reverse(name)
    if rule.row == "project":
        return reverse(name, args=[project.project.slug])
    return reverse(name, args=[getattr(project, rule.row).pk])


def _page_cases() -> list[Any]:
    return [
        pytest.param(name, method, target, role, id=f"{method} {name} {target} {role}")
        for (name, method), rule in PAGES.items()
        for target in (("a",) if rule.one_target else ("a", "b"))
        for role in ROLES
    ]


@pytest.mark.parametrize(("name", "method", "target", "role"), _page_cases())
def test_the_pages_answer_each_role(
    rows: Any, signed_in: Callable[[str], Client], name: str, method: str, target: str, role: str
) -> None:
    rule = PAGES[(name, method)]
    project = side(rows, target)
    client = signed_in(role)
    url = _page_url(name, rule, project)

    if rule.lists:
        response = client.get(url)
        expected = 200 if role == "staff" or role in rule.may else rule.refused
        assert response.status_code == expected
        if expected == 200:
            html = response.content.decode()
            shown = rule.marker(getattr(project, rule.lists)) in html
            assert shown == (role == "staff" or (target == "a" and role in rule.seen_by))
        return
    if method == "GET":
        assert client.get(url).status_code == rule.expected(target, role)
        return
    data = rule.data(client, project, rows)
    before = fingerprint()
    response = client.post(url, data)
    assert response.status_code == rule.expected(target, role)
    assert (fingerprint() == before) == (not rule.allowed(target, role))


# The admin: only staff reach it, and its querysets ask `projects.access` all the same.

ADMIN_ROWS: dict[type, str | None] = {
    Chat: "chat",
    Message: "message",
    MessageEdit: "message_edit",
    Project: "project",
    ProjectMembership: "membership",
    apps.get_model("projects", "ProjectConfig"): "config",
    Task: "task",
    WebhookEndpoint: "webhook",
    WebhookDelivery: "delivery",
    AnalysisRun: "run",
    Batch: "batch",
    TaskProposal: "proposal",
    ReviewEvent: "event",
}
# Rows of no project, each with why; their admin pages are staff's like the others.
ADMIN_GLOBAL = {
    LLMProvider: "providers belong to no project: staff only",
    Agent: "agents belong to no project: staff only",
    TaskConfig: "task configs belong to no project: staff only",
    AgentTaskAssignment: "assignments belong to no project: staff only",
    TelegramUpdate: "the Bot API's bookkeeping: update ids, no content",
    PollingState: "the Bot API's bookkeeping: where polling stands",
}
REGISTERED = [model for model in admin.site._registry if model._meta.app_label in APPS]


def test_every_admin_is_described() -> None:
    undescribed = [model for model in REGISTERED if model not in ADMIN_ROWS and model not in ADMIN_GLOBAL]
    assert undescribed == [], "Say which row of a project each admin shows in ADMIN_ROWS (or ADMIN_GLOBAL)."


def _admin_cases() -> list[Any]:
    return [
        pytest.param(model, page, role, id=f"{model._meta.label} {page} {role}")
        for model in REGISTERED
        if model in ADMIN_ROWS
        for page in ("changelist", "change")
        for role in ROLES
    ]


@pytest.mark.parametrize(("model", "page", "role"), _admin_cases())
def test_only_staff_reach_the_admin(
    rows: Any, signed_in: Callable[[str], Client], model: type, page: str, role: str
) -> None:
    row = getattr(rows.b, ADMIN_ROWS[model])
    info = model._meta.app_label, model._meta.model_name
    url = (
        reverse("admin:{}_{}_changelist".format(*info))
        if page == "changelist"
        else reverse("admin:{}_{}_change".format(*info), args=[row.pk])
    )
    response = signed_in(role).get(url)

    if role == "staff":
        assert response.status_code == 200
    else:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize(
    ("model", "role"),
    [
        pytest.param(model, role, id=f"{model._meta.label} {role}")
        for model in REGISTERED
        if model in ADMIN_ROWS
        for role in ROLES
    ],
)
def test_the_admins_querysets_hold_the_rows_a_user_sees(rows: Any, model: type, role: str) -> None:
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/admin/")
    request.user = rows.users[role]
    attribute = ADMIN_ROWS[model]
    alpha, bravo = getattr(rows.a, attribute), getattr(rows.b, attribute)
    sees_alpha = role == "staff" or role in (
        LEADS if model in (WebhookEndpoint, WebhookDelivery) else ON_ALPHA
    )

    shown = set(model_admin.get_queryset(request).values_list("pk", flat=True))

    assert (bravo.pk in shown) == (role == "staff")
    assert (alpha.pk in shown) == sees_alpha
    if role != "staff":
        assert not model_admin.has_change_permission(request, bravo)


# WebSockets: the consumers are reached with the user already in the scope (the session
# middleware is Channels', tested in tests/foundation/test_websocket.py).


class WithUser:
    def __init__(self, user: Any, application: Any) -> None:
        self.user, self.application = user, application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        return await self.application({**scope, "user": self.user}, receive, send)


WEBSOCKETS = {
    "ws/runs/<int:run_id>/": "test_a_run_streams_to_who_sees_it",
    "ws/review/": "test_the_live_queue_tells_reviewers_of_their_projects_only",
}


def test_every_websocket_route_is_described() -> None:
    assert sorted(str(p.pattern) for p in websocket_urlpatterns) == sorted(WEBSOCKETS)


@pytest.fixture
async def close_thread_connections() -> AsyncIterator[None]:
    # The consumers reach the database from asgiref's thread; close its connection, or it
    # keeps the test database open past the session (PostgreSQL refuses to drop it then).
    yield
    await sync_to_async(connections.close_all)()


async def _open(user: Any, path: str) -> tuple[WebsocketCommunicator, bool]:
    communicator = WebsocketCommunicator(WithUser(user, URLRouter(websocket_urlpatterns)), path)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


@pytest.mark.parametrize("target", ["a", "b"])
@pytest.mark.parametrize("role", ROLES)
async def test_a_run_streams_to_who_sees_it(
    rows: Any, role: str, target: str, close_thread_connections
) -> None:
    run = side(rows, target).run
    communicator, connected = await _open(rows.users[role], f"/ws/runs/{run.pk}/")

    assert connected == (role == "staff" or (target == "a" and role in ON_ALPHA))
    await communicator.disconnect()


@pytest.mark.parametrize("role", ROLES)
async def test_the_live_queue_tells_reviewers_of_their_projects_only(
    rows: Any, role: str, close_thread_connections
) -> None:
    communicator, connected = await _open(rows.users[role], "/ws/review/")

    assert connected == (role == "staff" or role in REVIEWS)
    if not connected:
        return
    layer = get_channel_layer()
    for project in (rows.b, rows.a):
        event = {
            "type": "realtime.event",
            "event": "proposal_reviewed",
            "seq": 0,
            "data": {"id": project.proposal.pk},
        }
        await layer.group_send(f"proposals-{project.project.pk}", event)
    heard = [(await communicator.receive_json_from(timeout=5))["data"]["id"]]
    if role == "staff":
        heard.append((await communicator.receive_json_from(timeout=5))["data"]["id"])
    assert await communicator.receive_nothing(timeout=0.1)
    expected = [rows.b.proposal.pk, rows.a.proposal.pk] if role == "staff" else [rows.a.proposal.pk]
    assert heard == expected
    await communicator.disconnect()
