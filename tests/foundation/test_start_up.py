"""Start-up: a process imports the heavy libraries only where it uses them.

A command that reads an export into one table, or a worker that serves no page, should not
pay for the openai SDK, python-telegram-bot, jsonschema, cryptography, Celery, the admin's
modules or Daphne's reactor: for a small import, start-up is most of the wait.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.urls import reverse
from servestatic.middleware import ServeStaticMiddleware

from projects.models import Project

BASE_DIR = Path(__file__).resolve().parents[2]
HEAVY = (
    "openai",
    "telegram",
    "jsonschema",
    "httpx",
    "cryptography",
    "celery",
    "daphne.server",
    "projects.admin",
    "agents.llm",
)
# What a command does, step after step, in one process (`manage.py shell -c`, the entry
# point every command starts from): a start-up costs a second of CI, and each step only
# adds modules, so what is missing after a step was loaded by none of the steps before it.
STEPS = {
    "import command": "import sources.management.commands.import_telegram_export",
    "URL resolved": "from django.urls import reverse; reverse('admin:index')",
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict[str, bool]]:
    """Which of `HEAVY` the process has imported after each of `STEPS`, and whether its
    garbage collector is on (`manage.py` turns it off for Django's set-up only)."""
    snapshot = (
        f"print(json.dumps({{'gc': gc.isenabled(), **{{name: name in sys.modules for name in {HEAVY!r}}}}}))"
    )
    script = "; ".join(["import gc, json, sys"] + [f"{code}; {snapshot}" for code in STEPS.values()])
    completed = subprocess.run(
        [sys.executable, "manage.py", "shell", "--verbosity", "0", "--command", script],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "tasktracker.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    snapshots = [json.loads(line) for line in completed.stdout.strip().splitlines()[-len(STEPS) :]]
    return dict(zip(STEPS, snapshots, strict=True))


def test_the_export_import_command_loads_none_of_the_heavy_libraries(
    loaded: dict[str, dict[str, bool]],
) -> None:
    loaded_heavy = {name: loaded["import command"][name] for name in HEAVY}

    assert not any(loaded_heavy.values()), loaded_heavy


def test_a_command_runs_with_the_garbage_collector_on(loaded: dict[str, dict[str, bool]]) -> None:
    assert loaded["import command"]["gc"]


def test_a_process_that_resolves_urls_has_the_admin_registered(loaded: dict[str, dict[str, bool]]) -> None:
    # `SimpleAdminConfig`: the URLconf registers the admin modules.
    assert loaded["URL resolved"]["projects.admin"]
    assert not loaded["URL resolved"]["openai"]  # the gateway is imported where a call is made


def test_the_admin_is_registered_and_its_checks_pass() -> None:
    reverse("admin:index")

    assert Project in admin.site._registry
    assert admin.site.check(None) == []


def test_the_static_files_middleware_starts_without_a_warning_in_debug(settings: Any) -> None:
    # ServeStatic warns at every start-up under DEBUG (`make run`) when its app, which
    # registers its system checks, is not installed.
    settings.DEBUG = True

    async def get_response(request: object) -> None:
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ServeStaticMiddleware(get_response)
