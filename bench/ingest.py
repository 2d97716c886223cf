"""Export import throughput and memory: Tasktracker against a bare bulk write.

    .venv/bin/python bench/ingest.py [--messages 100000] [--backends sqlite,postgres] [--end-to-end N]
        [--postgres-url postgres://postgres@127.0.0.1:5432/tasktracker_bench] [--repeat 1] [--profile]
        [--smoke]

Generates a single-chat Telegram Desktop export of `--messages` messages (and one of a
quarter of that size, to see whether memory stays flat in file size), then for each backend
imports it with `sources.services.import_telegram_export` and with a reference that streams
the same file with `ijson.items` and writes the same rows with no ORM: psycopg `COPY` on
PostgreSQL, a sqlite3 `executemany` INSERT on SQLite, each into a fresh table with the same
unique key (chat_id, telegram_id). Every run is a subprocess of its own, on a fresh database,
so each has a clean Django set-up and its own peak RSS. Only the import is timed: migrations,
connection set-up and the row count check are not.

Prints messages per second, peak RSS and the ratio to the reference, and the goal
(>= 0.8x the reference on PostgreSQL) as PASS or FAIL. It reports, it does not gate: the
exit status is 0 unless a run crashed. `--profile` adds, on PostgreSQL (else the first
backend), a breakdown of where the import's time goes: timed stages with parts stubbed out,
and a cProfile of a run, the writer thread's included (each new thread gets a profiler of its
own: cProfile sees only the thread that enabled it). `--smoke` runs at tiny sizes (2,000
messages, PostgreSQL only), to check that the bench works.

`--end-to-end N` measures instead what a user waits for: the wall time of the whole
`manage.py import_telegram_export` command on an export of N messages (interpreter start,
Django set-up, imports, the import, exit) against the whole reference process (interpreter
start, its imports, the table, the COPY), on PostgreSQL, the two taking turns `--repeat`
times (the best of each kept), with the goal (>= 0.6x) as PASS or FAIL.

The PostgreSQL database named in `--postgres-url` is dropped and recreated for every run and
dropped at the end, so its name must contain "bench".
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
GOAL_RATIO = 0.8
# End to end, start-up included (`--end-to-end`): a small import is mostly start-up.
END_TO_END_GOAL_RATIO = 0.6
EXPORT_CHAT_ID = 1_987_654_321
# The Bot API id of a supergroup, as `bot_api_chat_id` computes it: the reference stores the same.
BOT_API_CHAT_ID = -(1_000_000_000_000 + EXPORT_CHAT_ID)
REFERENCE_COLUMNS = (
    "chat_id",
    "telegram_id",
    "author_id",
    "author_name",
    "text",
    "sent_at",
    "edited_at",
    "reply_to_telegram_id",
    "forwarded_from",
    "raw",
    "created_at",
    "updated_at",
)
BACKEND_NAMES = {"sqlite": "sqlite", "postgres": "postgresql", "postgresql": "postgresql"}
# What each backend runs, in table order. The ratio is to "reference"; "reference-indexed"
# adds the rest of sources_message's schema (two indexes, a deferred foreign key), to show
# what the server alone costs for the real table.
KINDS = {
    "postgresql": {
        "tasktracker": "tasktracker import",
        "reference": "reference: psycopg COPY",
        "reference-indexed": "reference: COPY+schema",
    },
    "sqlite": {"tasktracker": "tasktracker import", "reference": "reference: executemany"},
}


# --- The export ------------------------------------------------------------------------------

VOCABULARY = (
    "deploy build release fix bug review merge branch test staging prod ticket deadline "
    "friday monday tomorrow today please can someone check the api endpoint login page "
    "invoice client meeting notes draft spec design mockup server database backup "
    "migration timeout error crash log metrics dashboard alert on-call rollback hotfix "
    "docs readme сделать проверить завтра релиз ошибка сервер готово спасибо ок 👍 🚀 ✅"
)
WORDS = VOCABULARY.split()
PEOPLE = [
    ("Alice Martin", "user1001"),
    ("Bob Chen", "user1002"),
    ("Carla Diaz", "user1003"),
    ("Dmitri Ivanov", "user1004"),
    ("Eve Okafor", "user1005"),
    ("Farid Haddad", "user1006"),
    ("Grace Kim", "user1007"),
    ("Hugo Weber", "user1008"),
    ("Release Bot", "user123"),
]
ENTITY_TYPES = ("bold", "italic", "code", "mention", "link", "hashtag")
SERVICE_ACTIONS = ("invite_members", "pin_message", "edit_group_title", "remove_members")


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(3, 40))).capitalize()


def _entities(text: str) -> list[dict[str, str]]:
    return [{"type": "plain", "text": text}]


def _message(rng: random.Random, telegram_id: int, unix: int) -> dict[str, Any]:
    """One export message: text as a string or an entity list, some replies, edits,
    forwards and a few service messages, in the shape Telegram Desktop writes."""
    date = datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    author, author_id = rng.choice(PEOPLE)
    if rng.random() < 0.02:
        return {
            "id": telegram_id,
            "type": "service",
            "date": date,
            "date_unixtime": str(unix),
            "actor": author,
            "actor_id": author_id,
            "action": rng.choice(SERVICE_ACTIONS),
            "members": [rng.choice(PEOPLE)[0]],
            "text": "",
            "text_entities": [],
        }
    message: dict[str, Any] = {
        "id": telegram_id,
        "type": "message",
        "date": date,
        "date_unixtime": str(unix),
        "from": author,
        "from_id": author_id,
    }
    if rng.random() < 0.1:
        edited = unix + rng.randint(5, 3600)
        message["edited"] = datetime.fromtimestamp(edited, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        message["edited_unixtime"] = str(edited)
    if telegram_id > 1 and rng.random() < 0.25:
        message["reply_to_message_id"] = rng.randint(max(1, telegram_id - 200), telegram_id - 1)
    if rng.random() < 0.03:
        message["forwarded_from"] = rng.choice(PEOPLE)[0]
    if rng.random() < 0.3:
        parts: list[Any] = []
        entities: list[dict[str, str]] = []
        for _ in range(rng.randint(1, 4)):
            plain = _sentence(rng) + " "
            entity = {"type": rng.choice(ENTITY_TYPES), "text": rng.choice(WORDS)}
            if entity["type"] == "link":
                entity["text"] = f"https://example.com/{rng.choice(WORDS)}/{rng.randint(1, 9999)}"
            parts += [plain, entity]
            entities += [*_entities(plain), entity]
        message["text"] = parts
        message["text_entities"] = entities
    else:
        text = _sentence(rng)
        message["text"] = text
        message["text_entities"] = _entities(text)
    return message


def write_export(path: Path, messages: int, seed: int = 42) -> dict[str, int]:
    """Write an export of `messages` messages to `path`, one message at a time, indented
    as Telegram Desktop indents (one space a level). Returns what it holds."""
    rng = random.Random(seed)
    unix = 1_700_000_000
    counts = {"messages": messages, "service": 0}
    with path.open("w", encoding="utf-8") as out:
        out.write(
            '{\n "name": "Platform team",\n "type": "private_supergroup",\n'
            f' "id": {EXPORT_CHAT_ID},\n "messages": [\n'
        )
        for telegram_id in range(1, messages + 1):
            unix += rng.randint(1, 120)
            message = _message(rng, telegram_id, unix)
            counts["service"] += message["type"] == "service"
            body = json.dumps(message, ensure_ascii=False, indent=1).replace("\n", "\n  ")
            out.write(f"  {body}{',' if telegram_id < messages else ''}\n")
        out.write(" ]\n}\n")
    counts["stored"] = messages - counts["service"]
    counts["bytes"] = path.stat().st_size
    return counts


# --- Databases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" or "postgresql"
    postgres_url: str
    workdir: Path

    def fresh_url(self, label: str) -> str:
        """The URL of an empty database for one run."""
        if self.name == "sqlite":
            path = self.workdir / f"{label}.sqlite3"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return f"sqlite:///{path}"
        recreate_postgres_database(self.postgres_url)
        return self.postgres_url

    def cleanup(self) -> None:
        if self.name == "postgresql":
            drop_postgres_database(self.postgres_url)


def _postgres_admin(url: str) -> tuple[Any, str]:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    name = str(params.get("dbname") or "")
    if "bench" not in name:
        raise SystemExit(f"Refusing to drop and recreate database {name!r}: its name must contain 'bench'.")
    connection = psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True)
    return connection, sql.Identifier(name)


def recreate_postgres_database(url: str) -> None:
    connection, name = _postgres_admin(url)
    from psycopg import sql

    with connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(name))


def drop_postgres_database(url: str) -> None:
    connection, name = _postgres_admin(url)
    from psycopg import sql

    with connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def child_env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY="bench-ingest-not-a-secret",
        DEBUG="0",  # DEBUG keeps every query in memory
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
        PYTHONHASHSEED="0",
    )
    return env


def run_child(args: list[str], env: dict[str, str]) -> str:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise RuntimeError(f"bench child {args[:2]} exited with {completed.returncode}")
    return completed.stdout


def migrate(env: dict[str, str]) -> None:
    completed = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise RuntimeError(f"migrate exited with {completed.returncode}")


# --- Children: one measured run each -----------------------------------------------------------


def _rss_now_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _report(messages: int, rows: int, seconds: float, rss_before: float, **extra: Any) -> None:
    print(
        json.dumps(
            {
                "messages": messages,
                "rows": rows,
                "seconds": seconds,
                "rate": messages / seconds,
                "rss_before_mb": rss_before,
                "peak_rss_mb": _peak_rss_mb(),
                **extra,
            }
        )
    )


def _django_setup() -> None:
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()


def child_tasktracker(export: Path) -> None:
    _django_setup()
    from django.db import connection

    from sources.models import Message
    from sources.services import import_telegram_export

    connection.ensure_connection()
    rss_before = _rss_now_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = import_telegram_export(path_or_file=export)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    _report(
        result.messages_read,
        Message.objects.count(),
        seconds,
        rss_before,
        skipped=result.skipped,
        cpu_seconds=cpu_seconds,
    )


def _export_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part if isinstance(part, str) else _export_text(part) for part in value)
    if isinstance(value, dict):
        return _export_text(value.get("text", ""))
    return ""


def _unix(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value not in (None, "") else None


def reference_rows(export: Path, counter: list[int]) -> Iterator[tuple[Any, ...]]:
    """The rows Tasktracker stores, read with `ijson.items` and built with no ORM: the same
    text flattening, author id, times, reply and raw copy (without `text_entities`)."""
    import ijson

    now = datetime.now(UTC)
    with export.open("rb") as source:
        for message in ijson.items(source, "messages.item", use_float=True):
            counter[0] += 1
            if message.get("type", "message") != "message":
                continue
            author = message.get("from_id")
            reply_to = message.get("reply_to_message_id")
            yield (
                BOT_API_CHAT_ID,
                message["id"],
                int(author.lstrip("abcdefghijklmnopqrstuvwxyz_")) if isinstance(author, str) else None,
                (message.get("from") or "")[:255],
                _export_text(message.get("text", "")),
                _unix(message.get("date_unixtime")),
                _unix(message.get("edited_unixtime")),
                reply_to if isinstance(reply_to, int) and "reply_to_peer_id" not in message else None,
                (message.get("forwarded_from") or "")[:255],
                {key: value for key, value in message.items() if key != "text_entities"},
                now,
                now,
            )


def child_reference_postgres(export: Path, url: str, *, indexed: bool = False) -> None:
    """COPY into a table with the unique key only or, `indexed`, with the rest of the
    schema of `sources_message` too: its indexes (chat, sent_at) and (sent_at), and
    its deferred foreign key to a chat table, checked row by row at commit. The second shows
    what the server alone costs for the real table."""
    import psycopg
    from psycopg.types.json import Jsonb

    columns = ", ".join(REFERENCE_COLUMNS)
    with psycopg.connect(url) as connection:
        connection.execute(
            """CREATE TABLE bench_messages (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                chat_id bigint NOT NULL, telegram_id bigint NOT NULL, author_id bigint NULL,
                author_name varchar(255) NOT NULL, text text NOT NULL,
                sent_at timestamptz NOT NULL, edited_at timestamptz NULL,
                reply_to_telegram_id bigint NULL, forwarded_from varchar(255) NOT NULL,
                raw jsonb NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
                UNIQUE (chat_id, telegram_id))"""
        )
        if indexed:
            connection.execute("CREATE INDEX ON bench_messages (chat_id, sent_at)")
            connection.execute("CREATE INDEX ON bench_messages (sent_at)")
            connection.execute("CREATE TABLE bench_chats (id bigint PRIMARY KEY)")
            connection.execute("INSERT INTO bench_chats VALUES (%s)", [BOT_API_CHAT_ID])
            connection.execute(
                "ALTER TABLE bench_messages ADD FOREIGN KEY (chat_id) REFERENCES bench_chats (id) "
                "DEFERRABLE INITIALLY DEFERRED"
            )
        connection.commit()
        rss_before = _rss_now_mb()
        counter = [0]
        started, cpu_started = time.perf_counter(), time.process_time()
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY bench_messages ({columns}) FROM STDIN") as copy:
                for row in reference_rows(export, counter):
                    copy.write_row((*row[:9], Jsonb(row[9]), *row[10:]))
            connection.commit()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        rows = connection.execute("SELECT count(*) FROM bench_messages").fetchone()[0]
    _report(counter[0], rows, seconds, rss_before, cpu_seconds=cpu_seconds)


def child_reference_sqlite(export: Path, url: str) -> None:
    path = url.removeprefix("sqlite:///")
    # As the settings open it: WAL, synchronous=NORMAL.
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(
        """CREATE TABLE bench_messages (
            id integer PRIMARY KEY AUTOINCREMENT, chat_id bigint NOT NULL, telegram_id bigint NOT NULL,
            author_id bigint NULL, author_name varchar(255) NOT NULL, text text NOT NULL,
            sent_at datetime NOT NULL, edited_at datetime NULL, reply_to_telegram_id bigint NULL,
            forwarded_from varchar(255) NOT NULL, raw text NOT NULL CHECK (JSON_VALID(raw)),
            created_at datetime NOT NULL, updated_at datetime NOT NULL,
            UNIQUE (chat_id, telegram_id))"""
    )
    placeholders = ", ".join("?" * len(REFERENCE_COLUMNS))
    insert = f"INSERT INTO bench_messages ({', '.join(REFERENCE_COLUMNS)}) VALUES ({placeholders})"

    def _sqlite(value: Any) -> Any:
        return value.isoformat(" ") if isinstance(value, datetime) else value

    def rows(counter: list[int]) -> Iterator[tuple[Any, ...]]:
        for row in reference_rows(export, counter):
            values = [_sqlite(value) for value in row]
            values[9] = json.dumps(row[9])
            yield tuple(values)

    rss_before = _rss_now_mb()
    counter = [0]
    started, cpu_started = time.perf_counter(), time.process_time()
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(insert, rows(counter))
    connection.execute("COMMIT")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    count = connection.execute("SELECT count(*) FROM bench_messages").fetchone()[0]
    connection.close()
    _report(counter[0], count, seconds, rss_before, cpu_seconds=cpu_seconds)


def child_stages(export: Path) -> None:
    """Time the import with parts stubbed out (no profiler overhead): the difference
    between two stages is what the part left out of the second costs."""
    _django_setup()
    import gc

    import ijson
    from django.db import connection

    from sources.models import Message
    from sources.services import export_import as services

    connection.ensure_connection()
    stages: dict[str, float] = {}

    def timed(label: str, work: Any) -> None:
        started = time.perf_counter()
        work()
        stages[label] = time.perf_counter() - started

    def drain(iterator: Any) -> None:
        for _ in iterator:
            pass

    def parse_events() -> None:
        with export.open("rb") as source:
            drain(ijson.parse(source, use_float=True))

    def items_c() -> None:
        with export.open("rb") as source:
            drain(ijson.items(source, "messages.item", use_float=True))

    def reference_no_db() -> None:
        drain(reference_rows(export, [0]))

    def truncate() -> None:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE sources_message CASCADE")  # a bench database

    timed("ijson.parse events only (C parser, Python loop)", parse_events)
    timed("ijson.items objects (C parser and builder)", items_c)
    timed("reference rows built, not written", reference_no_db)

    real_upsert = services.upsert_messages
    real_message_from_export = services.message_from_export
    minimal = {"telegram_id": 1, "sent_at": datetime.now(UTC)}
    try:
        services.upsert_messages = lambda *, chat, messages: services.UpsertCounts(created=len(messages))
        services.message_from_export = lambda message: minimal
        timed("import: read the file (no message_from_export, no writes)", _import(export))
        services.message_from_export = real_message_from_export
        timed("import: + message_from_export (no writes)", _import(export))
    finally:
        services.upsert_messages = real_upsert
        services.message_from_export = real_message_from_export
    timed("import: complete", _import(export))
    if connection.vendor == "postgresql":
        stored = Message.objects.count()
        truncate()
        # The import again with the cyclic garbage collector off: what it costs (the import
        # keeps a chunk of messages alive, which the collector walks again and again).
        gc.disable()
        try:
            timed("what-if: import with the garbage collector off", _import(export))
        finally:
            gc.enable()
        if Message.objects.count() != stored:
            raise RuntimeError(f"the what-if stored {Message.objects.count()} rows, not {stored}")
    print(json.dumps(stages))


def _import(export: Path) -> Any:
    from sources.services import import_telegram_export

    return lambda: import_telegram_export(path_or_file=export)


def profile_new_threads() -> list[cProfile.Profile]:
    """A cProfile of every thread started from now on (the import's writer thread): cProfile
    sees only the thread that enabled it, so each new thread enables one of its own on its
    first profiled event. Returns the list they add themselves to; `threading.setprofile(None)`
    stops it for threads started later."""
    profilers: list[cProfile.Profile] = []

    def start(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start)
    return profilers


def child_profile(export: Path, top: int = 25) -> None:
    """cProfile of one import: time by part, from cumulative times (which the profiler
    inflates for code making many small Python calls)."""
    _django_setup()
    import inspect

    import psycopg
    from django.db import connection, transaction

    from sources.services import export_import, upsert

    connection.ensure_connection()
    profiler = cProfile.Profile()
    thread_profilers = profile_new_threads()
    try:
        profiler.runcall(_import(export))
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(profiler)
    for thread_profiler in thread_profilers:
        stats.add(thread_profiler)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def key(function: Any) -> tuple[str, int, str]:
        code = inspect.unwrap(function).__code__
        return (code.co_filename, code.co_firstlineno, code.co_name)

    def cumulative(function: Any) -> float:
        entry = entries.get(key(function))
        return entry[3] if entry else 0.0

    def own(function: Any) -> float:
        entry = entries.get(key(function))
        return entry[2] if entry else 0.0

    total = cumulative(export_import.import_telegram_export)
    parts = {
        "reading the file (ijson.items in C: own time of _read_single_chat)": own(
            export_import._ExportStream._read_single_chat
        )
        + own(export_import._ExportStream._walk),
        "message_from_export (times, text, raw copy)": cumulative(export_import.message_from_export),
        "upsert_messages, all of it": cumulative(upsert.upsert_messages),
        "  existing-rows lookup (_stored_versions)": cumulative(upsert._stored_versions),
        "  COPY (_insert_messages: rows, json.dumps, binary format, server)": cumulative(
            upsert._insert_messages
        ),
        "    json.dumps of raw": cumulative(json.dumps),
        "  commit (Atomic.__exit__)": cumulative(transaction.Atomic.__exit__),
        "psycopg waits for the server, everywhere (Connection.wait)": cumulative(psycopg.Connection.wait),
    }
    print(
        f"cProfile of one import: {total:.2f} s under the profiler (the main thread), "
        f"{len(thread_profilers)} writer thread(s) profiled too: their parts overlap the reading"
    )
    for label, seconds in parts.items():
        print(f"  {label:<78} {seconds:7.2f} s {100 * seconds / total:5.1f}%")
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    lines = buffer.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print(f"\nTop {top} functions by own time, all threads:")
    for line in lines[start:]:
        if line.strip():
            print("  " + line.replace(str(BASE_DIR) + "/", "").replace(sys.prefix + "/", ""))


def child_main(argv: list[str]) -> None:
    kind, export = argv[0], Path(argv[1])
    url = os.environ["DATABASE_URL"]
    if kind == "tasktracker":
        child_tasktracker(export)
    elif kind == "reference":
        (child_reference_sqlite if url.startswith("sqlite") else child_reference_postgres)(export, url)
    elif kind == "reference-indexed":
        child_reference_postgres(export, url, indexed=True)
    elif kind == "stages":
        child_stages(export)
    elif kind == "profile":
        child_profile(export)
    else:
        raise SystemExit(f"unknown child {kind!r}")


# --- The parent: runs, table, goal -------------------------------------------------------------


def measure(backend: Backend, kind: str, export: Path) -> dict[str, Any]:
    """One run in a child, on a fresh database."""
    env = child_env(backend.fresh_url(f"{kind}-{export.stem}"))
    if kind == "tasktracker":
        migrate(env)
    return json.loads(run_child(["--child", kind, str(export)], env).strip().splitlines()[-1])


def measure_all(backend: Backend, exports: dict[str, Path], repeat: int) -> dict[tuple[str, str], Any]:
    """The best of `repeat` runs of each implementation and size, the runs taking turns so
    that a burst of load elsewhere on the machine does not fall on one implementation."""
    best: dict[tuple[str, str], Any] = {}
    for _ in range(repeat):
        for kind in KINDS[backend.name]:
            for size, path in exports.items():
                result = measure(backend, kind, path)
                if (kind, size) not in best or result["rate"] > best[(kind, size)]["rate"]:
                    best[(kind, size)] = result
    return best


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """The wall time of `command`, a process of its own, from its start to its exit, and its
    CPU time (user + system): on a busy machine the wall time waits for the CPU, the CPU time
    much less so."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=BASE_DIR, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise RuntimeError(f"{command[1:3]} exited with {completed.returncode}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(backend: Backend, export: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """The best wall time of the import command and of the reference process, taking turns,
    each with its CPU time (of its best run)."""
    best = {"tasktracker": (float("inf"), 0.0), "reference": (float("inf"), 0.0)}
    for _ in range(repeat):
        env = child_env(backend.fresh_url("e2e-tasktracker"))
        migrate(env)
        command = [sys.executable, "manage.py", "import_telegram_export", str(export)]
        best["tasktracker"] = min(best["tasktracker"], timed(command, env))
        env = child_env(backend.fresh_url("e2e-reference"))
        command = [sys.executable, str(Path(__file__).resolve()), "--child", "reference", str(export)]
        best["reference"] = min(best["reference"], timed(command, env))
    return best


def main_end_to_end(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        export = Path(tmp) / "export.json"
        size = write_export(export, args.end_to_end)
        print(
            f"Export: {args.end_to_end:,} messages ({size['stored']:,} stored), "
            f"{size['bytes'] / 2**20:.1f} MB\n{os.cpu_count()} CPUs, load average {_load()} at the start",
            flush=True,
        )
        backend = Backend("postgresql", args.postgres_url, Path(tmp))
        try:
            best = end_to_end(backend, export, args.repeat)
        finally:
            backend.cleanup()
    ratio = best["reference"][0] / best["tasktracker"][0]
    print(f"Load average {_load()} at the end.\n")
    for label, key in (
        ("manage.py import_telegram_export, whole command", "tasktracker"),
        ("reference (ijson + psycopg COPY), whole process", "reference"),
    ):
        wall, cpu = best[key]
        print(f"{label}: {wall:6.2f} s wall, {cpu:6.2f} s CPU")
    cpu_ratio = best["reference"][1] / best["tasktracker"][1] if best["tasktracker"][1] else 0.0
    print(f"CPU time ratio (reference / command, the client processes only): {cpu_ratio:.2f}x")
    verdict = "PASS" if ratio >= END_TO_END_GOAL_RATIO else "FAIL"
    print(
        f"Goal: the command end to end >= {END_TO_END_GOAL_RATIO}x the reference on PostgreSQL "
        f"({args.end_to_end:,} messages, best of {args.repeat}): {verdict} ({ratio:.2f}x)"
    )
    return 0


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/tasktracker_bench")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best is kept")
    parser.add_argument("--profile", action="store_true", help="break down the import's time too")
    parser.add_argument(
        "--end-to-end", type=int, metavar="N", help="time the whole command on N messages instead"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "EXPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return 0
    if args.smoke:
        args.messages, args.repeat, args.backends = 2000, 1, "postgres"
        if args.end_to_end:
            args.end_to_end = 2000
    if args.end_to_end:
        return main_end_to_end(args)

    try:
        names = [BACKEND_NAMES[name.strip()] for name in args.backends.split(",") if name.strip()]
    except KeyError as exc:
        parser.error(f"unknown backend {exc.args[0]!r}")
    profiled = "postgresql" if "postgresql" in names else names[0]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        full, quarter = workdir / "export-full.json", workdir / "export-quarter.json"
        started = time.perf_counter()
        sizes = {
            "full": write_export(full, args.messages),
            "quarter": write_export(quarter, args.messages // 4),
        }
        print(
            f"Export: {args.messages:,} messages ({sizes['full']['stored']:,} stored, "
            f"{sizes['full']['service']:,} service), {sizes['full']['bytes'] / 2**20:.1f} MB; quarter size: "
            f"{args.messages // 4:,} messages, {sizes['quarter']['bytes'] / 2**20:.1f} MB "
            f"(written in {time.perf_counter() - started:.1f} s)\n"
            f"{os.cpu_count()} CPUs, load average {_load()} at the start",
            flush=True,
        )
        rows = []
        for name in names:
            backend = Backend(name, args.postgres_url, workdir)
            try:
                results = measure_all(backend, {"full": full, "quarter": quarter}, args.repeat)
                if args.profile and name == profiled:
                    print(f"Where the time goes ({name}, {args.messages:,} messages)\n", flush=True)
                    env = child_env(backend.fresh_url("stages"))
                    migrate(env)
                    stages = json.loads(run_child(["--child", "stages", str(full)], env).splitlines()[-1])
                    print("Timed stages, no profiler (each a separate pass over the file):")
                    for label, seconds in stages.items():
                        print(f"  {label:<78} {seconds:7.2f} s {args.messages / seconds:9,.0f} msg/s")
                    print()
                    env = child_env(backend.fresh_url("profile"))
                    migrate(env)
                    print(run_child(["--child", "profile", str(full)], env), flush=True)
            finally:
                backend.cleanup()
            reference = results[("reference", "full")]
            for kind in KINDS[name]:
                full_run, quarter_run = results[(kind, "full")], results[(kind, "quarter")]
                rows.append(
                    {
                        "backend": name,
                        "kind": kind,
                        "label": KINDS[name][kind],
                        "run": full_run,
                        "quarter": quarter_run,
                        "ratio": full_run["rate"] / reference["rate"],
                        "expected_rows": sizes["full"]["stored"],
                    }
                )

    print(f"Load average {_load()} at the end: figures from a busy machine are low and noisy.\n")
    header = (
        f"{'backend':<11} {'implementation':<24} {'messages':>9} {'rows':>8} {'seconds':>8} {'msg/s':>8} "
        f"{'vs ref':>7} {'CPU s':>6} {'peak RSS MB':>11} {'at 1/4 size':>11} {'before import':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        run, quarter_run = row["run"], row["quarter"]
        print(
            f"{row['backend']:<11} {row['label']:<24} {run['messages']:>9,} {run['rows']:>8,} "
            f"{run['seconds']:>8.2f} {run['rate']:>8,.0f} {row['ratio']:>6.2f}x {run['cpu_seconds']:>6.2f} "
            f"{run['peak_rss_mb']:>11.1f} {quarter_run['peak_rss_mb']:>11.1f} {run['rss_before_mb']:>13.1f}"
        )
    print()
    for row in rows:
        if row["run"]["rows"] != row["expected_rows"]:
            print(
                f"WARNING: {row['backend']} {row['label']} stored {row['run']['rows']:,} rows, "
                f"expected {row['expected_rows']:,}"
            )
    for row in rows:
        if row["backend"] == "postgresql" and row["kind"] == "tasktracker":
            verdict = "PASS" if row["ratio"] >= GOAL_RATIO else "FAIL"
            print(
                f"Goal: tasktracker import >= {GOAL_RATIO}x reference on PostgreSQL: {verdict} "
                f"({row['ratio']:.2f}x, {row['run']['rate']:,.0f} msg/s)"
            )
    for row in rows:
        growth = row["run"]["peak_rss_mb"] - row["quarter"]["peak_rss_mb"]
        flat = "flat" if growth <= max(10.0, 0.1 * row["quarter"]["peak_rss_mb"]) else "NOT flat"
        print(
            f"Memory, {row['backend']} {row['label']}: peak RSS {row['quarter']['peak_rss_mb']:.1f} MB at "
            f"{args.messages // 4:,} messages, {row['run']['peak_rss_mb']:.1f} MB at {args.messages:,} "
            f"({growth:+.1f} MB for 4x the file): {flat}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
