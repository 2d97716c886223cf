"""The API's throttles: DRF's sliding-window rates ("anon", "user") kept in a Redis sorted
set, one pipelined round trip per request, and failing open.

DRF's `SimpleRateThrottle` reads a pickled list of timestamps from the cache and writes it
back: two round trips and a list of up to the rate's length (6000 for "user") pickled each
way, on every API request. Here the same window is a sorted set of request times, trimmed,
added to and counted in one MULTI/EXEC: one round trip, nothing pickled, and two
processes' requests of one user never overwrite each other's history (with get-then-set
they could). A refused request is taken out of the set again (a second round trip, only
then), so it does not count against the rate, as in DRF.

Failing open: while the cache's Redis is down (restarting, failing over, full), a request
goes through unthrottled with a warning in the log, instead of every `/api/v1/` request
answering 500. Throttling guards the API; it must not take it down.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.core.cache import cache as default_cache
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

if TYPE_CHECKING:
    # Not at run time: rest_framework.views reads DEFAULT_THROTTLE_CLASSES, so this module,
    # on import (a cycle).
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)


# One client, and so one connection pool, per process and cache location.
_clients: dict[tuple[str, tuple[tuple[str, Any], ...]], redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """A process-wide redis-py client of the cache's Redis (`settings.CACHES["default"]`,
    which tests swap, stays the one source). Not Django's cache object: under ASGI every
    request gets a cache object of its own (asgiref's context-local storage) with a
    connection pool of its own, so each API request connected to Redis anew (7% of the web
    server's CPU, bench/api_load.py)."""
    config = settings.CACHES["default"]
    location = config["LOCATION"]
    if not isinstance(location, str):
        location = location[0]  # Django's RedisCache writes to the first server
    options = dict(config.get("OPTIONS", {}))
    ident = (location, tuple(sorted(options.items())))
    client = _clients.get(ident)
    if client is None:
        with _clients_lock:
            client = _clients.get(ident) or _clients.setdefault(
                ident, redis.Redis.from_url(location, **options)
            )
    return client


class FailOpenRateThrottle(SimpleRateThrottle):
    """DRF's sliding window in a Redis sorted set, letting the request through when Redis fails."""

    # Set by DRF's __init__ from the rate (`parse_rate`); undeclared in its stubs.
    num_requests: int
    duration: int

    def allow_request(self, request: Request, view: APIView) -> bool:
        # An anonymous request meets both throttles: once the cache failed it, the second
        # neither waits for the cache again nor logs the outage twice.
        if getattr(request, "throttle_cache_failed", False):
            return True
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        try:
            return self._record(default_cache.make_key(key))
        except redis.RedisError as exc:
            logger.warning("The %s throttle let a request through: its cache failed (%s)", self.scope, exc)
            # A mark on this request for its next throttle, which DRF's `Request` does not declare.
            request.throttle_cache_failed = True  # type: ignore[attr-defined]
            return True

    def _record(self, redis_key: str) -> bool:
        """Add this request to the window and say whether the window still holds it."""
        self.now = self.timer()
        member = f"{self.now:.6f}:{uuid.uuid4().hex[:8]}"  # two requests in one microsecond stay two
        client = redis_client()
        pipe = client.pipeline(transaction=True)
        pipe.zremrangebyscore(redis_key, "-inf", self.now - self.duration)
        pipe.zadd(redis_key, {member: self.now})
        pipe.zcard(redis_key)
        pipe.zrange(redis_key, 0, 0, withscores=True)
        pipe.expire(redis_key, self.duration)
        _, _, count, oldest, _ = pipe.execute()
        if count <= self.num_requests:
            return True
        client.zrem(redis_key, member)
        # What DRF's `wait()` reads: the requests in the window (this one not counted) and
        # the oldest of them last.
        self.history = [oldest[0][1] if oldest else self.now] * (count - 1)
        return False


class FailOpenAnonRateThrottle(FailOpenRateThrottle, AnonRateThrottle):
    """DRF's throttle of anonymous requests (rate "anon"), failing open."""


class FailOpenUserRateThrottle(FailOpenRateThrottle, UserRateThrottle):
    """DRF's throttle of each user's requests (rate "user"), failing open."""
