"""The gateway against a real HTTP server speaking the OpenAI API, with the real client."""

import threading
import time
from decimal import Decimal

import pytest

from agents import llm
from agents.defaults import DEFAULT_RESPONSE_SCHEMA
from agents.llm import JSON_OBJECT, JSON_OBJECT_SCHEMA, JSON_SCHEMA, LLMError, complete_json, list_models
from agents.models import LLMProvider
from tests.factories import LLMProviderFactory
from tests.fakes.openai_server import REFUSED_KEY, FakeOpenAI, FakeReply

pytestmark = pytest.mark.django_db

PROPOSAL = {
    "title": "Fix the login crash on Android 14",
    "description": "The app crashes after tapping Log in.",
    "project": "acme-mobile",
    "assignee": None,
    "priority": "high",
    "category": "bug",
    "tags": ["android"],
    "due_date": None,
    "confidence": 0.93,
    "reasoning": "A reproducible crash reported twice.",
    "recommendation": "new_task",
    "source_message_ids": [3, 4],
}
ANSWER = {"proposals": [PROPOSAL]}


@pytest.fixture
def provider(fake_openai: FakeOpenAI) -> LLMProvider:
    return LLMProviderFactory(
        base_url=fake_openai.base_url,
        timeout_seconds=2.0,
        price_per_1k_input=Decimal("0.5"),
        price_per_1k_output=Decimal("1.5"),
        max_concurrency=4,
        requests_per_minute=6000,
    )


def ask(provider: LLMProvider, model: str = "fake-model") -> object:
    return complete_json(
        provider=provider,
        model=model,
        system_prompt="Extract tasks.",
        user_prompt="[3] alice: the app crashes on login",
        schema=DEFAULT_RESPONSE_SCHEMA,
    )


def test_a_good_answer_comes_back_parsed_with_usage_and_cost(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.ok(ANSWER))
    result = ask(provider)
    assert result.data == ANSWER
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (120, 40)
    assert result.usage.attempts == 1
    assert result.usage.cost == Decimal("0.12")  # 120 * 0.5/1k + 40 * 1.5/1k
    assert result.usage.latency_seconds > 0
    request = fake_openai.completion_requests()[0]
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["schema"] == DEFAULT_RESPONSE_SCHEMA
    assert request["_auth"] == f"Bearer {provider.api_key}"


def test_malformed_json_is_reported_not_retried(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.malformed())
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "malformed"
    assert error.value.usage.prompt_tokens == 120
    assert len(fake_openai.completion_requests()) == 1


def test_an_answer_outside_the_schema_is_refused_with_where(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.ok({"proposals": [{**PROPOSAL, "confidence": 1.7}]}))
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "schema_invalid"
    assert "proposals/0/confidence" in error.value.message


def test_code_fences_and_prose_around_the_json_are_tolerated(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.text('Here you go:\n```json\n{"proposals": []}\n```'))
    assert ask(provider).data == {"proposals": []}


def test_429_waits_for_retry_after_then_succeeds(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.error(429, "slow down", retry_after="1"), FakeReply.ok(ANSWER))
    started = time.monotonic()
    result = ask(provider)
    assert time.monotonic() - started >= 1.0
    assert result.data == ANSWER
    assert result.usage.attempts == 2
    assert len(fake_openai.completion_requests()) == 2


def test_500_then_200_succeeds_on_the_second_attempt(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.error(500, "boom"), FakeReply.ok(ANSWER))
    result = ask(provider)
    assert result.data == ANSWER
    assert result.usage.attempts == 2


def test_persistent_5xx_gives_up_after_the_configured_attempts(
    fake_openai: FakeOpenAI, provider, settings
) -> None:
    settings.LLM_MAX_ATTEMPTS = 3
    fake_openai.queue(*[FakeReply.error(503, "overloaded")] * 5)
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "server_error"
    assert not error.value.permanent
    assert len(fake_openai.completion_requests()) == 3


def test_a_hanging_server_times_out_and_is_retried(fake_openai: FakeOpenAI, provider, settings) -> None:
    settings.LLM_MAX_ATTEMPTS = 2
    provider.timeout_seconds = 0.5
    fake_openai.queue(FakeReply.hang(3), FakeReply.ok(ANSWER))
    started = time.monotonic()
    result = ask(provider)
    assert result.data == ANSWER
    assert result.usage.attempts == 2
    assert time.monotonic() - started < 3


def test_a_server_hanging_every_time_fails_with_timeout(fake_openai: FakeOpenAI, provider, settings) -> None:
    settings.LLM_MAX_ATTEMPTS = 2
    provider.timeout_seconds = 0.3
    fake_openai.queue(FakeReply.hang(2), FakeReply.hang(2))
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "timeout"


def test_a_refused_key_is_permanent_and_never_retried(fake_openai: FakeOpenAI, provider) -> None:
    provider.api_key = REFUSED_KEY
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "auth"
    assert error.value.permanent
    assert REFUSED_KEY not in error.value.message
    assert len(fake_openai.completion_requests()) == 1


def test_an_exhausted_quota_is_permanent(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.error(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "quota"
    assert len(fake_openai.completion_requests()) == 1


def test_an_unknown_model_is_reported(fake_openai: FakeOpenAI, provider) -> None:
    with pytest.raises(LLMError) as error:
        ask(provider, model="no-such-model")
    assert error.value.kind == "model_not_found"
    assert "no-such-model" in error.value.message


def test_a_truncated_answer_is_recorded_as_such(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.truncated())
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "truncated"
    assert error.value.usage.completion_tokens == 40


def test_a_refusal_is_recorded_as_such(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.queue(FakeReply.refused())
    with pytest.raises(LLMError) as error:
        ask(provider)
    assert error.value.kind == "refused"


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_server_without_json_schema_gets_the_schema_in_json_mode(
    fake_openai: FakeOpenAI, provider, status
) -> None:
    # OpenAI answers 400, FastAPI servers 422, llama-cpp-python's server 500.
    fake_openai.reject_status = status
    fake_openai.reject_response_format = {"json_schema"}
    fake_openai.queue(FakeReply.ok(ANSWER))
    result = ask(provider)
    assert result.data == ANSWER
    assert result.response_format == JSON_OBJECT_SCHEMA
    sent = [r["response_format"] for r in fake_openai.completion_requests()]
    assert [f["type"] for f in sent] == ["json_schema", "json_object"]
    # llama.cpp's form: JSON mode with the schema beside it, which it makes a grammar of.
    assert sent[1]["schema"] == DEFAULT_RESPONSE_SCHEMA


def test_a_server_with_plain_json_mode_only_gets_it(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.reject_response_format = {"json_schema", "json_object_schema"}
    fake_openai.queue(FakeReply.ok(ANSWER))
    result = ask(provider)
    assert result.data == ANSWER
    assert result.response_format == JSON_OBJECT
    assert [r["response_format"] for r in fake_openai.completion_requests()][1:] == [
        {"type": "json_object", "schema": DEFAULT_RESPONSE_SCHEMA},
        {"type": "json_object"},
    ]


def test_the_format_an_endpoint_took_is_where_the_next_call_starts(fake_openai: FakeOpenAI, provider) -> None:
    fake_openai.reject_response_format = {"json_schema"}
    ask(provider)
    first = len(fake_openai.completion_requests())
    result = ask(provider)
    assert first == 2
    assert len(fake_openai.completion_requests()) == 3
    assert result.response_format == JSON_OBJECT_SCHEMA
    assert result.usage.calls == 1


def test_a_remembered_format_is_tried_again_after_a_while(
    fake_openai: FakeOpenAI, provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_openai.reject_response_format = {"json_schema"}
    ask(provider)
    fake_openai.reject_response_format = set()  # the server was upgraded
    monkeypatch.setattr(llm, "FORMAT_MEMORY_SECONDS", 0.0)
    result = ask(provider)
    assert result.response_format == JSON_SCHEMA


def test_concurrency_is_limited_per_provider(fake_openai: FakeOpenAI, provider) -> None:
    provider.max_concurrency = 2
    provider.save()
    in_flight, peak = 0, 0
    lock = threading.Lock()

    def answer(request: dict) -> FakeReply:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.2)
        with lock:
            in_flight -= 1
        return FakeReply.ok({"proposals": []})

    fake_openai.default = answer
    threads = [threading.Thread(target=ask, args=(provider,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_openai.completion_requests()) == 6
    assert peak == 2


def test_the_model_list_is_read_from_the_provider(fake_openai: FakeOpenAI, provider) -> None:
    assert list_models(provider=provider) == ["fake-model", "fake-model-large"]


def test_an_unreachable_provider_is_a_clear_error(provider) -> None:
    provider.base_url = "http://127.0.0.1:9/v1"
    with pytest.raises(LLMError) as error:
        list_models(provider=provider)
    assert error.value.kind == "connection"
    assert "cannot be reached" in error.value.message
