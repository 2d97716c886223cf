"""Message search latency (`GET /api/v1/messages/?search=...`) on PostgreSQL as the table grows.

    .venv/bin/python bench/search.py [--messages 1000000] [--rounds 5] [--reuse] [--explain]
        [--postgres-url postgres://postgres@127.0.0.1:5432/tasktracker_bench_search] [--smoke]

Fills `sources_message` of a fresh database (migrated to the current code) with `--messages`
messages in 20 chats, in one `INSERT ... SELECT generate_series` run by the server: each
message is 4 to 16 words drawn from a 5,000-word vocabulary with a skewed (Zipf-like)
frequency, so some words are in several percent of the messages and most in a handful.
`--reuse` keeps a database already filled with as many messages (the fill of a million
takes minutes) and only runs the searches.

Then runs a mix of searches through the messages API view itself (DRF's request handling,
the access filter, the word-index search filter, the page of 50 with its count capped at
1,000 rows, the serializer), as two users in turn: a staff user, who sees every chat, and
a project member who sees half of them. The mix: one common word, one rare word, two common
words, a common and a rare word, a word absent from every message, and the start of a
common word ("rev" for "review": the index matches words from their start); each query
`--rounds` times, interleaved. Before them, ANALYZE, as autovacuum would have run on a
server. Prints the p50 and p95 of each kind and of all of them (and, apart, the p50 of the
page's capped count query alone, timed after each request), the matches of each kind
(counted whole, as staff, after the timed rounds) beside the count the API showed, the load
average, and the goal (p95 under 50 ms at 1,000,000 messages) as PASS or FAIL. `--explain`
prints EXPLAIN ANALYZE of every query of a one-common-word and a two-common-words search, as
each user.

It reports, it does not gate: the exit status is 0 unless a run crashed. The database named
in `--postgres-url` is dropped and recreated (unless `--reuse` finds it filled), so its
name must contain "bench". `--smoke` runs at tiny sizes (5,000 messages, one round, never
reused) and judges the goal there all the same, to check that the bench works; unless
`--postgres-url` is given, on a database of its own (the default's name + "_smoke", dropped at
the end), so that a kept million-row database survives it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/tasktracker_bench_search"
SMOKE_URL = DEFAULT_URL + "_smoke"
GOAL_P95_MS = 50.0
GOAL_MESSAGES = 1_000_000
CHATS = 20
VOCABULARY_SIZE = 5000
# Real words first: the most frequent ranks, so the common searches read like real ones.
COMMON_WORDS = [
    *("deploy", "login", "page", "broken", "release", "server", "fix", "test", "please", "review"),
    *("build", "error", "update", "staging", "database", "ticket", "merge", "customer", "payment"),
    *("invoice", "backend", "frontend", "mobile", "crash"),
]
CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiouy"


def vocabulary() -> list[str]:
    """The words, most frequent first: real words, then made-up ones of 2 to 4 syllables
    of a consonant or two and a vowel (which share trigrams as real words do)."""
    rng = random.Random(7)
    words = list(COMMON_WORDS)
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        word = "".join(
            rng.choice(CONSONANTS) * rng.choice((1, 1, 1, 2)) + rng.choice(VOWELS)
            for _ in range(rng.randint(2, 4))
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def configure(database_url: str) -> None:
    """Django settings for the bench database, before `django.setup()`."""
    name = urlparse(database_url).path.lstrip("/")
    if "bench" not in name:
        sys.exit(f"The database's name must contain 'bench' (it is dropped): {name!r}.")
    os.environ.update(
        DATABASE_URL=database_url,
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-search-not-a-secret-0123456789abcdef"),
        DEBUG="0",  # DEBUG keeps every query in memory
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
    sys.path.insert(0, str(BASE_DIR))


def recreate_database(database_url: str, *, create: bool = True) -> None:
    """Drop the database (and create it again, empty, unless `create` is false)."""
    import psycopg
    from psycopg import sql

    parsed = urlparse(database_url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def stored_messages(database_url: str) -> int:
    import psycopg

    try:
        with psycopg.connect(database_url) as connection:
            row = connection.execute("SELECT count(*) FROM sources_message").fetchone()
    except psycopg.Error:
        return -1
    return row[0] if row else -1


def fill(messages: int, words: list[str]) -> float:
    """Chats, and `messages` messages written by the server itself; seconds taken."""
    from django.db import connection

    from sources.models import Chat

    started = time.perf_counter()
    chats = Chat.objects.bulk_create(
        Chat(telegram_id=-1_001_000_000_000 - i, title=f"Chat {i}", type=Chat.Type.SUPERGROUP)
        for i in range(CHATS)
    )
    chat_ids = [chat.pk for chat in chats]
    with connection.cursor() as cursor:
        # The indexes other than the keys are built after the rows, as pg_restore does: a
        # build from sorted rows takes a fraction of a million insertions into each.
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'sources_message' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        # The word subquery names `g`, so it is run (and its random() drawn) for each row.
        # power(random(), 2.5) skews the draw to the first words of the vocabulary.
        cursor.execute(
            """
            INSERT INTO sources_message (chat_id, telegram_id, author_id, author_name, text, sent_at,
                edited_at, reply_to_telegram_id, forwarded_from, raw, created_at, updated_at)
            SELECT (%(chats)s::bigint[])[1 + g %% %(n_chats)s], g, 1000 + g %% 97, 'Author ' || g %% 97,
                (SELECT string_agg((%(words)s::text[])[1 + floor(power(random(), 2.5) * %(n_words)s)::int],
                                   ' ')
                 FROM generate_series(1, 4 + (g %% 13))),
                timestamptz '2024-01-01' + g * interval '20 seconds', NULL, NULL, '', '{}', now(), now()
            FROM generate_series(1, %(messages)s) AS g
            """,
            {
                "chats": chat_ids,
                "n_chats": CHATS,
                "words": words,
                "n_words": len(words),
                "messages": messages,
            },
        )
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("VACUUM ANALYZE sources_message")
    return time.perf_counter() - started


def make_users() -> tuple[Any, Any]:
    """A staff user, and a member of a project whose configuration reads half the chats."""
    from django.contrib.auth import get_user_model

    from projects.models import Project
    from sources.models import Chat
    from tests.factories import ProjectConfigFactory, ProjectMembershipFactory, UserFactory

    # Those of an earlier run on a reused database go first.
    get_user_model().objects.filter(username__startswith="bench-search-").delete()
    Project.objects.filter(name="Bench search").delete()
    staff = UserFactory(username="bench-search-staff", is_staff=True)
    chats = list(Chat.objects.order_by("id")[: CHATS // 2])
    project = ProjectConfigFactory(
        chats=chats, project__name="Bench search", project__slug="bench-search"
    ).project
    member = ProjectMembershipFactory(project=project, user=UserFactory(username="bench-search-member")).user
    return staff, member


def queries(words: list[str]) -> dict[str, list[str]]:
    """The searches by kind: common words are ranks 3 to 12 of the vocabulary (each in
    several percent of the messages), rare ones ranks 3,000 to 5,000 (a few hundred
    messages in a million)."""
    rng = random.Random(11)
    common = words[3:13]
    rare = words[3000:]
    return {
        "one common word": [rng.choice(common) for _ in range(4)],
        "one rare word": [rng.choice(rare) for _ in range(4)],
        "two common words": [" ".join(rng.sample(common, 2)) for _ in range(4)],
        "common + rare word": [f"{rng.choice(common)} {rng.choice(rare)}" for _ in range(4)],
        "absent word": ["zzyzxq", "qwxv"],
        "start of a word": ["rev", "serv", "upd", "bro"],
    }


def search_once(view: Any, user: Any, query: str) -> tuple[float, int]:
    """Milliseconds one API search takes, and the count it answered."""
    from rest_framework.test import APIRequestFactory, force_authenticate

    request = APIRequestFactory().get("/api/v1/messages/", {"search": query})
    force_authenticate(request, user=user)
    started = time.perf_counter()
    response = view(request)
    response.render()
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.content[:500]
    return elapsed, response.data["count"]


def filtered_messages(user: Any, query: str) -> Any:
    """The queryset the API view pages for a search by `user`: the same selector, access
    filter and filter backends."""
    from rest_framework.test import APIRequestFactory, force_authenticate

    from projects.chat_api import MessageViewSet

    request = APIRequestFactory().get("/api/v1/messages/", {"search": query})
    force_authenticate(request, user=user)
    view = MessageViewSet(action_map={"get": "list"})
    view.setup(request)
    view.action = "list"
    view.format_kwarg = None
    view.request = view.initialize_request(request)
    view.request.user = user
    return view.filter_queryset(view.get_queryset())


def count_ms(user: Any, query: str) -> float:
    """Milliseconds of the count alone of a search's first page, as its paginator counts
    (at most `COUNT_CAP` + 1 rows)."""
    from sources.search import COUNT_CAP, CappedCountPaginator

    paginator = CappedCountPaginator(filtered_messages(user, query), 50, count_limit=COUNT_CAP)
    started = time.perf_counter()
    paginator.count  # noqa: B018 (a cached property: reading it runs the query)
    return (time.perf_counter() - started) * 1000


def matches(user: Any, query: str) -> int:
    """How many messages a search matches, counted whole (not timed)."""
    return filtered_messages(user, query).count()


def explain(view: Any, user: Any, query: str) -> None:
    """EXPLAIN ANALYZE of every query one API search runs (the count, which reads the ids of
    the rows it counts, and the page), as the API runs them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        search_once(view, user, query)
    for number, statement in enumerate(captured.captured_queries, 1):
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement['sql']}")
            plan = "\n    ".join(row[0] for row in cursor.fetchall())
        print(f"  query {number} of {query!r} as {user.username}:\n    {statement['sql'][:300]}\n    {plan}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=GOAL_MESSAGES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="Keep a database already holding --messages.")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rounds, args.reuse = 5000, 1, False
        if args.postgres_url == DEFAULT_URL:
            args.postgres_url = SMOKE_URL

    configure(args.postgres_url)
    words = vocabulary()
    reused = args.reuse and stored_messages(args.postgres_url) == args.messages
    if not reused:
        recreate_database(args.postgres_url)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from projects.chat_api import MessageViewSet

    # On a reused database too: a migration newer than its fill (an index) is applied to it.
    call_command("migrate", verbosity=0)
    if reused:
        print(f"Reusing {args.messages:,} messages in {args.postgres_url}")
    else:
        seconds = fill(args.messages, words)
        print(f"Filled {args.messages:,} messages in {seconds:.1f} s")
    staff, member = make_users()
    # The statistics of the tables just written, as autovacuum would have them on a server: a
    # plan that guesses the member's chats from none can read every message of each chat.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    view = MessageViewSet.as_view({"get": "list"})
    mix = queries(words)

    # One untimed pass warms the caches and the connection, as a running server has them.
    for kind_queries in mix.values():
        for query in kind_queries:
            search_once(view, staff, query)
    timings: dict[str, list[float]] = {kind: [] for kind in mix}
    count_timings: dict[str, list[float]] = {kind: [] for kind in mix}
    counts: dict[str, list[int]] = {kind: [] for kind in mix}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        for kind, kind_queries in mix.items():
            for query in kind_queries:
                user = staff if round_ % 2 == 0 else member
                elapsed, count = search_once(view, user, query)
                timings[kind].append(elapsed)
                counts[kind].append(count)
                count_timings[kind].append(count_ms(user, query))
    load_after = os.getloadavg()[0]
    whole_counts = {
        kind: [matches(staff, query) for query in kind_queries] for kind, kind_queries in mix.items()
    }

    print(f"\nSearches of {args.messages:,} messages, {args.rounds} rounds (staff and a member in turn)")
    print(
        f"{'kind':<22} {'matches (median)':>17} {'count shown':>12} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'count query p50 ms':>19}"
    )
    for kind, values in timings.items():
        print(
            f"{kind:<22} {statistics.median(whole_counts[kind]):>17,.0f} "
            f"{statistics.median(counts[kind]):>12,.0f} "
            f"{percentile(values, 0.5):>8.1f} {percentile(values, 0.95):>8.1f} "
            f"{percentile(count_timings[kind], 0.5):>19.1f}"
        )
    every = [value for values in timings.values() for value in values]
    p50, p95 = percentile(every, 0.5), percentile(every, 0.95)
    print(f"{'all':<22} {'':>17} {'':>12} {p50:>8.1f} {p95:>8.1f}")
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after, {os.cpu_count()} cores")
    if args.messages >= GOAL_MESSAGES or args.smoke:
        verdict = "PASS" if p95 < GOAL_P95_MS else "FAIL"
        print(
            f"{verdict}: p95 {p95:.1f} ms (goal under {GOAL_P95_MS:.0f} ms at {GOAL_MESSAGES:,} messages"
            + (f"; a smoke run, of {args.messages:,})" if args.smoke else ")")
        )
    else:
        print(f"(the goal, p95 under {GOAL_P95_MS:.0f} ms, is judged at {GOAL_MESSAGES:,} messages)")

    if args.explain:
        print()
        for kind in ("one common word", "two common words"):
            explain(view, staff, mix[kind][0])
            explain(view, member, mix[kind][0])
    if args.smoke and args.postgres_url == SMOKE_URL:
        connection.close()
        recreate_database(args.postgres_url, create=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
