"""Start-up: a process imports the heavy libraries only where it uses them.

A command that reads an export into one table, or a worker that serves no page, should not
pay for the openai SDK, python-telegram-bot, jsonschema, the admin's modules or Daphne's
reactor: for a small import, start-up is most of the wait.
"""

import json
import subprocess
import sys
from pathlib import Path

from django.contrib import admin
from django.urls import reverse

from projects.models import Project

BASE_DIR = Path(__file__).resolve().parents[2]
HEAVY = ("openai", "telegram", "jsonschema", "httpx", "daphne.server", "projects.admin", "agents.llm")


def loaded_after(code: str) -> dict[str, bool]:
    """Which of `HEAVY` a fresh interpreter has imported after Django's set-up and `code`."""
    script = (
        "import json, sys, django; django.setup(); "
        f"{code}; print(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "tasktracker.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_export_import_command_loads_none_of_the_heavy_libraries() -> None:
    loaded = loaded_after("import sources.management.commands.import_telegram_export")

    assert not any(loaded.values()), loaded


def test_a_process_that_resolves_urls_has_the_admin_registered() -> None:
    # `SimpleAdminConfig`: the URLconf registers the admin modules.
    loaded = loaded_after("from django.urls import reverse; reverse('admin:index')")

    assert loaded["projects.admin"]
    assert not loaded["openai"]  # the gateway is imported where a call is made


def test_the_admin_is_registered_and_its_checks_pass() -> None:
    reverse("admin:index")

    assert Project in admin.site._registry
    assert admin.site.check(None) == []
