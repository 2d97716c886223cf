"""The web server of production and `make run` (uvicorn with several worker processes, as
`tasktracker.embedded.web_server_command` starts it) serves Django's pages and Channels'
WebSockets, and a group event sent from another process reaches a socket of any worker."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import Client
from websockets.sync.client import connect

from conftest import BASE_DIR, database_url_of_test_db
from projects.models import ProjectMembership
from proposals.consumers import proposal_group
from tasktracker.embedded import free_port, web_server_command
from tasktracker.realtime import broadcast
from tests.factories import ProjectFactory, ProjectMembershipFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
WORKERS = 2


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:  # /healthz answers 503 without a Celery worker
        return error.code, error.read()


@pytest.fixture(scope="module")
def server(django_db_setup: None) -> Iterator[str]:
    """uvicorn on a free port, on the test database and the tests' Redis; its base URL.

    One server for the module: its start (two worker processes importing Django) cost more
    than either test. The tests share no rows through it: each commits its own, and the
    flush after a test empties the tables the server reads."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,  # the sessions the tests make must validate there
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        web_server_command("127.0.0.1", port, workers=WORKERS),
        env=env,
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{url}/healthz")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    output = process.communicate()[0].decode(errors="replace")
                    pytest.fail(f"uvicorn did not start:\n{output[-3000:]}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_server_answers_healthz_from_django(server: str) -> None:
    status, body = get(f"{server}/healthz")

    checks = json.loads(body)["checks"]
    assert status in (200, 503)  # 503 here: no Celery worker runs for this test
    assert checks["database"]["ok"]
    assert checks["redis"]["ok"]


def test_a_review_queue_socket_through_the_server_receives_a_group_event(server: str) -> None:
    lead = UserFactory()
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=lead, role=ProjectMembership.Role.LEAD)
    client = Client()
    client.force_login(lead)
    host = server.removeprefix("http://")
    headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}", "Origin": server}

    with connect(f"ws://{host}/ws/review/", additional_headers=headers, open_timeout=10) as socket:
        # The consumer joins its groups before it accepts: once open, the event reaches it.
        broadcast(proposal_group(project.pk), "proposal_reviewed", {"id": 1, "status": "approved"}, seq=1)
        event = json.loads(socket.recv(timeout=10))

    assert event == {"event": "proposal_reviewed", "seq": 1, "data": {"id": 1, "status": "approved"}}


def test_api_requests_share_the_processes_redis_connections(server: str) -> None:
    """The throttles keep their windows in Redis on every API request: one connection pool per
    process serves them, not a connection per request (Django's cache object is made anew
    in each ASGI request's context)."""
    import redis
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=UserFactory()).key
    stats = redis.Redis.from_url(settings.REDIS_URL)

    def api_get() -> int:
        request = urllib.request.Request(
            f"{server}/api/v1/projects/", headers={"Authorization": f"Token {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    assert {api_get() for _ in range(4)} == {200}  # each worker has connected by now, or soon
    before = stats.info("stats")["total_connections_received"]
    assert {api_get() for _ in range(12)} == {200}
    after = stats.info("stats")["total_connections_received"]

    assert after - before <= WORKERS
