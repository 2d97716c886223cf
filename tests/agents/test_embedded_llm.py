"""The embedded model (tasktracker/embedded_llm.py, SmolLM2-135M in llama.cpp's server from the
xllamacpp wheel) with the real `openai` client and the real pipeline: `pytest -m llm`.

A 135M model is weak: these tests check that it is served, that `make run`'s launcher starts
and stops it, and that the demo's run ends in schema-valid answers and proposals; the quality
of those proposals is measured in bench/embedded_llm.py and the README, not here.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from agents.llm import complete_json, list_models
from agents.models import Agent
from agents.prompts import batch_schema
from analysis import services
from analysis.forms import NewRunForm
from analysis.models import AnalysisRun, Batch
from proposals.models import TaskProposal
from tasktracker.celery import app as celery_app
from tasktracker.embedded import free_port, port_is_open
from tasktracker.embedded_llm import DEFAULT_MODEL, base_url, served_models, start_server, stop_server

BASE_DIR = Path(__file__).resolve().parent.parent.parent

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("xllamacpp") is None,
        reason="the embedded model server is not installed: make install",
    ),
]


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("embedded-llm") / "server.log"
    with log_path.open("wb") as log:
        try:
            process = start_server(port=port, log=log)
        except Exception as exc:
            pytest.fail(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}")
    yield port
    stop_server(process)
    assert not port_is_open(port)


@pytest.fixture
def demo_agent(server_port: int, settings: object, db: None) -> Agent:
    settings.EMBEDDED_LLM_PORT = server_port
    call_command("load_demo")
    return Agent.objects.select_related("provider").get(name="Demo agent")


def test_the_server_lists_the_model_it_serves(demo_agent: Agent) -> None:
    assert list_models(provider=demo_agent.provider) == [DEFAULT_MODEL]


def test_an_answer_in_the_small_shape_comes_back_valid_with_usage(demo_agent: Agent) -> None:
    task_config = demo_agent.task_configs.get()
    result = complete_json(
        provider=demo_agent.provider,
        model=demo_agent.model,
        system_prompt=task_config.instructions,
        user_prompt="<messages>\n#1 Ann: the export crashes, Tom can you fix it?\n#2 Tom: sure\n</messages>",
        schema=batch_schema(task_config.response_schema, 2),
        temperature=demo_agent.temperature,
        max_output_tokens=demo_agent.max_output_tokens,
    )

    for item in result.data["proposals"]:
        assert item["source_message_ids"][0] in (1, 2)
        assert 8 <= len(item["title"]) <= 60
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens > 0


def test_the_demos_default_run_ends_in_valid_answers_and_proposals(demo_agent: Agent) -> None:
    """The New run page's defaults, through the pipeline's services: at least 90% of batches
    valid, at least 3 proposals."""
    lead = get_user_model().objects.get(username="alice")
    defaults = NewRunForm(user=lead)
    form = NewRunForm({name: field.initial for name, field in defaults.fields.items()}, user=lead)
    assert form.is_valid(), form.errors
    run = services.start_run(**form.cleaned_data, user=lead)
    celery_app.control.purge()  # this test plays the worker
    services.begin_run(run_id=run.pk)
    for batch_id in services.plan_run(run_id=run.pk):
        services.process_batch(batch_id=batch_id, claim_id=f"llm-test-{batch_id}")

    run.refresh_from_db()
    failed = list(Batch.objects.filter(run=run, status=Batch.Status.FAILED).values_list("error", flat=True))
    assert run.status == AnalysisRun.Status.COMPLETED
    assert run.batches_total >= 3
    assert run.batches_done >= 0.9 * run.batches_total, failed
    assert TaskProposal.objects.filter(run=run).count() >= 3
    assert run.llm_calls >= run.batches_total


def test_make_runs_launcher_starts_the_model_with_the_rest_and_stops_it_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("EMBEDDED_REDIS_PORT", "EMBEDDED_LLM_PORT", "PORT")}
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "EMBEDDED_LLM"}}
    env.update({name: str(port) for name, port in ports.items()})
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", SECRET_KEY="launcher-test-" + "x" * 40)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=BASE_DIR, check=True)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tasktracker.embedded", "run"],
        env=env, cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not any("Tasktracker is running" in line for line in output):
            line = launcher.stdout.readline()
            assert line or launcher.poll() is None, "".join(output)
            output.append(line)
            assert time.monotonic() < deadline, "".join(output)
        url = base_url(ports["EMBEDDED_LLM_PORT"])
        assert served_models(url) == [DEFAULT_MODEL]
        assert any(f"Embedded model {DEFAULT_MODEL} on {url}" in line for line in output)
        assert any("Demo agent" in line and "Embedded model" in line for line in output)

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(60) == 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    for name, port in ports.items():
        assert not port_is_open(port), f"{name} {port} still open after Ctrl-C"
