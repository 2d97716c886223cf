"""The API traffic of `bench/api_load.py`: reviewers and integrations on `/api/v1/`.

Run by `api_load.py` (`locust --headless -f bench/locustfile.py ...`), which seeds the
database and writes the tokens and ids this file reads from the JSON file named by
`API_LOAD_FIXTURE`. Each simulated user has a token of its own, as each integration or
reviewer would: the per-user throttle then sees a user's own rate, not everyone's.
"""

import itertools
import json
import os
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from locust import HttpUser, between, task

with open(os.environ["API_LOAD_FIXTURE"]) as fixture_file:
    FIXTURE: dict[str, Any] = json.load(fixture_file)
_user_numbers = itertools.count()
# Telegram ids of the messages the users post, above those seeded; each user its own range.
BULK_TELEGRAM_ID_BASE = 10_000_000
BULK_MESSAGES = 20


# Seconds between a user's requests, "min,max": api_load.py's capacity phase sends "0,0".
WAIT_MIN, WAIT_MAX = (float(part) for part in os.environ.get("API_LOAD_WAIT", "0.5,1.5").split(","))


class ApiUser(HttpUser):
    # A person (or a polling integration) clicking through: a request every 0.5 to 1.5 s.
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        self.number = next(_user_numbers)
        token = FIXTURE["tokens"][self.number % len(FIXTURE["tokens"])]
        self.client.headers["Authorization"] = f"Token {token}"
        self.rng = random.Random(self.number)
        self.next_telegram_id = BULK_TELEGRAM_ID_BASE + self.number * 1_000_000

    def _page(self, pages: int) -> int:
        return self.rng.randint(1, max(1, pages))

    @task(4)
    def list_messages(self) -> None:
        chat = self.rng.choice(FIXTURE["chats"])
        self.client.get(
            "/api/v1/messages/",
            params={"chat": chat, "ordering": "-sent_at", "page": self._page(FIXTURE["message_pages"])},
            name="GET /api/v1/messages/?chat=&page=",
        )

    @task(1)
    def search_messages(self) -> None:
        word = self.rng.choice(["deploy", "invoice", "login", "release", "crash"])
        self.client.get("/api/v1/messages/", params={"search": word}, name="GET /api/v1/messages/?search=")

    @task(1)
    def get_message(self) -> None:
        self.client.get(
            f"/api/v1/messages/{self.rng.choice(FIXTURE['message_ids'])}/", name="GET /api/v1/messages/{id}/"
        )

    @task(3)
    def list_proposals(self) -> None:
        self.client.get(
            "/api/v1/proposals/",
            params={"status": "pending", "project": FIXTURE["project_id"]},
            name="GET /api/v1/proposals/?status=pending",
        )

    @task(1)
    def get_proposal(self) -> None:
        self.client.get(
            f"/api/v1/proposals/{self.rng.choice(FIXTURE['proposal_ids'])}/",
            name="GET /api/v1/proposals/{id}/",
        )

    @task(2)
    def list_runs(self) -> None:
        self.client.get("/api/v1/runs/", name="GET /api/v1/runs/")

    @task(2)
    def list_tasks(self) -> None:
        self.client.get(
            "/api/v1/tasks/", params={"page": self._page(FIXTURE["task_pages"])}, name="GET /api/v1/tasks/"
        )

    @task(1)
    def list_projects(self) -> None:
        self.client.get("/api/v1/projects/", name="GET /api/v1/projects/")

    @task(1)
    def bulk_ingest(self) -> None:
        """An integration posting a batch of new messages, now and then one it sent before."""
        first = self.next_telegram_id
        if self.rng.random() < 0.2 and first > BULK_TELEGRAM_ID_BASE + self.number * 1_000_000:
            first -= BULK_MESSAGES  # a retry: every message comes back `unchanged`
        now = datetime.now(UTC)
        messages = [
            {
                "telegram_id": first + i,
                "sent_at": (now - timedelta(seconds=BULK_MESSAGES - i)).isoformat(),
                "text": f"Load test message {first + i}: can someone check the deploy?",
                "author_id": 9000 + self.number,
                "author_name": f"Load user {self.number}",
            }
            for i in range(BULK_MESSAGES)
        ]
        chat = FIXTURE["bulk_chat"]
        self.client.post(
            "/api/v1/messages/bulk/",
            json={"chat": chat, "messages": messages},
            name="POST /api/v1/messages/bulk/",
        )
        self.next_telegram_id = max(self.next_telegram_id, first + BULK_MESSAGES)
