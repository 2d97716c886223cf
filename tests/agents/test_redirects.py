"""A provider's redirect is never followed: LLM_ALLOWED_HOSTS vets the configured URL only,
so a provider on an allowed host must not be able to send the key and the chat, or take
its answers, from another address. Two real loopback servers: the provider, answering
every request with a redirect, and the address it points at."""

from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest
from rest_framework.test import APIClient

from agents.defaults import DEFAULT_RESPONSE_SCHEMA
from agents.llm import LLMError, complete_json, list_models
from agents.models import LLMProvider
from agents.services import check_provider_health
from tests.factories import LLMProviderFactory, UserFactory
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.django_db


class Elsewhere(FakeOpenAI):
    """An OpenAI-compatible server a provider must never reach; it notes every request,
    whatever its method or path."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(models=("fake-model", "elsewhere-model"))

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        seen = self.seen

        class Handler(super()._handler()):
            def do_GET(self) -> None:
                seen.append(f"GET {self.path}")
                super().do_GET()

            def do_POST(self) -> None:
                seen.append(f"POST {self.path}")
                super().do_POST()

        return Handler


class Redirector:
    """A provider on loopback (an allowed host) that answers every request with `status`
    and a Location on `origin`, keeping the path."""

    def __init__(self, origin: str, status: int) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _redirect(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                requests.append(f"{self.command} {self.path}")
                self.send_response(status)
                self.send_header("Location", f"{origin}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def elsewhere() -> Iterator[Elsewhere]:
    server = Elsewhere().start()
    yield server
    server.stop()


@pytest.fixture
def redirecting_provider(elsewhere: Elsewhere) -> Iterator[Callable[..., tuple[LLMProvider, Redirector]]]:
    """A factory: a provider whose server redirects to `elsewhere` with the given status."""
    servers: list[Redirector] = []

    def make(status: int = 302) -> tuple[LLMProvider, Redirector]:
        servers.append(Redirector(elsewhere.origin, status))
        provider = LLMProviderFactory(
            base_url=servers[-1].base_url, timeout_seconds=2, requests_per_minute=6000
        )
        return provider, servers[-1]

    yield make
    for server in servers:
        server.stop()


def refusal(provider: LLMProvider, elsewhere: Elsewhere) -> str:
    """The error, naming the address the provider pointed at (host and port)."""
    target = elsewhere.origin.removeprefix("http://")
    return f"{provider.name} answered a redirect to {target}; redirects are not followed."


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_completion_is_not_sent_where_the_provider_redirects(
    redirecting_provider: Callable[..., tuple[LLMProvider, Redirector]], elsewhere: Elsewhere, status: int
) -> None:
    provider, server = redirecting_provider(status)

    with pytest.raises(LLMError) as error:
        complete_json(
            provider=provider,
            model="fake-model",
            system_prompt="Extract tasks.",
            user_prompt="[1] alice: the app crashes on login",
            schema=DEFAULT_RESPONSE_SCHEMA,
        )

    assert elsewhere.seen == []
    assert error.value.kind == "redirect"
    assert error.value.permanent
    assert error.value.message == refusal(provider, elsewhere)
    assert server.requests == ["POST /v1/chat/completions"]  # a redirect is not retried
    assert error.value.usage.calls == 1


def test_the_model_list_is_not_read_where_the_provider_redirects(
    redirecting_provider: Callable[..., tuple[LLMProvider, Redirector]], elsewhere: Elsewhere
) -> None:
    provider, _ = redirecting_provider()

    with pytest.raises(LLMError) as error:
        list_models(provider=provider)

    assert elsewhere.seen == []
    assert (error.value.kind, error.value.message) == ("redirect", refusal(provider, elsewhere))


def test_a_health_check_answered_with_a_redirect_is_an_error_without_models(
    redirecting_provider: Callable[..., tuple[LLMProvider, Redirector]], elsewhere: Elsewhere
) -> None:
    provider, _ = redirecting_provider()
    admin_api = APIClient()
    admin_api.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = admin_api.post(f"/api/v1/providers/{provider.pk}/check/")

    assert elsewhere.seen == []
    assert response.status_code == 200
    assert response.data["health"] == "error"
    assert response.data["health_error"] == refusal(provider, elsewhere)
    assert response.data["available_models"] == []
    provider = check_provider_health(provider_id=provider.pk)  # the background task's service
    assert (provider.health, provider.available_models) == (LLMProvider.Health.ERROR, [])
    assert elsewhere.seen == []


def test_the_models_endpoint_refuses_a_redirect_with_a_502(
    redirecting_provider: Callable[..., tuple[LLMProvider, Redirector]], elsewhere: Elsewhere
) -> None:
    provider, _ = redirecting_provider()
    staff_api = APIClient()
    staff_api.force_login(UserFactory(is_staff=True))

    response = staff_api.get(f"/api/v1/providers/{provider.pk}/models/")

    assert elsewhere.seen == []
    assert response.status_code == 502
    assert response.data["detail"] == refusal(provider, elsewhere)
    assert "elsewhere-model" not in response.content.decode()
