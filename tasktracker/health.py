"""/healthz: the state of the database, Redis and the Celery workers; 503 when one is down.

It also counts the stalled batches (`stalled_batches`: running, their worker sent no
heartbeat for longer than BATCH_LEASE_SECONDS), for an operator or a monitor to alert on,
without turning a 200 into a 503: what answers 503 is taken out of rotation or restarted
(compose's healthcheck, a load balancer), and neither would help. The work of a dead
worker is queued again by `resume_stale_runs` and by the run page's requeue action; a
count that stays above 0 says that beat or every worker is down.
"""

import logging
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from analysis.services import stalled_batches
from tasktracker.celery import app as celery_app

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 1.0


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def check_redis() -> dict:
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
    )
    try:
        client.ping()
        return {"version": client.info("server").get("redis_version", "")}
    finally:
        client.close()


def check_workers() -> dict:
    replies = celery_app.control.ping(timeout=TIMEOUT_SECONDS, limit=1) or []
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        raise RuntimeError("no Celery worker answered")
    return {"workers": workers}


def count_stalled_batches() -> int | None:
    """The stalled batches of running runs; None when they could not be counted."""
    try:
        return stalled_batches().count()
    except Exception as exc:  # a health check reports every failure, it never raises
        logger.warning("Counting stalled batches failed: %s", exc)
        return None


def _run(check: Callable[[], dict]) -> dict:
    try:
        return {"ok": True, **check()}
    except Exception as exc:  # a health check reports every failure, it never raises
        logger.warning("Health check %s failed: %s", check.__name__, exc)
        return {"ok": False, "error": str(exc) or exc.__class__.__name__}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _run(check_database), "redis": _run(check_redis)}
    if checks["redis"]["ok"]:
        checks["workers"] = _run(check_workers)
    else:  # the workers are reached through Redis: without it they cannot answer
        checks["workers"] = {"ok": False, "error": "Redis is down"}
    healthy = all(check["ok"] for check in checks.values())
    body = {
        "status": "ok" if healthy else "error",
        "checks": checks,
        "stalled_batches": count_stalled_batches() if checks["database"]["ok"] else None,
        "batch_lease_seconds": settings.BATCH_LEASE_SECONDS,
    }
    return JsonResponse(body, status=200 if healthy else 503)
