"""A WebSocket round trip through the real channel layer (Redis)."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.utils import timezone

from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from analysis.consumers import run_group
from analysis.models import AnalysisRun
from projects.models import Project, ProjectMembership
from proposals.consumers import proposal_group
from tasktracker.asgi import application
from tasktracker.realtime import broadcast

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]
ORIGIN = (b"origin", b"http://localhost")


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    # Consumers reach the database from asgiref's shared thread; close its connection or it
    # keeps the test database open past the session (PostgreSQL refuses to drop it then).
    yield
    await sync_to_async(connections.close_all)()


def make_run(member_username: str) -> tuple[AnalysisRun, str]:
    user = get_user_model().objects.create_user(member_username, password="pw-123456789")
    project = Project.objects.create(name="Acme", slug="acme")
    ProjectMembership.objects.create(project=project, user=user)
    provider = LLMProvider.objects.create(name="p", base_url="http://127.0.0.1:9/v1")
    agent = Agent.objects.create(name="a", provider=provider, model="m")
    task_config = TaskConfig.objects.create(name="c", instructions="i", response_schema={"type": "object"})
    assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=task_config)
    now = timezone.now()
    run = AnalysisRun.objects.create(
        assignment=assignment, window_start=now - timedelta(days=1), window_end=now
    )
    run.projects.add(project)
    client = Client()
    client.force_login(user)
    return run, client.cookies["sessionid"].value


def make_outsider_session() -> str:
    get_user_model().objects.create_user("outsider", password="pw-123456789")
    client = Client()
    client.login(username="outsider", password="pw-123456789")
    return client.cookies["sessionid"].value


def make_run_led_by(lead_username: str) -> tuple[AnalysisRun, int, str]:
    """A run whose project the user leads, so one session may open both sockets."""
    run, session = make_run(lead_username)
    membership = ProjectMembership.objects.get(user__username=lead_username)
    membership.role = ProjectMembership.Role.LEAD
    membership.save(update_fields=["role"])
    return run, membership.project_id, session


async def connect(run_id: int, session: str | None, origin: tuple[bytes, bytes] = ORIGIN) -> tuple:
    return await open_socket(f"/ws/runs/{run_id}/", session, origin)


async def open_socket(path: str, session: str | None, origin: tuple[bytes, bytes] = ORIGIN) -> tuple:
    headers = [origin]
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def test_a_team_member_receives_numbered_run_events_in_order() -> None:
    run, session = await sync_to_async(make_run)("member")
    communicator, connected, _ = await connect(run.pk, session)
    assert connected
    for seq in (1, 2):
        await sync_to_async(broadcast)(run_group(run.pk), "progress_updated", {"batches_done": seq}, seq=seq)
    first = await communicator.receive_json_from(timeout=5)
    second = await communicator.receive_json_from(timeout=5)
    assert first == {"event": "progress_updated", "seq": 1, "data": {"batches_done": 1}}
    assert second["seq"] == 2
    await communicator.disconnect()


async def test_anonymous_users_are_refused() -> None:
    run, _ = await sync_to_async(make_run)("member")
    _, connected, code = await connect(run.pk, None)
    assert not connected
    assert code == 4403


async def test_users_outside_the_runs_projects_are_refused() -> None:
    run, _ = await sync_to_async(make_run)("member")
    session = await sync_to_async(make_outsider_session)()
    _, connected, code = await connect(run.pk, session)
    assert not connected
    assert code == 4403


async def test_a_foreign_origin_is_refused() -> None:
    run, session = await sync_to_async(make_run)("member")
    _, connected, _ = await connect(run.pk, session, origin=(b"origin", b"http://evil.example"))
    assert not connected


# Four of channels-redis's 5 s blocking reads (`RedisChannelLayer.brpop_timeout`): each one
# crashed an idle consumer while redis-py's read timeout equalled it. The other timers on
# the path are far longer (TCP keepalive, the layer's day-long group expiry): a minute's
# wait would not reach them either.
IDLE_SECONDS = 4 * RedisChannelLayer.brpop_timeout


async def test_idle_sockets_stay_open_and_still_receive_events_over_several_blocking_reads() -> None:
    # A consumer waits for events in a BZPOPMIN that channels-redis blocks for 5 s; with
    # redis-py 8's default 5 s read timeout every idle consumer crashed after about 5 s.
    # Both sockets idle at once, so the wait is spent once.
    run, project_id, session = await sync_to_async(make_run_led_by)("lead")
    run_socket, run_connected, _ = await open_socket(f"/ws/runs/{run.pk}/", session)
    queue_socket, queue_connected, _ = await open_socket("/ws/review/", session)
    assert run_connected
    assert queue_connected

    idle = await asyncio.gather(
        run_socket.receive_nothing(timeout=IDLE_SECONDS, interval=0.5),
        queue_socket.receive_nothing(timeout=IDLE_SECONDS, interval=0.5),
    )
    assert idle == [True, True]  # no close and no stray frame while idle
    # A consumer that crashed meanwhile raises its error here (receive_nothing checks first).
    assert await run_socket.receive_nothing()
    assert await queue_socket.receive_nothing()

    await sync_to_async(broadcast)(run_group(run.pk), "progress_updated", {"batches_done": 1}, seq=1)
    reviewed = {"id": 7, "status": "approved", "action": "approve"}
    await sync_to_async(broadcast)(proposal_group(project_id), "proposal_reviewed", reviewed, seq=2)
    assert await run_socket.receive_json_from(timeout=5) == {
        "event": "progress_updated",
        "seq": 1,
        "data": {"batches_done": 1},
    }
    assert await queue_socket.receive_json_from(timeout=5) == {
        "event": "proposal_reviewed",
        "seq": 2,
        "data": reviewed,
    }
    await run_socket.disconnect()
    await queue_socket.disconnect()
