"""The API's throttles, failing open: while the cache's Redis is down (restarting, failing
over, full), a request goes through unthrottled with a warning in the log, instead of every
`/api/v1/` request answering 500. Throttling guards the API; it must not take it down."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import redis
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

if TYPE_CHECKING:
    # Not at run time: rest_framework.views reads DEFAULT_THROTTLE_CLASSES, so this module,
    # on import (a cycle).
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)


class FailOpenRateThrottle(SimpleRateThrottle):
    """A cache-backed throttle that lets the request through when its cache fails."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        # An anonymous request meets both throttles: once the cache failed it, the second
        # neither waits for the cache again nor logs the outage twice.
        if getattr(request, "throttle_cache_failed", False):
            return True
        try:
            return super().allow_request(request, view)
        except redis.RedisError as exc:
            logger.warning("The %s throttle let a request through: its cache failed (%s)", self.scope, exc)
            # A mark on this request for its next throttle, which DRF's `Request` does not declare.
            request.throttle_cache_failed = True  # type: ignore[attr-defined]
            return True


class FailOpenAnonRateThrottle(FailOpenRateThrottle, AnonRateThrottle):
    """DRF's throttle of anonymous requests (rate "anon"), failing open."""


class FailOpenUserRateThrottle(FailOpenRateThrottle, UserRateThrottle):
    """DRF's throttle of each user's requests (rate "user"), failing open."""
