"""Outgoing webhooks go to public addresses only (or hosts in WEBHOOK_ALLOWED_HOSTS), checked
when an endpoint is saved and again on the address each delivery connects to; redirects are
not followed, and the delivery log never shows what a receiver answered.

Receivers are real HTTP servers on loopback; the resolver is faked only where DNS itself is
the subject (`socket.getaddrinfo`, the boundary between the code and the system resolver).
"""

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from projects.models import Project, ProjectMembership, WebhookDelivery, WebhookEndpoint
from projects.webhooks import DeliveryFailed, deliver
from proposals.services import approve_proposal
from tests.factories import ProjectFactory, ProjectMembershipFactory, TaskProposalFactory

pytestmark = pytest.mark.django_db

SECRET_ANSWER = "ami-id: i-0internal; AccessKeyId=AKIAINTERNALONLY"


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers with `status`, `body` and
    `headers`."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.body = b""
        self.headers: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

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
    receiver.server.shutdown()


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def project() -> Project:
    return ProjectFactory()


@pytest.fixture
def lead(project: Project) -> Any:
    return ProjectMembershipFactory(project=project, role=ProjectMembership.Role.LEAD).user


@pytest.fixture
def client(lead: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(lead)
    return client


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names mapped to the address the system resolver answers for them (change an entry
    to change the answer); every other name resolves as usual."""
    answers: dict[str, str] = {}
    real_getaddrinfo: Callable[..., Any] = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        return real_getaddrinfo(answers.get(name, host), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def register(client: APIClient, project: Project, url: str) -> Any:
    return client.post("/api/v1/webhooks/", {"project": project.pk, "url": url}, format="json")


def deliveries_page(client: APIClient, endpoint_id: int) -> Any:
    response = client.get(f"/api/v1/webhooks/{endpoint_id}/deliveries/")
    assert response.status_code == 200
    return response


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://10.0.0.7/hook",
        "http://192.168.1.20/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://224.0.0.1/hook",
        "ftp://hooks.example.com/hook",
    ],
)
def test_a_url_that_is_not_public_http_is_refused_when_saved(
    client: APIClient, project: Project, url: str
) -> None:
    response = register(client, project, url)
    assert response.status_code == 400, response.json()
    assert list(response.json()) == ["url"]
    assert not WebhookEndpoint.objects.exists()


def test_a_name_that_resolves_to_a_private_address_is_refused_when_saved(
    client: APIClient, project: Project, resolver: dict[str, str]
) -> None:
    resolver["hooks.corp.example.com"] = "10.20.30.40"
    response = register(client, project, "https://hooks.corp.example.com/hook")
    assert response.status_code == 400
    assert response.json()["url"] == [
        "hooks.corp.example.com resolves to a non-public address. Webhooks go to public addresses "
        "only, or to hosts in WEBHOOK_ALLOWED_HOSTS."
    ]
    assert not WebhookEndpoint.objects.exists()


def test_only_the_hosts_in_webhook_allowed_hosts_may_be_internal(
    client: APIClient, project: Project, settings: Any
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1", "[::1]"]
    assert register(client, project, "http://127.0.0.1:8080/hook").status_code == 201
    assert register(client, project, "http://[::1]:8080/hook").status_code == 201
    assert register(client, project, "http://localhost:8080/hook").status_code == 400
    assert register(client, project, "http://127.0.0.2:8080/hook").status_code == 400
    assert sorted(WebhookEndpoint.objects.values_list("url", flat=True)) == [
        "http://127.0.0.1:8080/hook",
        "http://[::1]:8080/hook",
    ]


def test_the_admin_refuses_an_internal_url_as_a_field_error(admin_client: Any, project: Project) -> None:
    response = admin_client.post(
        "/admin/projects/webhookendpoint/add/",
        {
            "project": project.pk,
            "url": "http://169.254.169.254/latest/meta-data/",
            "secret": "s3cret",
            "events": "[]",
            "is_active": "on",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["url"] == [
        "169.254.169.254 is not a public address. Webhooks go to public addresses only, or to hosts "
        "in WEBHOOK_ALLOWED_HOSTS."
    ]
    assert not WebhookEndpoint.objects.exists()


def test_a_name_rebound_to_loopback_after_saving_is_refused_at_delivery(
    client: APIClient, project: Project, receiver: Receiver, resolver: dict[str, str]
) -> None:
    resolver["hooks.rebind.example.com"] = "93.184.215.14"
    response = register(client, project, receiver.url("hooks.rebind.example.com"))
    assert response.status_code == 201
    endpoint = WebhookEndpoint.objects.get()
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="task.status_changed", payload={})
    resolver["hooks.rebind.example.com"] = "127.0.0.1"

    delivery = deliver(delivery_id=delivery.pk, attempt=1)  # refused for good: no retry

    assert receiver.requests == []
    assert (delivery.status, delivery.response_status) == ("failed", None)
    assert delivery.error == "Refused: hooks.rebind.example.com resolves to a non-public address."
    [logged] = deliveries_page(client, endpoint.pk).json()
    assert (logged["status"], logged["error"]) == ("failed", delivery.error)


def test_an_endpoint_saved_before_the_check_is_refused_at_delivery(
    receiver: Receiver, project: Project
) -> None:
    endpoint = WebhookEndpoint.objects.create(project=project, url=receiver.url())
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="task.status_changed", payload={})

    delivery = deliver(delivery_id=delivery.pk, attempt=1)

    assert receiver.requests == []
    assert delivery.status == "failed"
    assert delivery.error == "Refused: 127.0.0.1 is not a public address."


def test_an_allowed_internal_receiver_gets_the_delivery_and_its_answer_is_never_logged(
    client: APIClient,
    project: Project,
    lead: Any,
    receiver: Receiver,
    resolver: dict[str, str],
    settings: Any,
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["receiver.internal"]
    resolver["receiver.internal"] = "127.0.0.1"
    response = register(client, project, receiver.url("receiver.internal"))
    assert response.status_code == 201
    proposal = TaskProposalFactory(project=project, title="Fix the login crash")
    approve_proposal(proposal_id=proposal.pk, user=lead)
    delivery = WebhookDelivery.objects.get()
    receiver.status, receiver.body = 500, SECRET_ANSWER.encode()

    with pytest.raises(DeliveryFailed):
        deliver(delivery_id=delivery.pk, attempt=1)

    [(headers, _body)] = receiver.requests
    assert headers["Host"] == f"receiver.internal:{receiver.port}"  # connected to the checked address
    delivery.refresh_from_db()
    assert (delivery.status, delivery.response_status, delivery.error) == ("pending", 500, "HTTP 500")
    assert SECRET_ANSWER not in deliveries_page(client, response.json()["id"]).content.decode()

    receiver.status = 200
    delivery = deliver(delivery_id=delivery.pk, attempt=2)

    assert len(receiver.requests) == 2
    assert (delivery.status, delivery.response_status, delivery.error) == ("delivered", 200, "")
    assert SECRET_ANSWER not in deliveries_page(client, response.json()["id"]).content.decode()


def test_a_redirect_is_not_followed_and_fails_the_delivery(
    project: Project, receiver: Receiver, other_receiver: Receiver, settings: Any
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    endpoint = WebhookEndpoint.objects.create(project=project, url=receiver.url())
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="task.status_changed", payload={})
    receiver.status, receiver.body = 302, SECRET_ANSWER.encode()
    receiver.headers = {"Location": other_receiver.url()}

    delivery = deliver(delivery_id=delivery.pk, attempt=1)

    assert len(receiver.requests) == 1
    assert other_receiver.requests == []
    assert (delivery.status, delivery.response_status) == ("failed", 302)
    assert delivery.error == "HTTP 302: redirects are not followed."


@pytest.mark.django_db(transaction=True)
def test_the_answers_logged_before_are_forgotten_by_the_migration() -> None:
    before = [("projects", "0003_reviewer_role")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    project = old.get_model("projects", "Project").objects.create(name="Alpha", slug="alpha")
    endpoint = old.get_model("projects", "WebhookEndpoint").objects.create(
        project=project, url="http://169.254.169.254/latest/meta-data/", secret="s"
    )
    delivery_model = old.get_model("projects", "WebhookDelivery")
    for response_status, error in [
        (200, SECRET_ANSWER),
        (500, SECRET_ANSWER),
        (None, "ConnectError: refused"),
    ]:
        delivery_model.objects.create(
            endpoint=endpoint,
            event="task.status_changed",
            payload={},
            response_status=response_status,
            error=error,
        )

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert sorted(WebhookDelivery.objects.values_list("error", flat=True)) == [
        "ConnectError: refused",
        "HTTP 200",
        "HTTP 500",
    ]
