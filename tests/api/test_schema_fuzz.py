"""Schemathesis over the whole `/api/v1/` schema: no 5xx, and every documented response fits it.

The schema is the one `/api/schema/` serves, loaded from the WSGI application in-process at
collection. Each operation is a test of its own (`test_api_fits_its_schema[GET /api/v1/runs/]`)
that sends a bounded number of generated requests, valid and invalid, as a staff superuser
with a token. Two thirds of the ids in paths are swapped for seeded rows' ids, so detail
endpoints and actions are reached, not only their 404.
"""

import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from rest_framework.views import APIView
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from agents.models import Agent
from analysis.models import AnalysisRun
from projects.models import ProjectMembership
from proposals.models import TaskProposal
from tasktracker.wsgi import application
from tests.factories import (
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    BatchFactory,
    ChatFactory,
    MessageEditFactory,
    MessageFactory,
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    ReviewEventFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
    WebhookDeliveryFactory,
    WebhookEndpointFactory,
)

# On both databases CI tests: SQLite and PostgreSQL refuse different inputs (an id beyond
# int64, a NUL character in text), and each must answer them with a 400, not a 500.
pytestmark = pytest.mark.django_db

# Examples per operation in the fuzzing phase; the coverage phase adds its own boundary
# cases (a few to a few dozen per operation). A fixed seed: CI fails on a change of the
# code, not on the luck of the draw. Change it, or raise MAX_EXAMPLES, to look further.
MAX_EXAMPLES = 8
SEED = 20261125

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            # No example database: a run depends on the seed alone, not on earlier runs.
            "database": "none",
            # The token header is the test's; random Authorization headers only give 401s.
            "with-security-parameters": False,
        },
        # Stateful scenarios would chain operations through links the schema does not declare.
        "phases": {"stateful": {"enabled": False}},
    }
)
CHECKS = [not_a_server_error, response_schema_conformance]


SERVED = schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)
schema = SERVED.exclude(
    # These call the LLM provider (a remote host) and wait up to its timeout: the agents
    # and providers tests cover them against a fake server on loopback.
    path_regex=r"^/api/v1/(agents/\{id\}/test|providers/\{id\}/(check|models))/$",
)
schema.app = application


@pytest.fixture
def seeded(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A staff superuser's token and a row or more behind every kind of path id, with the
    optional fields both set and empty."""
    # Throttle classes are read into APIView when DRF is imported, so overriding the
    # settings would not reach them; the fuzz sends hundreds of requests a minute.
    monkeypatch.setattr(APIView, "throttle_classes", [])

    user = UserFactory(is_staff=True, is_superuser=True)
    chat = ChatFactory(username="team_chat")
    ChatFactory(is_active=False)
    messages = MessageFactory.create_batch(4, chat=chat)
    MessageEditFactory(message=messages[0])
    project = ProjectFactory(default_assignee=user)
    ProjectConfigFactory(project=project, is_current=False, major=0, minor=9, author=user)
    ProjectConfigFactory(project=project, chats=[chat])
    ProjectMembershipFactory(project=project, user=user, role=ProjectMembership.Role.LEAD)
    ProjectMembershipFactory(project=project)
    tasks = [TaskFactory(project=project, assignee=user), TaskFactory(project=project)]
    webhook = WebhookEndpointFactory(project=project)
    WebhookDeliveryFactory(endpoint=webhook)
    assignment = AgentTaskAssignmentFactory()
    running = AnalysisRunFactory(assignment=assignment, projects=[project], chats=[chat], started_by=user)
    completed = AnalysisRunFactory(
        assignment=assignment, projects=[project], status=AnalysisRun.Status.COMPLETED
    )
    BatchFactory(run=running, message_ids=[m.pk for m in messages[:2]])
    first = TaskProposalFactory(run=completed, project=project, source_messages=messages[:2])
    proposals = [
        first,
        TaskProposalFactory(
            run=completed,
            project=project,
            source_messages=messages[1:3],
            similar_proposal=first,
            similarity_score=0.5,
            similarity_kind=TaskProposal.SimilarityKind.OVERLAPPING_MESSAGES,
        ),
        TaskProposalFactory(
            run=running,
            project=project,
            source_messages=messages[3:],
            similar_task=tasks[0],
            similarity_score=0.9,
            similarity_kind=TaskProposal.SimilarityKind.SIMILAR_TITLE,
            suggested_assignee=user,
        ),
    ]
    ReviewEventFactory(proposal=TaskProposalFactory(run=completed, project=project), user=user)
    agent = Agent.objects.get(pk=assignment.agent_id)

    # Requests go through the WSGI handler, not Django's test client: like the client, keep
    # the handler from closing the connection that holds the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield {
        "token": Token.objects.create(user=user).key,
        "ids": {
            "agents": [agent.pk],
            "assignments": [assignment.pk],
            "chats": [chat.pk],
            "messages": [m.pk for m in messages],
            "projects": [project.slug],
            "proposals": [p.pk for p in proposals],
            "providers": [agent.provider_id],
            "runs": [running.pk, completed.pk],
            "task-configs": [assignment.task_config_id],
            "tasks": [t.pk for t in tasks],
            "webhooks": [webhook.pk],
        },
    }
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _point_at_seeded_rows(case: schemathesis.Case, ids: dict[str, list[Any]]) -> None:
    """Swap two thirds of the generated path ids for seeded ones, chosen from the generated
    value so that a failing case replays and shrinks the same."""
    resource = case.operation.path.split("/")[3]
    for name, value in (case.path_parameters or {}).items():
        pick = zlib.crc32(repr(value).encode())
        if pick % 3 == 0:
            continue
        if name == "version":
            case.path_parameters[name] = "1.0.0"
        elif name in ("id", "slug") and resource in ids:
            case.path_parameters[name] = ids[resource][pick % len(ids[resource])]


@schema.parametrize()
# The seeded rows are shared by an operation's examples on purpose: what one example
# changes, the next one meets, as on a server. All of it is rolled back after the operation.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_api_fits_its_schema(case: schemathesis.Case, seeded: dict[str, Any]) -> None:
    _point_at_seeded_rows(case, seeded["ids"])
    case.call_and_validate(headers={"Authorization": f"Token {seeded['token']}"}, checks=CHECKS)
