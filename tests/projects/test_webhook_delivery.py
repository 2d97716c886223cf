"""Webhook deliveries: each attempt is claimed before it is sent, so a duplicate of a delivery
sends nothing; Celery retries a failed attempt with backoff and gives up after the last; a
refusal or a redirect is not retried; the API and the admin save endpoints through the same
services.

Receivers are real HTTP servers on loopback; retries run on a real Celery worker whose
backoff is one second and whose deliveries may reach 127.0.0.1.
"""

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from conftest import WorkerProcess
from projects.models import ProjectMembership, WebhookDelivery, WebhookEndpoint
from projects.services import update_task
from projects.tasks import deliver_webhook_task
from projects.webhooks import claim_delivery, deliver
from tasktracker.celery import app as celery_app
from tests.factories import (
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    WebhookDeliveryFactory,
    WebhookEndpointFactory,
)

pytestmark = pytest.mark.django_db

# What the worker of these tests is started with.
WORKER_ENV = {
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "WEBHOOK_RETRY_BACKOFF_SECONDS": "1",
    "WEBHOOK_MAX_ATTEMPTS": "3",
}


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers each with the next of
    `statuses` (the last one again once they run out). While `hold` is clear, a request
    waits for it before it is answered; `arrived` is set by the first request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.statuses = [200]
        self.arrived = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    receiver.requests.append(dict(self.headers))
                    status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
                receiver.arrived.set()
                receiver.hold.wait(20)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.hold.set()
    receiver.server.shutdown()


@pytest.fixture(autouse=True)
def _receivers_on_loopback_are_allowed(settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture(scope="module")
def retrying_worker(worker_process: WorkerProcess) -> Iterator[WorkerProcess]:
    """A worker of its own, started with `WORKER_ENV`; the session's worker is stopped so
    that it takes none of these tasks (`live_worker` starts it again for later tests)."""
    worker_process.stop()
    celery_app.control.purge()
    worker = WorkerProcess(f"webhook-worker-{os.getpid()}@localhost", {**worker_process.env, **WORKER_ENV})
    worker.start()
    yield worker
    celery_app.control.purge()
    worker.stop()


@pytest.fixture
def worker(retrying_worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """The retrying worker, idle before and after the test: no task of one test (a retry
    waiting for its time included) may take a row of the next, which may have its id."""
    celery_app.control.purge()
    yield retrying_worker
    celery_app.control.purge()
    inspect = celery_app.control.inspect([retrying_worker.name], timeout=0.5)
    wait_for(lambda: not any((inspect.scheduled() or {}).values()), "a retry is still scheduled")
    retrying_worker.wait_idle()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def delivery_to(url: str) -> WebhookDelivery:
    endpoint = WebhookEndpointFactory(url=url)
    return WebhookDeliveryFactory(endpoint=endpoint)


def in_thread(work: Callable[[], Any]) -> threading.Thread:
    """`work` in a thread of its own, with its own database connection, as another worker
    process would run it."""

    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# One attempt, one POST


@pytest.mark.django_db(transaction=True)
def test_a_second_delivery_of_a_row_being_sent_sends_nothing(
    receiver: Receiver, admin_client: Client
) -> None:
    delivery = delivery_to(receiver.url())
    receiver.hold.clear()
    first = in_thread(lambda: deliver_webhook_task(delivery.pk, 1))
    assert receiver.arrived.wait(10), "the first delivery sent nothing"

    # While the first POST waits for its answer: the task again, as a redelivered message
    # would run it, then "send again" in the admin.
    assert deliver_webhook_task(delivery.pk, 1) == "pending"
    response = admin_client.post(
        "/admin/projects/webhookdelivery/",
        {"action": "send_again", "_selected_action": [delivery.pk]},
        follow=True,
    )
    receiver.hold.set()
    first.join(10)

    page = response.content.decode()
    assert "0 deliveries queued again." in page
    assert "1 still pending were left to their task" in page
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)


@pytest.mark.django_db(transaction=True)
def test_of_many_deliveries_claiming_one_attempt_at_once_one_wins() -> None:
    delivery = WebhookDeliveryFactory()
    start = threading.Barrier(8)
    claims: list[bool] = []

    def claim() -> None:
        start.wait()
        claims.append(claim_delivery(delivery_id=delivery.pk, attempt=1) is not None)

    for thread in [in_thread(claim) for _ in range(8)]:
        thread.join(30)

    assert sorted(claims) == [False] * 7 + [True]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 1)


def test_sending_again_makes_the_next_attempt_and_a_stale_task_sends_nothing(
    receiver: Receiver, admin_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    endpoint = WebhookEndpointFactory(url=receiver.url())
    failed = WebhookDeliveryFactory(endpoint=endpoint, status="failed", attempts=3, error="HTTP 500")
    delivered = WebhookDeliveryFactory(endpoint=endpoint, status="delivered", attempts=1)
    never_tried = WebhookDeliveryFactory(endpoint=endpoint)
    retrying = WebhookDeliveryFactory(endpoint=endpoint, attempts=2, error="Timed out")

    with django_capture_on_commit_callbacks() as queued:
        response = admin_client.post(
            "/admin/projects/webhookdelivery/",
            {
                "action": "send_again",
                "_selected_action": [failed.pk, delivered.pk, never_tried.pk, retrying.pk],
            },
            follow=True,
        )

    page = response.content.decode()
    assert "3 deliveries queued again." in page
    assert "1 still pending were left to their task" in page
    assert len(queued) == 3
    statuses = dict(WebhookDelivery.objects.values_list("pk", "status"))
    assert [statuses[row.pk] for row in (failed, delivered, never_tried, retrying)] == ["pending"] * 4
    assert deliver(delivery_id=failed.pk, attempt=3).status == "pending"  # the old task's last attempt
    assert receiver.requests == []
    assert deliver(delivery_id=failed.pk, attempt=4).status == "delivered"
    assert len(receiver.requests) == 1


# Celery's retries, on a real worker


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_fails_then_recovers_gets_the_delivery_on_a_celery_retry(
    receiver: Receiver, worker: WorkerProcess
) -> None:
    receiver.statuses = [500, 200]
    task = TaskFactory()
    lead = ProjectMembershipFactory(project=task.project, role=ProjectMembership.Role.LEAD).user
    WebhookEndpointFactory(project=task.project, url=receiver.url())

    update_task(task=task, user=lead, status="in_progress")  # queued on commit

    delivery = WebhookDelivery.objects.get()
    wait_for(lambda: WebhookDelivery.objects.get().status != "pending", "the delivery is still pending")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.error) == (
        "delivered",
        2,
        200,
        "",
    )
    assert [headers["X-Tasktracker-Delivery"] for headers in receiver.requests] == [str(delivery.pk)] * 2


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_keeps_failing_is_given_up_after_the_last_attempt_and_can_be_sent_again(
    receiver: Receiver, worker: WorkerProcess, admin_client: Client
) -> None:
    receiver.statuses = [500, 503, 500, 200]
    delivery = delivery_to(receiver.url())

    result = deliver_webhook_task.delay(delivery.pk, 1)

    with pytest.raises(Exception, match="answered 500"):
        result.get(timeout=30)
    # The task's result is stored before its failure handler gives the delivery up.
    wait_for(lambda: WebhookDelivery.objects.get().status != "pending", "the delivery is still pending")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.error) == (
        "failed",
        3,
        500,
        "HTTP 500",
    )
    assert len(receiver.requests) == 3

    admin_client.post(
        "/admin/projects/webhookdelivery/", {"action": "send_again", "_selected_action": [delivery.pk]}
    )

    wait_for(lambda: WebhookDelivery.objects.get().status != "pending", "the delivery is still pending")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 4, 200)
    assert len(receiver.requests) == 4


@pytest.mark.parametrize(
    ("host", "status", "expected"),
    [
        ("127.0.0.1", 302, (302, "HTTP 302: redirects are not followed.", 1)),
        ("127.0.0.2", 200, (None, "Refused: 127.0.0.2 is not a public address.", 0)),
    ],
    ids=["redirect", "refused"],
)
@pytest.mark.django_db(transaction=True)
def test_a_redirect_or_a_refused_address_fails_at_once_without_a_retry(
    receiver: Receiver, worker: WorkerProcess, host: str, status: int, expected: tuple[Any, ...]
) -> None:
    receiver.statuses = [status]
    delivery = delivery_to(receiver.url(host))

    # Returned, not retried: a retry would leave the task's result pending until the last attempt.
    assert deliver_webhook_task.delay(delivery.pk, 1).get(timeout=30) == "failed"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert (delivery.response_status, delivery.error, len(receiver.requests)) == expected


@pytest.mark.django_db(transaction=True)
def test_a_delivery_queued_twice_is_sent_once(receiver: Receiver, worker: WorkerProcess) -> None:
    delivery = delivery_to(receiver.url())
    receiver.hold.clear()

    results = [deliver_webhook_task.delay(delivery.pk, 1) for _ in range(2)]
    assert receiver.arrived.wait(20), "no delivery was sent"
    time.sleep(1)  # the worker runs two tasks at once: the second one runs meanwhile
    receiver.hold.set()

    assert {result.get(timeout=30) for result in results} <= {"pending", "delivered"}
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)


# Endpoints: one write path


def test_the_api_and_the_admin_save_an_endpoint_through_the_same_service(
    admin_client: Client, admin_user: Any
) -> None:
    project = ProjectFactory()
    api = APIClient()
    api.force_authenticate(admin_user)
    events = ["task.status_changed", "proposal.approved", "task.status_changed"]

    by_api = api.post(
        "/api/v1/webhooks/",
        {"project": project.pk, "url": "https://hooks.example.com/api", "events": events},
        format="json",
    )
    by_admin = admin_client.post(
        "/admin/projects/webhookendpoint/add/",
        {
            "project": project.pk,
            "url": "https://hooks.example.com/admin",
            "secret": "s3cret",
            "events": json.dumps(events),
            "is_active": "on",
        },
    )

    assert by_api.status_code == 201, by_api.json()
    assert by_admin.status_code == 302
    rows = WebhookEndpoint.objects.values_list("url", "project", "events")
    saved = {url: (project_id, events) for url, project_id, events in rows}
    once_each_in_order = (project.pk, ["proposal.approved", "task.status_changed"])
    assert saved == {
        "https://hooks.example.com/api": once_each_in_order,
        "https://hooks.example.com/admin": once_each_in_order,
    }


def test_the_api_and_the_admin_refuse_the_same_url_with_the_same_words(
    admin_client: Client, admin_user: Any
) -> None:
    project = ProjectFactory()
    api = APIClient()
    api.force_authenticate(admin_user)
    url = "http://10.0.0.7/hook"

    by_api = api.post("/api/v1/webhooks/", {"project": project.pk, "url": url}, format="json")
    by_admin = admin_client.post(
        "/admin/projects/webhookendpoint/add/",
        {"project": project.pk, "url": url, "secret": "s3cret", "events": "[]", "is_active": "on"},
    )

    assert by_api.status_code == 400
    assert by_admin.status_code == 200
    assert by_admin.context["adminform"].form.errors["url"] == by_api.json()["url"]
    assert not WebhookEndpoint.objects.exists()


def test_the_admin_refuses_an_event_that_does_not_exist_as_the_api_does(
    admin_client: Client, admin_user: Any
) -> None:
    project = ProjectFactory()
    api = APIClient()
    api.force_authenticate(admin_user)

    by_api = api.post(
        "/api/v1/webhooks/",
        {"project": project.pk, "url": "https://hooks.example.com/x", "events": ["task.deleted"]},
        format="json",
    )
    by_admin = admin_client.post(
        "/admin/projects/webhookendpoint/add/",
        {
            "project": project.pk,
            "url": "https://hooks.example.com/x",
            "secret": "s3cret",
            "events": '["task.deleted"]',
            "is_active": "on",
        },
    )

    assert by_api.status_code == 400
    assert list(by_api.json()) == ["events"]
    assert by_admin.context["adminform"].form.errors["events"] == [
        "Not events: task.deleted. The events are proposal.approved, task.status_changed."
    ]
    assert not WebhookEndpoint.objects.exists()


def test_only_a_lead_of_the_project_adds_or_deletes_its_webhooks() -> None:
    project = ProjectFactory()
    lead = ProjectMembershipFactory(project=project, role=ProjectMembership.Role.LEAD).user
    reviewer = ProjectMembershipFactory(project=project, role=ProjectMembership.Role.REVIEWER).user
    client = APIClient()
    body = {"project": project.pk, "url": "https://hooks.example.com/x"}

    client.force_authenticate(reviewer)
    refused = client.post("/api/v1/webhooks/", body, format="json")
    client.force_authenticate(lead)
    added = client.post("/api/v1/webhooks/", body, format="json")
    deleted = client.delete(f"/api/v1/webhooks/{added.json()['id']}/")

    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert (added.status_code, deleted.status_code) == (201, 204)
    assert not WebhookEndpoint.objects.exists()


def test_the_admin_changes_an_endpoint_through_the_same_rules(admin_client: Client) -> None:
    endpoint = WebhookEndpointFactory(url="https://hooks.example.com/a", secret="s3cret")
    change = f"/admin/projects/webhookendpoint/{endpoint.pk}/change/"
    form = {
        "project": endpoint.project_id,
        "url": "https://hooks.example.com/a",
        "secret": "s3cret",
        "events": '["task.status_changed", "task.status_changed"]',
    }

    refused = admin_client.post(change, {**form, "url": "http://10.0.0.7/hook", "is_active": "on"})
    saved = admin_client.post(change, form)

    assert refused.context["adminform"].form.errors["url"] == [
        "10.0.0.7 is not a public address. Webhooks go to public addresses only, or to hosts in "
        "WEBHOOK_ALLOWED_HOSTS."
    ]
    assert saved.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.events, endpoint.is_active) == (
        "https://hooks.example.com/a",
        ["task.status_changed"],
        False,
    )
