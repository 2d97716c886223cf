"""Settings come from the environment and fail fast on bad values."""

import json
import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DATABASE_URL": "postgres://app:secret@db.internal:5432/tasktracker",
    "REDIS_URL": "redis://cache.internal:6379/2",
    "SECRET_KEY": "a-long-production-secret-key-with-enough-entropy-0123456789abcdef",
    "ALLOWED_HOSTS": "tasks.example.com",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
}
PRINT_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], 'name': s.DATABASES['default']['NAME'], "
    "'host': s.DATABASES['default']['HOST'], 'broker': s.CELERY_BROKER_URL, "
    "'layer': s.CHANNEL_LAYERS['default']['CONFIG']['hosts'], 'debug': s.DEBUG, "
    "'hosts': s.ALLOWED_HOSTS, 'secure_cookie': s.SESSION_COOKIE_SECURE}))"
)


def run_python(code_or_args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV and k != "DEBUG"}
    return subprocess.run(
        [sys.executable, *code_or_args],
        env={**clean, "DJANGO_SETTINGS_MODULE": "tasktracker.settings", **env},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_come_from_the_environment() -> None:
    result = run_python(["-c", PRINT_SETTINGS], PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["engine"] == "django.db.backends.postgresql"
    assert (seen["name"], seen["host"]) == ("tasktracker", "db.internal")
    assert seen["broker"] == "redis://cache.internal:6379/2"
    assert [host["address"] for host in seen["layer"]] == ["redis://cache.internal:6379/2"]
    assert seen["debug"] is False
    assert seen["hosts"] == ["tasks.example.com"]
    assert seen["secure_cookie"] is True


def test_embedded_default_is_sqlite_and_a_redis_port_of_its_own() -> None:
    result = run_python(["-c", PRINT_SETTINGS], {"EMBEDDED_REDIS_PORT": "6391"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["engine"] == "django.db.backends.sqlite3"
    assert seen["name"].endswith(".run/tasktracker.sqlite3")
    assert seen["broker"] == "redis://127.0.0.1:6391/0"
    assert seen["secure_cookie"] is False


def test_production_without_a_secret_key_refuses_to_start() -> None:
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = run_python(["-c", PRINT_SETTINGS], env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_a_bad_redis_url_refuses_to_start() -> None:
    result = run_python(["-c", PRINT_SETTINGS], {**PRODUCTION_ENV, "REDIS_URL": "http://nope"})
    assert result.returncode != 0
    assert "REDIS_URL must be a redis://" in result.stderr


def test_a_bad_boolean_refuses_to_start() -> None:
    result = run_python(["-c", PRINT_SETTINGS], {**PRODUCTION_ENV, "SECURE_HSTS_SECONDS": "a year"})
    assert result.returncode != 0
    assert "ValueError" in result.stderr or "invalid literal" in result.stderr


def test_check_deploy_passes_with_production_variables() -> None:
    result = run_python(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
