"""An OpenAI-compatible fake on loopback, so the real `openai` client runs in tests.

Scripted: each queued reply answers one chat completion request, in order; with none
queued, `default` builds the answer. Replies: `FakeReply.ok(data)`, `.malformed()`,
`.status(429, retry_after=1)`, `.hang(seconds)`, `.truncated()`, `.refusal()`.
Every request body is recorded, so tests can see what the client sent; every chat completion
also as a `FakeCall` with the seconds the server spent answering it (its latency and any hang,
from the body read to the answer written), which benches subtract to get the client's own time.
"""

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POLL_SECONDS = 0.05
REFUSED_KEY = "refused-key"
REFUSED_KEY_ERROR = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}


@dataclass
class FakeReply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0
    finish_reason: str = "stop"
    raw_content: str | None = None
    refusal: str | None = None

    @classmethod
    def ok(cls, data: Any) -> "FakeReply":
        return cls(body=data)

    @classmethod
    def text(cls, content: str) -> "FakeReply":
        return cls(raw_content=content)

    @classmethod
    def malformed(cls) -> "FakeReply":
        return cls(raw_content='{"proposals": [ {"title": "unterminated')

    @classmethod
    def truncated(cls) -> "FakeReply":
        return cls(raw_content='{"proposals": [', finish_reason="length")

    @classmethod
    def refused(cls) -> "FakeReply":
        return cls(raw_content=None, refusal="I can't help with that.")

    @classmethod
    def error(cls, status: int, message: str = "", code: str | None = None, **headers: str) -> "FakeReply":
        body = {"error": {"message": message, "type": "error", "code": code}}
        header_names = {k.replace("_", "-"): v for k, v in headers.items()}
        return cls(status=status, body=body, headers=header_names)

    @classmethod
    def hang(cls, seconds: float) -> "FakeReply":
        return cls(hang_seconds=seconds, body={"proposals": []})


@dataclass
class FakeCall:
    """One chat completion as the server saw it: the body, when it arrived (epoch seconds)
    and how long the server took to answer it."""

    request: dict[str, Any]
    received_at: float
    seconds: float


class FakeOpenAI:
    def __init__(self, models: tuple[str, ...] = ("fake-model", "fake-model-large")) -> None:
        self.models = models
        self.replies: list[FakeReply] = []
        self.requests: list[dict[str, Any]] = []
        self.calls: list[FakeCall] = []
        self.default: Callable[[dict[str, Any]], FakeReply] = lambda request: FakeReply.ok({"proposals": []})
        self.latency = 0.0
        self.prompt_tokens = 120
        self.completion_tokens = 40
        self.reject_response_format: set[str] = set()
        self.reject_status = 400
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # `stop` waits for the serving loop to see the shutdown: at the default half-second
        # poll that was up to 0.5 s at the end of every test that used a fake.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def queue(self, *replies: FakeReply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def completion_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("_path", "").endswith("/chat/completions")]

    def _next_reply(self, request: dict[str, Any]) -> FakeReply:
        with self._lock:
            self.requests.append(request)
            response_format = request.get("response_format") or {}
            fmt = response_format.get("type")
            if fmt == "json_object" and "schema" in response_format:
                fmt = "json_object_schema"  # llama.cpp's JSON mode with a schema
            if fmt in self.reject_response_format:
                message = f"response_format {fmt} is not supported"
                return FakeReply.error(self.reject_status, message, code="invalid_request")
            if self.replies:
                return self.replies.pop(0)
        return self.default(request)

    def _completion(self, request: dict[str, Any], reply: FakeReply) -> dict[str, Any]:
        content = reply.raw_content
        if content is None and not reply.refusal:
            content = json.dumps(reply.body)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without this a kept-alive connection
            # waits ~40 ms on Nagle and delayed ACKs each call.
            disable_nagle_algorithm = True

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.endswith("/models"):
                    with fake._lock:
                        fake.requests.append({"_path": self.path, "_auth": self.headers.get("Authorization")})
                    if self.headers.get("Authorization") == f"Bearer {REFUSED_KEY}":
                        self._send(401, REFUSED_KEY_ERROR)
                        return
                    data = [{"id": m, "object": "model", "owned_by": "fake"} for m in fake.models]
                    self._send(200, {"object": "list", "data": data})
                    return
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                request["_path"] = self.path
                request["_auth"] = self.headers.get("Authorization")
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if request["_auth"] == f"Bearer {REFUSED_KEY}":
                    fake.requests.append(request)
                    self._send(401, REFUSED_KEY_ERROR)
                    return
                if request.get("model") not in fake.models:
                    fake.requests.append(request)
                    message = f"The model `{request.get('model')}` does not exist"
                    self._send(404, {"error": {"message": message, "code": "model_not_found"}})
                    return
                received_at, started = time.time(), time.perf_counter()
                try:
                    self._answer(request)
                finally:
                    call = FakeCall(request, received_at, time.perf_counter() - started)
                    with fake._lock:
                        fake.calls.append(call)

            def _answer(self, request: dict[str, Any]) -> None:
                reply = fake._next_reply(request)
                if fake.latency:
                    time.sleep(fake.latency)
                if reply.hang_seconds:
                    time.sleep(reply.hang_seconds)
                if reply.status != 200:
                    self._send(reply.status, reply.body, reply.headers)
                    return
                # The client may have given up already (a timeout test).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(200, fake._completion(request, reply), reply.headers)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


_LINE = re.compile(r"^#(\d+)(?: \d\d:\d\d)?(?: >\d+)? ([^:]*): (.*)$", re.MULTILINE)


def propose_actionable(
    request: dict[str, Any], words: tuple[str, ...] = ("please", "crash", "fix")
) -> FakeReply:
    """A plausible model: one proposal per message of the prompt that asks for work."""
    prompt = request["messages"][-1]["content"]
    proposals = []
    for message_id, author, text in _LINE.findall(prompt):
        if any(word in text.lower() for word in words):
            proposals.append(
                {
                    "title": text[:80],
                    "description": f"Asked by {author}: {text}",
                    "project": "",
                    "assignee": None,
                    "priority": "medium",
                    "category": "bug" if "crash" in text.lower() else "feature",
                    "tags": [],
                    "due_date": None,
                    "confidence": 0.8,
                    "reasoning": "The message asks for work.",
                    "recommendation": "new_task",
                    "source_message_ids": [int(message_id)],
                }
            )
    return FakeReply.ok({"proposals": proposals})
