"""A fake Telegram Bot API on loopback, so the real python-telegram-bot client runs in tests.

It serves `getMe`, `getUpdates` (with Telegram's offset semantics: updates below the
offset are confirmed and dropped), `setWebhook` and `deleteWebhook`, and records calls.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

BOT_ID = 424242
POLL_SECONDS = 0.05


class FakeBotAPI:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.webhook: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # `stop` waits for the serving loop to see the shutdown (half a second at the default).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/bot"

    def start(self) -> "FakeBotAPI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_update(self, update: dict[str, Any]) -> None:
        with self._lock:
            self.updates.append(update)

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    def answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.calls.append((method, params))
            if method == "getMe":
                user = {
                    "id": BOT_ID,
                    "is_bot": True,
                    "first_name": "Tasktracker",
                    "username": "tasktracker_bot",
                }
                return 200, {"ok": True, "result": user}
            if method == "getUpdates":
                offset = int(params.get("offset") or 0)
                if offset:
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                limit = int(params.get("limit") or 100)
                allowed = params.get("allowed_updates")
                allowed = json.loads(allowed) if isinstance(allowed, str) else allowed
                # As Telegram does: kinds outside allowed_updates are never delivered.
                if allowed:
                    self.updates = [u for u in self.updates if any(kind in u for kind in allowed)]
                return 200, {"ok": True, "result": self.updates[:limit]}
            if method == "setWebhook":
                self.webhook = params
                return 200, {"ok": True, "result": True, "description": "Webhook was set"}
            if method == "deleteWebhook":
                self.webhook = {}
                return 200, {"ok": True, "result": True}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    params = json.loads(body or "{}")
                else:
                    params = {k: v[0] for k, v in parse_qs(body).items()}
                method = self.path.rsplit("/", 1)[-1]
                status, payload = fake.answer(method, params)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
