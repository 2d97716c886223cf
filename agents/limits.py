"""Per-provider concurrency and rate limits that hold across every worker, through Redis.

A run's batches are Celery tasks spread over many processes and machines, so a
per-process semaphore would let each of them send `max_concurrency` requests. Here both
limits live in Redis and are taken atomically by Lua scripts:

- a semaphore: a sorted set of slot holders scored by lease expiry, so a worker that
  dies while holding a slot frees it when its lease runs out;
- a token bucket refilled at `requests_per_minute / 60` tokens a second.

A Redis that cannot be reached raises `LimitUnavailable`, which the gateway retries like a
provider's 5xx; giving a slot back is not worth failing a call for (its lease frees it).
"""

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

# Redis down, restarting or failing over. An error Redis answers (a script's) is a bug.
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

_SLOT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""

# Returns the milliseconds to wait before a token is there (0: taken now).
_RATE_BUCKET_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate_per_ms = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - at) * rate_per_ms)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate_per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return wait
"""


class LimitTimeout(Exception):
    """No slot or token came free in time."""


class LimitUnavailable(Exception):
    """Redis, which holds the limits, cannot be reached: no slot or token can be taken."""

    def __init__(self, error: redis.RedisError) -> None:
        super().__init__(f"Redis, which holds the rate limits, cannot be reached: {error}")


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _redis() -> redis.Redis:
    return _client(settings.REDIS_URL)


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def provider_slot(
    provider_id: int, *, max_concurrency: int, lease_seconds: float, wait_seconds: float
) -> Iterator[None]:
    """Hold one of the provider's `max_concurrency` request slots while the block runs."""
    key = f"tasktracker:llm:{provider_id}:slots"
    holder = uuid.uuid4().hex
    script = _redis().register_script(_SLOT_SCRIPT)
    deadline = time.monotonic() + wait_seconds
    delay = 0.01
    while True:
        now = _now_ms()
        lease_ms = int(lease_seconds * 1000)
        try:
            taken = script(keys=[key], args=[now, now + lease_ms, max_concurrency, holder, lease_ms * 2])
        except _UNREACHABLE as exc:
            raise LimitUnavailable(exc) from exc
        if taken:
            break
        if time.monotonic() > deadline:
            raise LimitTimeout(f"No free request slot of provider {provider_id} in {wait_seconds:.0f} s.")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    try:
        yield
    finally:
        try:
            _redis().zrem(key, holder)
        except _UNREACHABLE as exc:
            # The call is over and its answer must not be lost: the lease frees the slot.
            logger.warning("Provider %s's slot is left to its lease: %s", provider_id, LimitUnavailable(exc))


def take_rate_token(provider_id: int, *, requests_per_minute: int, wait_seconds: float) -> None:
    """Wait for one request of the provider's per-minute budget (a token bucket)."""
    key = f"tasktracker:llm:{provider_id}:bucket"
    script = _redis().register_script(_RATE_BUCKET_SCRIPT)
    rate_per_ms = requests_per_minute / 60_000
    # A burst of up to a tenth of a minute's budget (at least one request).
    capacity = max(1.0, requests_per_minute / 10)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            wait_ms = int(script(keys=[key], args=[capacity, rate_per_ms, _now_ms()]))
        except _UNREACHABLE as exc:
            raise LimitUnavailable(exc) from exc
        if wait_ms == 0:
            return
        if time.monotonic() + wait_ms / 1000 > deadline:
            raise LimitTimeout(
                f"Provider {provider_id}'s rate limit leaves no request free in {wait_seconds:.0f} s."
            )
        time.sleep(wait_ms / 1000)
