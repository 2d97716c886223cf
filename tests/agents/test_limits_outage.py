"""Outages the gateway rides out, and what they cost.

A provider that times out costs its seconds: usage counts every attempt's, answered or
not. The Redis of the limits (`agents.limits`) down is retried like a provider's 5xx and,
if it stays down, is a transient error (a failed batch that can be retried), not an
internal one; a short outage is ridden out, and an answer is not lost to Redis going away
while the call holds its slot. Redis is real: a closed port, or a redis-server of the
test's own that it stops (and starts again)."""

import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from agents.defaults import DEFAULT_RESPONSE_SCHEMA
from agents.llm import complete_json
from agents.models import LLMProvider
from agents.usage import LLMError, LLMResult
from analysis import services
from analysis.models import AnalysisRun, Batch
from tasktracker.embedded import free_port, start_redis, stop
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import LLMProviderFactory
from tests.fakes.openai_server import FakeOpenAI, FakeReply

pytestmark = pytest.mark.django_db

ANSWER = {"proposals": []}
LINES = ["The Android app crashes on login since 2.3.1", "Please update the release checklist"]


@pytest.fixture
def provider(fake_openai: FakeOpenAI) -> LLMProvider:
    return LLMProviderFactory(base_url=fake_openai.base_url, timeout_seconds=2.0, requests_per_minute=6000)


@pytest.fixture
def redis_down(settings: Any) -> None:
    """The limits' Redis at a port where nothing listens."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"


def ask(provider: LLMProvider) -> LLMResult:
    return complete_json(
        provider=provider,
        model="fake-model",
        system_prompt="Extract tasks.",
        user_prompt="[1] alice: the app crashes on login",
        schema=DEFAULT_RESPONSE_SCHEMA,
    )


def planned_batch(setup: dict[str, Any]) -> tuple[AnalysisRun, int]:
    """A running run of one batch, planned and not processed yet."""
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    services.begin_run(run_id=run.pk)
    (batch_id,) = services.plan_run(run_id=run.pk)
    return run, batch_id


# A provider that times out


def test_timed_out_attempts_add_their_seconds_to_usage(fake_openai: FakeOpenAI, provider, settings) -> None:
    settings.LLM_MAX_ATTEMPTS = 2
    provider.timeout_seconds = 0.3
    fake_openai.queue(FakeReply.hang(1), FakeReply.hang(1))

    with pytest.raises(LLMError) as error:
        ask(provider)

    assert error.value.kind == "timeout"
    assert error.value.usage.calls == 2
    assert error.value.usage.latency_seconds >= 0.55  # two waits of 0.3 s, not ~0


def test_an_answer_after_a_timeout_counts_the_seconds_of_both(fake_openai: FakeOpenAI, provider) -> None:
    provider.timeout_seconds = 0.3
    fake_openai.queue(FakeReply.hang(1), FakeReply.ok(ANSWER))

    result = ask(provider)

    assert (result.usage.attempts, result.usage.calls) == (2, 2)
    assert result.usage.latency_seconds >= 0.3
    assert result.usage.prompt_tokens == 120  # the answered attempt's only


def test_a_batch_that_timed_out_counts_the_seconds_it_waited(fake_openai: FakeOpenAI, settings) -> None:
    settings.LLM_MAX_ATTEMPTS = 2
    setup = make_setup(fake_openai.base_url, budget=10_000, lines=LINES)
    LLMProvider.objects.filter(pk=setup["assignment"].agent.provider_id).update(timeout_seconds=0.3)
    fake_openai.default = lambda request: FakeReply.hang(1)
    run, batch_id = planned_batch(setup)

    services.process_batch(batch_id=batch_id, claim_id="test")

    batch = Batch.objects.get(pk=batch_id)
    run.refresh_from_db()
    assert (batch.status, batch.error_kind) == (Batch.Status.FAILED, "timeout")
    assert (batch.llm_calls, run.llm_calls) == (2, 2)
    assert batch.llm_seconds >= 0.55
    assert run.llm_seconds == pytest.approx(batch.llm_seconds)


# The limits' Redis down


def test_an_unreachable_limiter_is_retried_then_a_transient_error(
    fake_openai: FakeOpenAI, provider, settings, redis_down: None, caplog: pytest.LogCaptureFixture
) -> None:
    settings.LLM_MAX_ATTEMPTS = 3
    caplog.set_level(logging.WARNING, logger="agents.llm")

    with pytest.raises(LLMError) as error:
        ask(provider)

    assert error.value.kind == "limiter_unavailable"
    assert not error.value.permanent
    assert error.value.message == (
        f"{provider.name} could not be called: Redis, which holds its rate limits, cannot be reached "
        "(3 attempts)."
    )
    assert error.value.usage.attempts == 3
    assert fake_openai.completion_requests() == []  # no limit taken, no call
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert [m.split(" on attempt")[0] for m in retries] == [f"{provider.name}: limiter_unavailable"] * 2


def test_a_batch_whose_limiter_is_down_goes_back_to_the_queue_then_is_done(
    fake_openai: FakeOpenAI, settings
) -> None:
    settings.LLM_MAX_ATTEMPTS = 2
    setup = make_setup(fake_openai.base_url, budget=10_000, lines=LINES)
    run, batch_id = planned_batch(setup)
    redis_url = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    services.process_batch(batch_id=batch_id, claim_id="first")

    batch = Batch.objects.get(pk=batch_id)
    assert (batch.status, batch.error_kind, batch.attempts) == (
        Batch.Status.PENDING,
        "limiter_unavailable",
        1,
    )
    assert "Redis" in batch.error and "Tried again in 30 s" in batch.error
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.RUNNING
    assert batch_id in services.requeued_batches().values_list("pk", flat=True)

    settings.REDIS_URL = redis_url  # Redis is back.
    services.process_batch(batch_id=batch_id, claim_id="second")

    batch.refresh_from_db()
    assert (batch.status, batch.error) == (Batch.Status.DONE, "")
    run.refresh_from_db()
    assert (run.status, run.batches_failed) == (AnalysisRun.Status.COMPLETED, 0)


def test_a_batch_whose_limiter_stays_down_fails_retryably_after_its_attempts(
    fake_openai: FakeOpenAI, settings
) -> None:
    settings.LLM_MAX_ATTEMPTS = 1
    settings.ANALYSIS_MAX_BATCH_ATTEMPTS = 2
    setup = make_setup(fake_openai.base_url, budget=10_000, lines=LINES)
    run, batch_id = planned_batch(setup)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    for attempt in range(2):
        services.process_batch(batch_id=batch_id, claim_id=f"attempt-{attempt}")

    batch = Batch.objects.get(pk=batch_id)
    assert (batch.status, batch.error_kind) == (Batch.Status.FAILED, "limiter_unavailable")
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.FAILED
    assert services.retry_failed_batches(run=run) == 1


def test_the_limiter_rides_out_a_short_redis_outage(
    fake_openai: FakeOpenAI, provider, settings, tmp_path: Path
) -> None:
    settings.LLM_MAX_ATTEMPTS = 10
    settings.LLM_BACKOFF_BASE_SECONDS = 0.1
    settings.LLM_BACKOFF_CAP_SECONDS = 0.5
    port = free_port()
    servers: list[subprocess.Popen] = [start_redis(port, tmp_path, persist=False)]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    restart = threading.Timer(0.3, lambda: servers.append(start_redis(port, tmp_path, persist=False)))
    try:
        ask(provider)  # the limiter's connection is open when Redis goes away
        stop(servers[0])
        restart.start()
        result = ask(provider)
        restart.join()
    finally:
        restart.cancel()
        for server in servers:
            stop(server)

    assert result.data == ANSWER
    assert result.usage.attempts > 1
    assert result.usage.calls == 1
    assert len(servers) == 2  # it was answered by the restarted Redis


def test_an_answer_is_kept_when_redis_goes_away_during_the_call(
    fake_openai: FakeOpenAI, provider, settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = start_redis(port, tmp_path, persist=False)
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"

    def answer_after_redis_stopped(request: dict[str, Any]) -> FakeReply:
        stop(server)  # while the call holds its slot
        return FakeReply.ok(ANSWER)

    fake_openai.default = answer_after_redis_stopped
    caplog.set_level(logging.WARNING, logger="agents.limits")
    try:
        result = ask(provider)
    finally:
        stop(server)

    assert result.data == ANSWER
    assert (result.usage.attempts, result.usage.calls) == (1, 1)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "agents.limits"]
    assert warning.startswith(f"Provider {provider.pk}'s slot is left to its lease")
