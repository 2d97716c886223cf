"""The LLM gateway: the only code that talks to the `openai` client.

`complete_json` sends one structured-output request to a provider's OpenAI-compatible
endpoint and returns the parsed, schema-validated answer with its usage. It owns every
retry (the SDK's own are off): 429, 5xx, timeouts and connection errors are retried with
exponential backoff and jitter, honouring Retry-After, and so is the Redis of the limits
when it cannot be reached; a refused key, an exhausted quota, an unknown model or a
redirect are permanent. A truncated answer (finish_reason=length), a refusal and an
answer that is not valid JSON for the schema are reported as such, not retried.
No redirect is followed: LLM_ALLOWED_HOSTS vets the configured URL only, and a provider
must not be able to send the key or the chat anywhere else.
Concurrency and rate limits per provider hold across every worker (`agents.limits`).
Usage counts every request sent and its seconds, failed and timed-out ones included.
API keys never reach a log line or an error message.
"""

import json
import logging
import random
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

import openai
from django.conf import settings
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import ResponseFormat
from openai.types.shared_params import ResponseFormatJSONObject

from agents.limits import LimitTimeout, LimitUnavailable, provider_slot, take_rate_token
from agents.models import LLMProvider
from agents.usage import LLMError, LLMResult, LLMUsage

logger = logging.getLogger(__name__)

# Response formats, best first: servers that lack one get the next. JSON_OBJECT_SCHEMA is
# llama.cpp's form (its server and llama-cpp-python's): JSON mode with the schema beside it,
# which they turn into a grammar, so that even a small model answers in the schema's shape.
JSON_SCHEMA, JSON_OBJECT_SCHEMA, JSON_OBJECT, PLAIN = (
    "json_schema",
    "json_object_schema",
    "json_object",
    "plain",
)
FORMATS = (JSON_SCHEMA, JSON_OBJECT_SCHEMA, JSON_OBJECT, PLAIN)
# How long a worker remembers the format an endpoint took, so that later calls start there
# instead of paying a refused request each; after that the best format is tried again (the
# server may have been upgraded).
FORMAT_MEMORY_SECONDS = 600.0
_formats_taken: dict[tuple[str, str], tuple[str, float]] = {}
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def _client(provider: LLMProvider) -> openai.OpenAI:
    # Local servers (Ollama, llama.cpp) take any key; the client insists on one.
    return _cached_client(provider.base_url, provider.api_key or "no-key", provider.timeout_seconds)


@lru_cache(maxsize=32)
def _cached_client(base_url: str, api_key: str, timeout: float) -> openai.OpenAI:
    """One client per endpoint, key and timeout, reused: building one loads the CA bundle
    (tens of milliseconds), and a reused one keeps its connections alive between calls.

    It follows no redirect (the SDK's own client does): a 3xx comes back as an error."""
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(follow_redirects=False),
    )


def validate_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError with the reason when `schema` is not a valid JSON Schema."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"Not a valid JSON Schema: {exc.message}") from exc


def parse_answer(content: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse an answer tolerantly (code fences, prose around the object) and validate it."""
    text = _FENCE.sub("", content.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise LLMError("malformed", "The answer is not valid JSON.") from None
        try:
            data = json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc:
            raise LLMError("malformed", f"The answer is not valid JSON: {exc.msg}.") from None
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "the answer"
        raise LLMError("schema_invalid", f"The answer does not match the schema at {where}: {first.message}")
    return data


def _response_format(kind: str, schema: dict[str, Any], name: str) -> ResponseFormat | None:
    if kind == JSON_SCHEMA:
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if kind == JSON_OBJECT_SCHEMA:
        # The schema beside `json_object` is the servers' extension (see `FORMATS`), which
        # the SDK's type does not know.
        return cast(ResponseFormatJSONObject, {"type": "json_object", "schema": schema})
    if kind == JSON_OBJECT:
        return {"type": "json_object"}
    return None


def _formats_to_try(provider: LLMProvider, model: str) -> list[str]:
    taken = _formats_taken.get((provider.base_url, model))
    if taken is None or time.monotonic() - taken[1] > FORMAT_MEMORY_SECONDS:
        return list(FORMATS)
    return list(FORMATS[FORMATS.index(taken[0]) :])


def _remember_format(provider: LLMProvider, model: str, fmt: str) -> None:
    _formats_taken[(provider.base_url, model)] = (fmt, time.monotonic())


def forget_response_formats() -> None:
    """Start every endpoint at the best format again (this process only)."""
    _formats_taken.clear()


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _backoff(attempt: int, retry_after: float | None) -> float:
    base = settings.LLM_BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)
    delay = min(settings.LLM_BACKOFF_CAP_SECONDS, base) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.LLM_BACKOFF_CAP_SECONDS))
    return delay


def _error_code(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str((error or {}).get("code") or (error or {}).get("type") or "")


def _redirect_error(
    provider: LLMProvider, exc: openai.APIStatusError, usage: LLMUsage | None = None
) -> LLMError:
    location = exc.response.headers.get("location") if exc.response is not None else None
    if not location:
        return LLMError(
            "redirect",
            f"{provider.name} answered a redirect ({exc.status_code}); redirects are not followed.",
            usage,
        )
    # Host and port only: a URL's path, query or user info may hold a secret.
    target = urlsplit(urljoin(provider.base_url, location)).netloc.rpartition("@")[2]
    return LLMError(
        "redirect", f"{provider.name} answered a redirect to {target}; redirects are not followed.", usage
    )


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    return "response_format" in str(exc.message).lower() or "json_schema" in str(exc.message).lower()


@dataclass
class _Failure:
    """What one failed request means for `complete_json`: drop the response format and ask
    again (`format_refused`), give up now (`error`), or retry after a backoff (`reason`,
    with the server's Retry-After when it sent one)."""

    error: LLMError | None = None
    reason: str = ""
    retry_after: float | None = None
    format_refused: bool = False


# What `_classify_failure` maps: the limits' errors and the client's HTTP and transport
# errors. Anything else (a bug, a malformed SDK response) propagates as it is.
_CLASSIFIED = (LimitTimeout, LimitUnavailable, openai.APIStatusError, openai.APIConnectionError)


def _classify_failure(
    exc: Exception, *, provider: LLMProvider, model: str, usage: LLMUsage, can_fall_back: bool
) -> _Failure:
    """Map an exception of one request to the gateway's error kinds.

    Permanent ones (a refused key, an exhausted quota, an unknown model, a redirect, a
    refused request) become an `LLMError` to raise; 429, 5xx, timeouts, connection errors
    and an unreachable Redis are retried. A server refusing the response format (400, or
    llama-cpp-python's 500 and FastAPI's 422) is asked again with the next one while
    `can_fall_back`. The order of the checks matters: the openai errors subclass
    `APIStatusError`, and `APITimeoutError` subclasses `APIConnectionError`.
    """
    if isinstance(exc, LimitTimeout):
        return _Failure(error=LLMError("rate_limited", str(exc), usage))
    if isinstance(exc, LimitUnavailable):
        # Retried like a provider's 5xx: a Redis restarting or failing over is back soon.
        logger.warning("%s: %s", provider.name, exc)
        return _Failure(reason="limiter_unavailable")
    if isinstance(exc, openai.AuthenticationError):
        return _Failure(error=LLMError("auth", f"{provider.name} refused the API key.", usage))
    if isinstance(exc, openai.PermissionDeniedError):
        return _Failure(error=LLMError("auth", f"{provider.name} denied access to model {model}.", usage))
    if isinstance(exc, openai.NotFoundError):
        return _Failure(error=LLMError("model_not_found", f"{provider.name} has no model {model!r}.", usage))
    if isinstance(exc, openai.RateLimitError):
        if _error_code(exc) == "insufficient_quota":
            return _Failure(
                error=LLMError("quota", f"{provider.name}: the account's quota is exhausted.", usage)
            )
        return _Failure(reason="rate_limited", retry_after=_retry_after(exc))
    if isinstance(exc, openai.APIStatusError):
        if 300 <= exc.status_code < 400:
            return _Failure(error=_redirect_error(provider, exc, usage))
        if _rejects_response_format(exc) and can_fall_back:
            return _Failure(format_refused=True)
        if isinstance(exc, openai.BadRequestError):
            return _Failure(
                error=LLMError("bad_request", f"{provider.name} refused the request: {exc.message}", usage)
            )
        if exc.status_code < 500:
            return _Failure(
                error=LLMError("bad_request", f"{provider.name} answered {exc.status_code}.", usage)
            )
        return _Failure(reason="server_error", retry_after=_retry_after(exc))
    if isinstance(exc, openai.APITimeoutError):
        return _Failure(reason="timeout")
    return _Failure(reason="connection")


def _send(
    *,
    client: openai.OpenAI,
    provider: LLMProvider,
    usage: LLMUsage,
    fmt: str,
    schema: dict[str, Any],
    schema_name: str,
    **request: Any,
) -> ChatCompletion:
    """Send one chat completion request within the provider's limits (a rate token, then a
    concurrency slot held for the request only), and count its seconds and tokens in
    `usage` whether it is answered or not."""
    take_rate_token(provider.pk, requests_per_minute=provider.requests_per_minute, wait_seconds=300)
    with provider_slot(
        provider.pk,
        max_concurrency=provider.max_concurrency,
        lease_seconds=provider.timeout_seconds + 30,
        wait_seconds=300,
    ):
        started = time.monotonic()
        try:
            response = client.chat.completions.create(
                **request, response_format=_response_format(fmt, schema, schema_name) or openai.omit
            )
        finally:
            usage.add_request(time.monotonic() - started)
    usage.add_tokens(provider, response.usage)
    return response


def complete_json(
    *,
    provider: LLMProvider,
    model: str,
    system_prompt: str,
    user_prompt: str,
    schema: dict[str, Any],
    schema_name: str = "answer",
    temperature: float = 0.2,
    max_output_tokens: int = 2048,
    request_schema: dict[str, Any] | None = None,
) -> LLMResult:
    """Ask for a JSON answer matching `schema`; return it parsed, with usage.

    `request_schema`, when given, is what the server is sent instead: a narrower schema (a
    batch's own message numbers) that a grammar or strict mode enforces, while the answer is
    validated against `schema`, so a server that ignores it fails one item, not the answer.
    Raises `LLMError` (with the usage spent so far) when no usable answer came.
    """
    client = _client(provider)
    usage = LLMUsage()
    formats = _formats_to_try(provider, model)
    max_attempts = settings.LLM_MAX_ATTEMPTS
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}]
    attempt = 0
    while True:
        attempt += 1
        usage.attempts = attempt
        fmt = formats[0]
        try:
            response = _send(
                client=client,
                provider=provider,
                usage=usage,
                fmt=fmt,
                schema=request_schema or schema,
                schema_name=schema_name,
                model=model,
                messages=messages,
                temperature=temperature,
                max_tokens=max_output_tokens,
            )
        except _CLASSIFIED as exc:
            failure = _classify_failure(
                exc, provider=provider, model=model, usage=usage, can_fall_back=len(formats) > 1
            )
        else:
            _remember_format(provider, model, fmt)
            return _answer(response, schema=schema, usage=usage, model=model, fmt=fmt)
        if failure.format_refused:
            logger.info("%s does not take response_format %s; falling back", provider.name, fmt)
            formats.pop(0)
            attempt -= 1  # a format fallback is not a failed attempt
            continue
        if failure.error is not None:
            raise failure.error
        if attempt >= max_attempts:
            raise LLMError(failure.reason, _give_up_message(provider, failure.reason, attempt), usage)
        delay = _backoff(attempt, failure.retry_after)
        logger.warning(
            "%s: %s on attempt %d; retrying in %.1f s", provider.name, failure.reason, attempt, delay
        )
        time.sleep(delay)


def _give_up_message(provider: LLMProvider, reason: str, attempts: int) -> str:
    what = {
        "connection": f"cannot be reached at {provider.base_url}",
        "timeout": f"did not answer within {provider.timeout_seconds:.0f} s",
        "rate_limited": "kept answering 429 (rate limited)",
        "server_error": "kept answering with server errors",
        "limiter_unavailable": "could not be called: Redis, which holds its rate limits, cannot be reached",
    }[reason]
    return f"{provider.name} {what} ({attempts} attempts)."


def _answer(response: Any, *, schema: dict[str, Any], usage: LLMUsage, model: str, fmt: str) -> LLMResult:
    if not response.choices:
        raise LLMError("malformed", "The answer has no choices.", usage)
    choice = response.choices[0]
    refusal = getattr(choice.message, "refusal", None)
    if refusal:
        raise LLMError("refused", f"The model refused: {refusal}", usage)
    if choice.finish_reason == "length":
        raise LLMError("truncated", "The answer was cut off at the output token limit.", usage)
    try:
        data = parse_answer(choice.message.content or "", schema)
    except LLMError as exc:
        exc.usage = usage
        raise
    return LLMResult(data=data, usage=usage, model=model, response_format=fmt)


def list_models(*, provider: LLMProvider) -> list[str]:
    """The provider's model ids (GET /models). Raises LLMError when it cannot be reached."""
    try:
        return sorted(model.id for model in _client(provider).models.list())
    except openai.AuthenticationError:
        raise LLMError("auth", f"{provider.name} refused the API key.") from None
    except openai.APIStatusError as exc:
        if 300 <= exc.status_code < 400:
            raise _redirect_error(provider, exc) from None
        raise LLMError(
            "bad_request", f"{provider.name} answered {exc.status_code} to the model list."
        ) from None
    except openai.APITimeoutError:
        raise LLMError(
            "timeout", f"{provider.name} did not answer in {provider.timeout_seconds:.0f} s."
        ) from None
    except openai.APIConnectionError:
        raise LLMError("connection", f"{provider.name} cannot be reached at {provider.base_url}.") from None


__all__ = [
    "LLMError",
    "LLMResult",
    "LLMUsage",
    "complete_json",
    "forget_response_formats",
    "list_models",
    "parse_answer",
    "validate_schema",
]
