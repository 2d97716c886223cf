"""Saving proposals as a project's history grows: does the duplicate check stay flat?

    .venv/bin/python bench/duplicates.py [--messages 100000] [--batch-messages 50]
        [--backends sqlite,postgres]
        [--postgres-url postgres://postgres@127.0.0.1:5432/tasktracker_bench_dup] [--seed 7] [--smoke]

A run-like sequence of batches over `--messages` messages of one project's chat: each batch of
`--batch-messages` messages gives about one proposal per ten messages, saved as
`analysis.services.save_proposals` saves them (the project's row locked, then
`proposals.services.create_proposals`: the duplicate check and the INSERTs, in one
transaction). Titles are drawn from a vocabulary of verbs, objects, places and details; one in
eight repeats an earlier title with a small change (a typo, a word more, punctuation), and one
in eight cites a message an earlier proposal cites. One proposal in ten also becomes a task,
so tasks' titles grow too. Every batch adds to the history the next one is checked against:
100,000 messages end with about 10,000 live proposals and 1,000 tasks.

Prints, per backend, ms per batch (median and mean) over the first and the last tenth of the
batches and their ratio, with the load average beside them (the machine is shared: compare
figures taken together), and PASS when the last tenth's median is at most 1.2x the first's on
every backend. It reports, it does not gate: the exit status is 0 unless a run crashed.
`--smoke` runs at tiny sizes (2,000 messages, SQLite only), to check that the bench works.

Each backend runs in a child process of its own (Django is set up once per process). The
PostgreSQL database named in `--postgres-url` is dropped and recreated, and dropped at the
end, so its name must contain "bench"; the SQLite one is a scratch file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.2

VERBS = (
    "Fix",
    "Add",
    "Remove",
    "Update",
    "Investigate",
    "Refactor",
    "Document",
    "Test",
    "Speed up",
    "Review",
)
OBJECTS = (
    "login crash", "invoice export", "push notifications", "dark mode", "VAT rounding", "search index",
    "password reset", "avatar upload", "payment retries", "onboarding flow", "session timeout",
    "CSV import", "rate limiter", "audit log", "email digest", "offline cache", "deep links",
    "settings page", "crash reporter", "feature flags", "TestFlight build", "release notes",
    "billing webhook", "refund flow", "map tiles", "chat widget", "calendar sync", "PDF preview",
)  # fmt: skip
PLACES = (
    "on Android", "on iOS", "in the backend", "in the admin", "on the web app", "in staging",
    "for new users", "for Safari", "in the API", "on tablets", "behind the proxy", "in the EU region",
)  # fmt: skip
DETAILS = (
    "", "", "", "before the release", "after the migration", "when offline", "for large accounts",
    "with two-factor on", "in dark mode", "on slow networks", "after logout", "for the Q3 report",
)  # fmt: skip
TYPOS = (("the", "teh"), ("in", "on"), ("for", "fro"), ("a", "e"), (" ", "  "))


def new_title(rng: random.Random, serial: int) -> str:
    parts = [rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES), rng.choice(DETAILS)]
    # A ticket-like number keeps titles distinct, as real ones are (names, versions, ids).
    return " ".join(p for p in parts if p) + f" (#{serial})"


def near_title(rng: random.Random, title: str) -> str:
    change = rng.randrange(3)
    if change == 0:
        old, new = rng.choice(TYPOS)
        return title.replace(old, new, 1) if old in title else title + "!"
    if change == 1:
        return title + rng.choice((" asap", " again", " please", "."))
    return title.upper() if rng.random() < 0.5 else title.rstrip(")") + " )"


# --- The child: one backend --------------------------------------------------------------------


def setup_django(database_url: str) -> None:
    sys.path.insert(0, str(BASE_DIR))
    os.environ.update(
        DATABASE_URL=database_url,
        SECRET_KEY="bench-duplicates-not-a-secret-0123456789abcdef",
        DEBUG="0",  # DEBUG keeps every query in memory
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6"),
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    setup_django(args.database_url)
    from django.db import transaction

    from projects.models import Project, Task
    from proposals.services import NewProposal, ProposalData, create_proposals
    from sources.models import Chat, Message

    rng = random.Random(args.seed)
    project = Project.objects.create(name="Acme Mobile", slug="acme-mobile")
    chat = Chat.objects.create(telegram_id=-1001234567890, title="Acme Mobile Team", type="supergroup")
    start = datetime(2024, 3, 4, 8, tzinfo=UTC)
    Message.objects.bulk_create(
        (
            Message(
                chat=chat,
                telegram_id=n,
                author_id=5000 + n % 7,
                author_name="Alice",
                text=f"message {n}",
                sent_at=start + timedelta(seconds=25 * n),
            )
            for n in range(1, args.messages + 1)
        ),
        batch_size=5000,
    )
    messages = list(Message.objects.filter(chat=chat).order_by("telegram_id"))
    titles: list[str] = []
    cited: list[list[Message]] = []
    timings: list[float] = []
    found = 0
    for offset in range(0, len(messages), args.batch_messages):
        batch = messages[offset : offset + args.batch_messages]
        news = []
        for _ in range(max(1, round(len(batch) * 0.1 + rng.uniform(-2, 2)))):
            roll = rng.random()
            title = near_title(rng, rng.choice(titles)) if titles and roll < 0.125 else None
            sources = rng.choice(cited) if cited and 0.125 <= roll < 0.25 else rng.sample(batch, 2)
            title = title or new_title(rng, len(titles))
            data = ProposalData(
                title=title,
                description="Seen in the chat; see the messages.",
                priority="medium",
                category="bug",
                tags=[],
                due_date=None,
                confidence=round(rng.uniform(0.5, 1), 2),
                reasoning="",
                recommendation="new_task",
                assignee_name="",
            )
            news.append(NewProposal(project, data, sources))
            titles.append(title)
            cited.append(sources)
        began = time.perf_counter()
        with transaction.atomic():
            # As `save_proposals` does: the project's row locked, then the proposals created.
            list(Project.objects.select_for_update().filter(pk=project.pk).values_list("pk"))
            created = create_proposals(proposals=news)
        timings.append((time.perf_counter() - began) * 1000)
        found += sum(1 for p in created if p.similarity_kind)
        tasks = [Task(project=project, title=p.title) for p in created if rng.random() < 0.1]
        Task.objects.bulk_create(tasks)
    tenth = max(1, len(timings) // 10)
    first, last = timings[:tenth], timings[-tenth:]
    return {
        "batches": len(timings),
        "proposals": len(titles),
        "marked": found,
        "first_median": statistics.median(first),
        "last_median": statistics.median(last),
        "first_mean": statistics.fmean(first),
        "last_mean": statistics.fmean(last),
        "load": os.getloadavg(),
    }


# --- The parent: one child per backend ---------------------------------------------------------


def recreate_postgres(url: str, *, drop_only: bool = False) -> None:
    import psycopg
    from psycopg import sql

    base, name = url.rsplit("/", 1)
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: a bench database's name contains 'bench'")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not drop_only:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def run_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    url = args.postgres_url if backend == "postgres" else f"sqlite:///{tmp / 'bench.sqlite3'}"
    if backend == "postgres":
        recreate_postgres(url)
    command = [
        sys.executable,
        __file__,
        "--child",
        "--database-url",
        url,
        "--messages",
        str(args.messages),
        "--batch-messages",
        str(args.batch_messages),
        "--seed",
        str(args.seed),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=BASE_DIR)
    finally:
        if backend == "postgres":
            recreate_postgres(url, drop_only=True)
    if done.returncode:
        raise RuntimeError(f"{backend} run exited with {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch-messages", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/tasktracker_bench_dup")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    if args.smoke:
        args.messages, args.backends = 2000, "sqlite"
    print(f"{args.messages:,} messages, {args.batch_messages} per batch; load average {os.getloadavg()}")
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as tmp:
        for backend in args.backends.split(","):
            try:
                r = run_backend(backend, args, Path(tmp))
            except Exception as error:  # a crashed run: report it, exit 1
                print(f"{backend}: crashed: {error}")
                return 1
            ratio = r["last_median"] / r["first_median"]
            verdicts.append((backend, ratio))
            print(
                f"{backend:9} {r['batches']} batches, {r['proposals']} proposals ({r['marked']} marked as "
                f"repeats): ms per batch, first tenth median {r['first_median']:.2f} "
                f"(mean {r['first_mean']:.2f}), last tenth median {r['last_median']:.2f} "
                f"(mean {r['last_mean']:.2f}), last/first {ratio:.2f}x; "
                f"load average {', '.join(f'{x:.2f}' for x in r['load'])}"
            )
    for backend, ratio in verdicts:
        verdict = "PASS" if ratio <= GOAL_RATIO else "FAIL"
        print(f"{verdict}  {backend}: last tenth <= {GOAL_RATIO}x first tenth ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
