"""Shared fixtures: users by role and a live Celery worker on the real broker."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from channels.layers import channel_layers
from django.conf import settings
from django.db import connection
from django.test import override_settings
from servestatic.middleware import ServeStaticMiddleware

from tasktracker.celery import app as celery_app
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram import FakeBotAPI

BASE_DIR = Path(__file__).resolve().parent


def database_url_of_test_db() -> str:
    """The test database as a DATABASE_URL, for processes started by the tests."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


def _ping_worker(name: str) -> bool:
    replies = celery_app.control.ping(destination=[name], timeout=0.5) or []
    return any(name in reply for reply in replies)


class WorkerProcess:
    """A real Celery worker process (its own process group) on the test database."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env = name, env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasktracker", "worker", "-n", self.name,
             "--concurrency", "2", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
            env=self.env, cwd=BASE_DIR, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not _ping_worker(self.name):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"The Celery worker did not start (exit code {self.process.poll()}).")

    def wait_idle(self, timeout: float = 20) -> None:
        """Wait until the worker runs and holds no task."""
        inspect = celery_app.control.inspect([self.name], timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active, reserved = inspect.active() or {}, inspect.reserved() or {}
            if not any(active.values()) and not any(reserved.values()):
                return
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test database; on PostgreSQL every other session on it is ended
    before it is dropped. A connection left open by a thread of an async test would make
    DROP DATABASE fail and leave the database behind, each run one more: its name is this
    test process's own (settings.py), so no one else is using it."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


# The tests' password hasher: MD5, first, hashes every password a test sets. Django's
# default PBKDF2 (a million rounds, on purpose) took most of a second per user under CI's
# load, paid by each `admin_user`/`admin_client` and `create_user(password=...)`: minutes
# over the suite. PBKDF2 stays second, so a hash made by a process with the default
# settings still checks. A process started by the tests that checks passwords made here
# needs the same list (tests/browser/conftest.py's FreshDaphneProcess).
TEST_PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing() -> Iterator[None]:
    with override_settings(PASSWORD_HASHERS=TEST_PASSWORD_HASHERS):
        yield


@pytest.fixture(autouse=True)
def _channel_layer_per_test() -> Iterator[None]:
    """Each test gets a channel layer of its own. channels-redis binds the process-wide
    layer's locks to the event loop that first used them, and each async test runs a loop
    of its own: a consumer of a later test then failed on a lock of an earlier test's loop
    (whichever test a worker happened to run before it)."""
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="session", autouse=True)
def _static_files_found_once() -> Iterator[None]:
    """Each test client loads the middleware again, and ServeStatic then looks up every
    static file through the finders (about a tenth of a second a client, minutes over the
    suite). The files found by the first client serve the later ones: no test changes the
    static files or their settings, and serving them is unchanged."""
    find = ServeStaticMiddleware.add_files_from_finders
    found: dict[str, tuple[dict[str, Any], list[tuple[str, str]]]] = {}

    def add_files_from_finders(self: ServeStaticMiddleware) -> None:
        if self.static_prefix not in found:
            files_before, directories_before = set(self.files), list(self.directories)
            find(self)
            found[self.static_prefix] = (
                {url: file for url, file in self.files.items() if url not in files_before},
                [directory for directory in self.directories if directory not in directories_before],
            )
            return
        files, directories = found[self.static_prefix]
        for root, prefix in reversed(directories):
            self.insert_directory(root, prefix)
        self.files.update(files)

    ServeStaticMiddleware.add_files_from_finders = add_files_from_finders
    yield
    ServeStaticMiddleware.add_files_from_finders = find


@pytest.fixture(scope="session")
def worker_process(
    django_db_setup: None, django_db_blocker: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    with django_db_blocker.unblock():
        env = {
            **os.environ,
            "DATABASE_URL": database_url_of_test_db(),
            "CONN_MAX_AGE": "0",
            "LLM_BACKOFF_BASE_SECONDS": "0.05",
            "LLM_BACKOFF_CAP_SECONDS": "0.5",
            # The same keys as this process, so API keys it encrypted decrypt there.
            "SECRET_KEY": settings.SECRET_KEY,
            "FIELD_ENCRYPTION_KEY": settings.FIELD_ENCRYPTION_KEY,
        }
    celery_app.control.purge()
    worker = WorkerProcess(f"test-worker-{os.getpid()}@localhost", env)
    STARTED_WORKERS.append(worker)
    yield worker
    worker.stop()


# The session's Celery worker, once a test asked for it (`worker_process`).
STARTED_WORKERS: list[WorkerProcess] = []


@pytest.fixture(autouse=True)
def _no_task_outlives_a_transactional_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A transactional test's commits may queue work (a run's task, on commit) that the
    worker an earlier test started takes, even when this test did not ask for a worker: the
    test database's flush after the test would then race that task (a deadlock between the
    TRUNCATE and the task's row locks, and rows left for the next test). So the queue is
    purged and the worker left idle before the flush."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None or not marker.kwargs.get("transaction", False):
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up before, so torn down (flushed) after
    yield
    for worker in STARTED_WORKERS:
        if worker.process is not None and worker.process.poll() is None:
            celery_app.control.purge()
            worker.wait_idle()


@pytest.fixture
def live_worker(worker_process: WorkerProcess) -> Iterator[str]:
    """A real Celery worker consuming from the real broker, on the test database.

    Tests that use it need committed data: mark them `django_db(transaction=True)`. The
    queue is emptied before and after, and the worker left idle: a task left over from
    one test must not take a row of the next one (SQLite reuses ids after a flush).
    """
    if worker_process.process is None or worker_process.process.poll() is not None:
        worker_process.start()
    celery_app.control.purge()
    yield worker_process.name
    celery_app.control.purge()
    worker_process.wait_idle()


@pytest.fixture
def fake_bot_api(settings: Any) -> Iterator[FakeBotAPI]:
    """A fake Telegram Bot API on loopback; the bot's settings point at it."""
    fake = FakeBotAPI().start()
    settings.TELEGRAM_API_BASE_URL = fake.base_url
    settings.TELEGRAM_BOT_TOKEN = "123456:TEST-TOKEN"
    yield fake
    fake.stop()


@pytest.fixture
def fake_openai(settings: Any) -> Iterator[FakeOpenAI]:
    """An OpenAI-compatible server on loopback; the gateway's backoff is shortened, and it
    forgets the response formats earlier fakes took."""
    from agents.llm import forget_response_formats  # a model import: Django is set up by now

    forget_response_formats()
    settings.LLM_BACKOFF_BASE_SECONDS = 0.01
    settings.LLM_BACKOFF_CAP_SECONDS = 2.0
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()
