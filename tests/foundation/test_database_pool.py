"""The web server's processes borrow PostgreSQL connections from a pool (DATABASE_POOL_MAX_SIZE)
instead of opening one per request; without the variable, each request has its own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="a connection pool is PostgreSQL's (psycopg_pool)",
    ),
    pytest.mark.django_db,
]

# Twelve requests' worth of work on eight threads, as the web server's request threads do:
# each takes the thread's connection, asks which server process answers, and gives the
# connection back at the end of the request (Django's request_finished closes it).
BORROW = """
import json, threading, django
django.setup()
from django.db import close_old_connections, connection
pids, errors = [], []
def request():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), pg_sleep(0.05)")
            pids.append(cursor.fetchone()[0])
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        close_old_connections()
        connection.close()
threads = [threading.Thread(target=request) for _ in range(12)]
for t in threads[:8]: t.start()
for t in threads[:8]: t.join()
for t in threads[8:]: t.start()
for t in threads[8:]: t.join()
print(json.dumps({"pids": pids, "errors": errors}))
"""


def borrow(**env: str) -> dict[str, list]:
    """What BORROW saw in a fresh process on this session's test database, with `env`."""
    db = connection.settings_dict
    host = f"{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}"
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{host}/{db['NAME']}"
    completed = subprocess.run(
        [sys.executable, "-c", BORROW],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tasktracker.settings", "DATABASE_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_with_a_pool_requests_share_at_most_its_size_of_connections() -> None:
    seen = borrow(DATABASE_POOL_MAX_SIZE="2")

    assert seen["errors"] == []
    assert len(seen["pids"]) == 12
    assert len(set(seen["pids"])) <= 2


def test_without_a_pool_each_request_opens_a_connection_of_its_own() -> None:
    seen = borrow(DATABASE_POOL_MAX_SIZE="0")

    assert seen["errors"] == []
    assert len(set(seen["pids"])) == 12
