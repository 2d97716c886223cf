"""Outgoing webhooks: signed POSTs to a real receiver on loopback, retried and logged."""

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rest_framework.test import APIClient

from projects.models import ProjectMembership, WebhookDelivery, WebhookEndpoint
from projects.services import update_task
from projects.webhooks import DeliveryFailed, deliver, give_up
from proposals.services import approve_proposal
from tests.factories import ProjectMembershipFactory, TaskFactory, TaskProposalFactory, UserFactory

pytestmark = pytest.mark.django_db


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture(autouse=True)
def _receivers_on_loopback_are_allowed(settings: Any) -> None:
    """The receivers here listen on 127.0.0.1, which webhooks reach only when allowed."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def test_an_approval_is_posted_signed_to_the_projects_webhook(receiver: Receiver) -> None:
    proposal = TaskProposalFactory(title="Fix the login crash")
    reviewer = ProjectMembershipFactory(project=proposal.project, role=ProjectMembership.Role.REVIEWER).user
    endpoint = WebhookEndpoint.objects.create(project=proposal.project, url=receiver.url, secret="s3cret")
    task = approve_proposal(proposal_id=proposal.pk, user=reviewer)
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.event == "proposal.approved"
    deliver(delivery_id=delivery.pk, attempt=1)
    headers, body = receiver.requests[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Tasktracker-Signature"], expected)
    data = json.loads(body)
    assert data["event"] == "proposal.approved"
    assert data["data"]["task"] == {**data["data"]["task"], "id": task.pk, "title": "Fix the login crash"}
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)


def test_a_task_status_change_is_posted(receiver: Receiver) -> None:
    task = TaskFactory()
    lead = UserFactory()
    ProjectMembershipFactory(project=task.project, user=lead, role="lead")
    WebhookEndpoint.objects.create(project=task.project, url=receiver.url, events=["task.status_changed"])
    update_task(task=task, user=lead, status="in_progress")
    delivery = WebhookDelivery.objects.get()
    deliver(delivery_id=delivery.pk, attempt=1)
    assert json.loads(receiver.requests[0][1])["data"]["task"]["status"] == "in_progress"


def test_an_endpoint_gets_only_the_events_it_asked_for(receiver: Receiver) -> None:
    task = TaskFactory()
    lead = UserFactory()
    ProjectMembershipFactory(project=task.project, user=lead, role="lead")
    WebhookEndpoint.objects.create(project=task.project, url=receiver.url, events=["proposal.approved"])
    update_task(task=task, user=lead, status="in_progress")
    assert WebhookDelivery.objects.count() == 0


def test_a_failing_receiver_is_retried_then_given_up_and_logged(receiver: Receiver) -> None:
    receiver.status = 500
    task = TaskFactory()
    endpoint = WebhookEndpoint.objects.create(project=task.project, url=receiver.url)
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="task.status_changed", payload={})
    for attempt in (1, 2):
        with pytest.raises(DeliveryFailed):
            deliver(delivery_id=delivery.pk, attempt=attempt)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("pending", 2, 500)
    give_up(delivery_id=delivery.pk, attempt=2)
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    receiver.status = 200
    assert deliver(delivery_id=delivery.pk, attempt=3).status == "failed"  # given up: not sent again
    assert len(receiver.requests) == 2


def test_a_lead_registers_a_webhook_through_the_api_and_sees_its_secret() -> None:
    task = TaskFactory()
    lead, member = UserFactory(), UserFactory()
    ProjectMembershipFactory(project=task.project, user=lead, role="lead")
    ProjectMembershipFactory(project=task.project, user=member, role="member")
    client = APIClient()
    client.force_authenticate(lead)
    body = {
        "project": task.project.pk,
        "url": "https://ci.example.com/hook",
        "events": ["task.status_changed"],
    }
    response = client.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 201, response.json()
    assert len(response.json()["secret"]) >= 32
    assert client.get("/api/v1/webhooks/").json()["count"] == 1
    client.force_authenticate(member)
    assert client.post("/api/v1/webhooks/", body, format="json").status_code == 403
    assert client.get("/api/v1/webhooks/").json()["count"] == 0
    bad = client.post("/api/v1/webhooks/", {**body, "events": ["task.deleted"]}, format="json")
    assert bad.status_code == 400


def test_the_admin_sends_a_failed_delivery_again(admin_client, django_capture_on_commit_callbacks) -> None:
    task = TaskFactory()
    endpoint = WebhookEndpoint.objects.create(project=task.project, url="https://hooks.example.com/x")
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="task.status_changed", payload={})
    give_up(delivery_id=delivery.pk, attempt=1)
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            "/admin/projects/webhookdelivery/",
            {"action": "send_again", "_selected_action": [delivery.pk]},
            follow=True,
        )
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert len(callbacks) == 1
    assert "1 deliveries queued again." in response.content.decode()
