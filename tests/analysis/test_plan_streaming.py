"""Planning streams: a run's window is read in chunks and its batches written (and queued) as
they are cut, in bounded transactions that a planning killed midway goes on from."""

import random
from datetime import timedelta
from typing import Any

import pytest

from analysis.models import AnalysisRun, Batch
from analysis.pipeline import create_batches, prefilter_messages
from analysis.services import begin_run, fetch_messages, plan_run, process_batch, start_run, to_pipeline
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import MessageFactory
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

NOWHERE = "http://127.0.0.1:9/v1"
TEXTS = [
    "The Android app crashes on login since 2.3.1",
    "ok",
    "Can you please add dark mode to settings? The night shift keeps asking for it",
    "👍",
    "Please fix the flaky checkout test before Friday, it failed three times today",
    "Who's up for lunch?",
    "I think the crash comes from the token refresh in the auth module",
    "Please update the release checklist for 2.4",
    "thanks",
    "The dashboard shows p95 latency at 800 ms for the billing service since the deploy",
]


class Killed(Exception):
    """The worker planning the run dies here."""


def add_chat(setup: dict[str, Any], count: int = 80, seed: int = 7) -> None:
    """`count` more messages in the setup's chat: ties on sent_at, replies to messages of
    earlier chunks, one to a message before the window, breaks longer than the batch gap."""
    rng = random.Random(seed)
    chat, at = setup["chat"], WINDOW_START + timedelta(hours=3)
    before = MessageFactory(chat=chat, telegram_id=999, sent_at=WINDOW_START - timedelta(hours=1))
    for n in range(count):
        if rng.random() > 0.3:  # else the same second as the message before
            at += timedelta(minutes=rng.choice([1, 2, 5, 90]))
        reply_to = None
        if n == 5:
            reply_to = before.telegram_id
        elif n > 0 and rng.random() < 0.35:
            reply_to = 100 + rng.randint(max(0, n - 6), n - 1)
        MessageFactory(
            chat=chat, telegram_id=100 + n, text=rng.choice(TEXTS), sent_at=at, reply_to_telegram_id=reply_to
        )


def begun_run(setup: dict[str, Any]) -> AnalysisRun:
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    begin_run(run_id=run.pk)
    run.refresh_from_db()
    return run


def one_pass(run: AnalysisRun) -> tuple[list[list[int]], int, int, dict[str, int]]:
    """The batches and counters of the whole window read and cut at once."""
    projects = run.config_snapshot["projects"]
    messages = fetch_messages(run=run)
    kept = prefilter_messages(
        to_pipeline(messages),
        keywords=[k for p in projects for k in p["keywords"]],
        exclude_keywords=[k for p in projects for k in p["exclude_keywords"]],
    )
    gap = min(p["batch_time_gap_minutes"] for p in projects)
    batches = create_batches(
        kept.kept, token_budget=run.assignment.agent.batch_token_budget, time_gap=timedelta(minutes=gap)
    )
    return [b.message_ids for b in batches], len(messages), len(kept.kept), kept.stats


def written(run: AnalysisRun) -> tuple[list[list[int]], int, int, dict[str, int]]:
    run.refresh_from_db()
    batches = list(Batch.objects.filter(run=run).order_by("index").values_list("message_ids", flat=True))
    assert list(Batch.objects.filter(run=run).order_by("index").values_list("index", flat=True)) == list(
        range(len(batches))
    )
    assert run.batches_total == len(batches)
    return batches, run.messages_fetched, run.messages_kept, run.prefilter_stats


def test_chunked_planning_cuts_the_batches_of_one_pass() -> None:
    setup = make_setup(NOWHERE, budget=60)
    add_chat(setup)
    run = begun_run(setup)
    expected = one_pass(run)
    assert len(expected[0]) > 10
    # The budget cuts conversations: some reply's parent is repeated at the next batch's head.
    assert len({pk for batch in expected[0] for pk in batch}) < sum(len(batch) for batch in expected[0])

    plan_run(run_id=run.pk, chunk_size=7)

    assert written(run) == expected
    assert not run.planning
    assert run.status == AnalysisRun.Status.RUNNING  # its batches are still to do


def test_a_window_of_exactly_whole_chunks_is_planned_once() -> None:
    setup = make_setup(NOWHERE, budget=60)
    run = begun_run(setup)
    expected = one_pass(run)

    plan_run(run_id=run.pk, chunk_size=expected[1] // 2)  # 12 messages: two full chunks

    assert written(run) == expected


def test_batches_are_queued_while_the_window_is_still_being_planned() -> None:
    setup = make_setup(NOWHERE, budget=60)
    add_chat(setup)
    run = begun_run(setup)
    handed: list[tuple[list[int], bool]] = []

    def on_batches(batch_ids: list[int]) -> None:
        handed.append((batch_ids, AnalysisRun.objects.get(pk=run.pk).planning))

    returned = plan_run(run_id=run.pk, on_batches=on_batches, chunk_size=10)

    assert len(handed) > 2
    assert handed[0][1] is True  # the first batches were queued before planning ended
    assert handed[-1][1] is False
    queued = [pk for ids, _ in handed for pk in ids]
    batches = Batch.objects.filter(run=run).order_by("index")
    assert queued == returned == list(batches.values_list("pk", flat=True))


def test_a_planning_killed_midway_goes_on_from_its_cursor() -> None:
    setup = make_setup(NOWHERE, budget=60)
    add_chat(setup)
    run = begun_run(setup)
    expected = one_pass(run)
    handed: list[list[int]] = []

    def dies_after_three_chunks(batch_ids: list[int]) -> None:
        handed.append(batch_ids)
        if len(handed) == 3:
            raise Killed

    with pytest.raises(Killed):
        plan_run(run_id=run.pk, on_batches=dies_after_three_chunks, chunk_size=8)
    run.refresh_from_db()
    assert run.planning
    assert 0 < run.batches_total < len(expected[0])
    assert 0 < run.messages_fetched < expected[1]
    written_before = set(Batch.objects.filter(run=run).values_list("pk", flat=True))

    again: list[list[int]] = []
    returned = plan_run(run_id=run.pk, on_batches=again.append, chunk_size=8)

    assert written(run) == expected  # no batch twice, none missing, the counters once
    assert not run.planning
    # The batches the killed planning wrote are queued again (no worker took them), then the rest.
    assert set(again[0]) == written_before
    assert sorted(returned) == sorted(Batch.objects.filter(run=run).values_list("pk", flat=True))


def test_a_planning_started_twice_writes_the_batches_once() -> None:
    setup = make_setup(NOWHERE, budget=60)
    add_chat(setup)
    run = begun_run(setup)
    expected = one_pass(run)

    plan_run(run_id=run.pk, chunk_size=9)
    again = plan_run(run_id=run.pk, chunk_size=9)

    assert written(run) == expected
    assert sorted(again) == sorted(Batch.objects.filter(run=run).values_list("pk", flat=True))


def test_a_run_does_not_complete_while_it_is_planning(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=60)
    add_chat(setup, count=30)
    run = begun_run(setup)

    handed: list[list[int]] = []

    def dies_after_two_chunks(batch_ids: list[int]) -> None:
        handed.append(batch_ids)
        if len(handed) == 2:
            raise Killed

    with pytest.raises(Killed):
        plan_run(run_id=run.pk, on_batches=dies_after_two_chunks, chunk_size=8)
    for batch_id in Batch.objects.filter(run=run).values_list("pk", flat=True):
        process_batch(batch_id=batch_id, claim_id="test")
    run.refresh_from_db()
    assert run.batches_done == run.batches_total > 0
    assert run.status == AnalysisRun.Status.RUNNING  # every batch written is done, but not planned yet

    for batch_id in plan_run(run_id=run.pk, chunk_size=8):
        process_batch(batch_id=batch_id, claim_id="test")

    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.COMPLETED
    assert run.batches_done == run.batches_total == len(one_pass(run)[0])


def test_a_window_with_nothing_kept_completes_when_planned() -> None:
    setup = make_setup(NOWHERE, budget=60, lines=["ok", "👍", "thanks", "/start"])
    run = begun_run(setup)

    assert plan_run(run_id=run.pk, chunk_size=3) == []

    run.refresh_from_db()
    assert (run.status, run.messages_fetched, run.messages_kept, run.batches_total) == (
        AnalysisRun.Status.COMPLETED,
        4,
        0,
        0,
    )
    assert sum(run.prefilter_stats.values()) == 4
