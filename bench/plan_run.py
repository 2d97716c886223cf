"""Planning a run over a large window: peak memory, seconds, batches, time to the first batch.

    .venv/bin/python bench/plan_run.py [--messages 1000000] [--chunk N] [--reuse]
        [--database-url postgres://postgres@127.0.0.1:5432/tasktracker_bench_plan] [--smoke]

Fills a PostgreSQL database (its name must hold "bench": it is dropped and created again)
with `--messages` messages of one team chat (the texts and rhythm of `bench/pipeline.py`: noise,
chatter, multi-sentence updates, a quarter replies, a few meeting breaks), written with COPY,
read by one project; starts and begins a run over the whole window, then plans it
(`analysis.services.plan_run`) in a child process of its own, as a Celery worker would. The
child prints its peak RSS (getrusage), its RSS before planning, the seconds planning took, the
batches it wrote, and the seconds until the first batch was handed over to be queued (the
planning's `on_batches` callback, called when a bounded transaction commits; a planning
without one hands its batches over when it returns). The batches are not sent to a broker:
no worker runs here. `--reuse` keeps a database that already holds the messages (its runs
are deleted), to compare code changes without writing a million rows again. `--smoke` runs at
tiny sizes (5,000 messages, never reused), to check that the bench works; unless
`--database-url` is given, on a database of its own (the default's name + "_smoke", dropped at
the end), so that a kept million-row database survives it.

Goal (issue "Costs that stay flat as the work grows", item 1): peak RSS of the planning
process under 300 MB whatever the window. Prints the machine's load average beside the
figures; exits 0 unless a step crashed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
GOAL_PEAK_RSS_MB = 300.0
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/tasktracker_bench_plan"
SMOKE_URL = DEFAULT_URL + "_smoke"
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # a Monday


@functools.cache
def _chat_texts() -> Any:
    """bench/pipeline.py's chat, loaded from its file (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_pipeline", BASE_DIR / "bench" / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def message_rows(count: int, chat_id: int, seed: int = 42) -> Iterator[tuple[Any, ...]]:
    """`count` messages as COPY rows, generated as they are written (nothing kept)."""
    chat = _chat_texts()
    rng = random.Random(seed)
    at = START
    now = datetime.now(UTC)
    for telegram_id in range(1, count + 1):
        at += timedelta(seconds=rng.expovariate(1 / 25))
        if rng.random() < 0.003:
            at += timedelta(minutes=rng.randint(61, 120))
        if at.hour >= 19:
            at = (at + timedelta(days=1)).replace(hour=8, minute=rng.randint(0, 30))
        while at.weekday() >= 5:
            at += timedelta(days=1)
        reply_to = None
        if telegram_id > 1 and rng.random() < 0.25:
            reply_to = rng.randint(max(1, telegram_id - 20), telegram_id - 1)
        author = rng.choice(chat.PEOPLE)
        yield (
            chat_id,
            telegram_id,
            5000 + chat.PEOPLE.index(author),
            author,
            chat._text(rng),
            at,
            reply_to,
            "",
            "{}",
            now,
            now,
        )


def _postgres_admin(url: str) -> tuple[Any, Any]:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = str(conninfo_to_dict(url).get("dbname") or "")
    if "bench" not in name:
        raise SystemExit(f"Refusing to drop and recreate database {name!r}: its name must contain 'bench'.")
    return psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True), sql.Identifier(name)


def recreate_database(url: str, *, create: bool = True) -> None:
    """Drop the database (and create it again, empty, unless `create` is false)."""
    from psycopg import sql

    admin, name = _postgres_admin(url)
    with admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if create:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))


def database_exists(url: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    admin, _ = _postgres_admin(url)
    with admin:
        name = conninfo_to_dict(url)["dbname"]
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def django_setup(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()


def fill(count: int) -> None:
    """A project reading one chat of `count` messages, an agent, its assignment."""
    from django.db import connection

    from agents.models import Agent, AgentTaskAssignment, LLMProvider
    from agents.services import ensure_default_task_config
    from projects.models import Project, ProjectConfig
    from sources.models import Chat

    chat_texts = _chat_texts()
    project = Project.objects.create(name="Acme Mobile", slug="acme-mobile")
    chat = Chat.objects.create(telegram_id=-1001234567890, title="Acme Mobile Team", type="supergroup")
    config = ProjectConfig.objects.create(
        project=project,
        description="The Acme mobile apps.",
        keywords=chat_texts.KEYWORDS,
        exclude_keywords=chat_texts.EXCLUDE_KEYWORDS,
    )
    config.chats.set([chat])
    provider = LLMProvider(name="Nowhere", base_url="http://127.0.0.1:9/v1", timeout_seconds=30)
    provider.api_key = "sk-bench-not-a-key"
    provider.save()
    agent = Agent.objects.create(name="Bench agent", provider=provider, model="none", system_prompt="-")
    AgentTaskAssignment.objects.create(agent=agent, task_config=ensure_default_task_config())
    columns = (
        "chat_id, telegram_id, author_id, author_name, text, sent_at, reply_to_telegram_id,"
        " forwarded_from, raw, created_at, updated_at"
    )
    with (
        connection.cursor() as cursor,
        cursor.connection.cursor() as raw,
        raw.copy(f"COPY sources_message ({columns}) FROM STDIN") as copy,
    ):
        for row in message_rows(count, chat.pk):
            copy.write_row(row)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE sources_message")


def start(count: int) -> int:
    """Start and begin a run over every message; its id."""
    from django.db.models import Max, Min

    from agents.models import AgentTaskAssignment
    from analysis.models import AnalysisRun
    from analysis.services import begin_run, start_run
    from projects.models import Project
    from sources.models import Message

    AnalysisRun.objects.all().delete()
    found = Message.objects.count()
    if found != count:
        raise SystemExit(f"The database holds {found} messages, not {count}: run without --reuse.")
    span = Message.objects.aggregate(first=Min("sent_at"), last=Max("sent_at"))
    run = start_run(
        window_start=span["first"],
        window_end=span["last"] + timedelta(seconds=1),
        projects=list(Project.objects.all()),
        assignment=AgentTaskAssignment.objects.get(),
    )
    begin_run(run_id=run.pk)
    return run.pk


def child(run_id: int, chunk: int | None) -> None:
    """Plan the run; print the figures as JSON."""
    from analysis.models import AnalysisRun
    from analysis.services import plan_run

    rss_before = _rss_now_mb()
    handed: list[float] = []
    started = time.perf_counter()

    def on_batches(batch_ids: list[int]) -> None:
        if batch_ids and not handed:
            handed.append(time.perf_counter() - started)

    parameters = inspect.signature(plan_run).parameters
    kwargs: dict[str, Any] = {}
    if "on_batches" in parameters:
        kwargs["on_batches"] = on_batches
    if chunk and "chunk_size" in parameters:
        kwargs["chunk_size"] = chunk
    batch_ids = plan_run(run_id=run_id, **kwargs)
    seconds = time.perf_counter() - started
    if not handed:  # planned in one go: the task queues its batches once it returns
        handed.append(seconds)
    run = AnalysisRun.objects.get(pk=run_id)
    print(
        json.dumps(
            {
                "streaming": "on_batches" in parameters,
                "rss_before_mb": rss_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "seconds": seconds,
                "first_batch_seconds": handed[0],
                "batches": len(batch_ids),
                "batches_total": run.batches_total,
                "messages_fetched": run.messages_fetched,
                "messages_kept": run.messages_kept,
                "status": run.status,
            }
        )
    )


def _rss_now_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=0, help="plan_run's chunk_size (default: its own)")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--reuse", action="store_true", help="keep a database already holding the messages")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.reuse = 5000, False
        if args.database_url == DEFAULT_URL:
            args.database_url = SMOKE_URL
    if not args.database_url.startswith("postgres"):
        raise SystemExit("This bench runs on PostgreSQL.")
    if args.child:
        django_setup({})
        child(args.child, args.chunk or None)
        return 0

    sys.path.insert(0, str(BASE_DIR))
    from tasktracker.embedded import free_port, start_redis

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        redis = start_redis(port, Path(tmp) / "redis", persist=False)
        env = {
            "DATABASE_URL": args.database_url,
            "SECRET_KEY": "bench-plan-run-not-a-secret",
            "DEBUG": "0",  # DEBUG keeps every query in memory
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "DJANGO_SETTINGS_MODULE": "tasktracker.settings",
            "LOG_LEVEL": "WARNING",
            "CONN_MAX_AGE": "0",
        }
        try:
            reuse = args.reuse and database_exists(args.database_url)
            if not reuse:
                recreate_database(args.database_url)
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                env={**os.environ, **env},
                cwd=BASE_DIR,
                check=True,
            )
            django_setup(env)
            if not reuse:
                began = time.perf_counter()
                fill(args.messages)
                print(f"Wrote {args.messages:,} messages with COPY in {time.perf_counter() - began:.1f} s")
            run_id = start(args.messages)
            load_before = os.getloadavg()
            completed = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(run_id)]
                + (["--chunk", str(args.chunk)] if args.chunk else []),
                env={**os.environ, **env},
                cwd=BASE_DIR,
                capture_output=True,
                text=True,
                check=False,
            )
            load_after = os.getloadavg()
        finally:
            redis.terminate()
            redis.wait()
            if args.smoke and args.database_url == SMOKE_URL:
                recreate_database(args.database_url, create=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        return 1
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    report(args, figures, load_before, load_after)
    return 0


def report(
    args: argparse.Namespace,
    figures: dict[str, Any],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    peak = figures["peak_rss_mb"]
    mode = "streaming (bounded transactions)" if figures["streaming"] else "one pass (one transaction)"
    print(f"plan_run over {args.messages:,} messages on PostgreSQL, {mode}")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), 2 cores")
    print(f"  messages fetched {figures['messages_fetched']:,}, kept {figures['messages_kept']:,}")
    print(f"  batches {figures['batches']:,} (run's batches_total {figures['batches_total']:,})")
    first = figures["first_batch_seconds"]
    print(f"  seconds {figures['seconds']:.1f}; first batch handed to the queue after {first:.2f} s")
    print(
        f"  RSS before planning {figures['rss_before_mb']:.0f} MB, peak {peak:.0f} MB"
        f" (+{peak - figures['rss_before_mb']:.0f} MB)"
    )
    verdict = "PASS" if peak < GOAL_PEAK_RSS_MB else "FAIL"
    print(f"{verdict}: peak RSS of the planning process < {GOAL_PEAK_RSS_MB:.0f} MB ({peak:.0f} MB)")


if __name__ == "__main__":
    sys.exit(main())
