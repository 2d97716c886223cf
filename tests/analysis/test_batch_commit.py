"""A batch's answer is committed with its proposals: duplicates among them are marked, and
the database work does not grow with the number of proposals."""

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from analysis import services
from analysis.models import AnalysisRun
from proposals.models import TaskProposal
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import TaskFactory
from tests.fakes.openai_server import FakeOpenAI, FakeReply

pytestmark = pytest.mark.django_db

LINES = [
    "The Android app crashes on login since 2.3.1",
    "Can you please add dark mode to settings?",
    "Please fix the flaky checkout test before Friday",
    "Please update the release checklist",
    "The export to CSV drops the last row",
    "Please rename the billing settings page",
]
_ID = re.compile(r"^#(\d+)", re.MULTILINE)


def answer(*items: tuple[str, list[int]]) -> Callable[[dict[str, Any]], FakeReply]:
    """Proposals (title, positions of the lines they cite) for the batch in the prompt."""

    def reply(request: dict[str, Any]) -> FakeReply:
        ids = [int(i) for i in _ID.findall(request["messages"][-1]["content"])]
        proposals = [
            {
                "title": title,
                "description": "",
                "project": "acme-mobile",
                "assignee": None,
                "priority": "medium",
                "category": "bug",
                "tags": [],
                "due_date": None,
                "confidence": 0.8,
                "reasoning": "",
                "recommendation": "new_task",
                "source_message_ids": [ids[p] for p in positions],
            }
            for title, positions in items
        ]
        return FakeReply.ok({"proposals": proposals})

    return reply


def run_once(setup: dict[str, Any]) -> tuple[AnalysisRun, int]:
    """A whole run of one batch; the queries of processing that batch."""
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    services.begin_run(run_id=run.pk)
    (batch_id,) = services.plan_run(run_id=run.pk)
    with CaptureQueriesContext(connection) as queries:
        services.process_batch(batch_id=batch_id, claim_id="test")
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.COMPLETED
    return run, len(queries)


def test_proposals_of_one_batch_are_compared_with_each_other(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=10_000, lines=LINES)
    fake_openai.default = answer(
        ("Fix the Android login crash", [0]),
        ("Investigate login crashes", [0]),
        ("Fix the Android login crash!", [4]),
        ("Add dark mode to settings", [1, 2]),
        ("Dark mode", [2, 3]),
    )
    run, _ = run_once(setup)
    first, same, titled, dark, overlapping = TaskProposal.objects.filter(run=run).order_by("pk")
    assert first.similar_proposal is None and first.similarity_kind == ""
    assert (same.similar_proposal, same.similarity_kind, same.similarity_score) == (
        first,
        "same_messages",
        1.0,
    )
    assert (titled.similar_proposal, titled.similarity_kind) == (first, "similar_title")
    assert dark.similar_proposal is None
    assert (overlapping.similar_proposal, overlapping.similarity_kind) == (dark, "overlapping_messages")
    assert overlapping.similarity_score == pytest.approx(1 / 3, abs=0.001)
    assert [m.text for m in overlapping.source_messages.order_by("sent_at")] == LINES[2:4]
    assert run.proposals_created == 5


def test_a_batch_costs_the_same_queries_with_one_proposal_as_with_many(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=10_000, lines=LINES)
    TaskFactory(project=setup["project"], title="Rename the billing page")
    # Close enough to the task for the title index to be asked in both runs: a title sharing
    # too few trigrams with anything skips that query, whatever the number of proposals.
    fake_openai.default = answer(("Rename the billing page now", [0]))
    one, with_one = run_once(setup)
    TaskProposal.objects.all().delete()
    fake_openai.default = answer(*((f"Proposal number {n}: {LINES[n]}", [n]) for n in range(len(LINES))))
    many, with_many = run_once(setup)
    assert (one.proposals_created, many.proposals_created) == (1, len(LINES))
    assert with_many == with_one


def test_an_answer_citing_a_number_not_in_the_batch_is_rejected_and_said(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=10_000, lines=LINES)
    stray = answer(("Fix the Android login crash", [0]))

    def reply(request: dict[str, Any]) -> FakeReply:
        good = stray(request).body["proposals"][0]
        prompt = request["messages"][-1]["content"]
        assert "#1 " in prompt and f"#{len(LINES) + 1} " not in prompt  # numbered from 1
        return FakeReply.ok(
            {
                "proposals": [
                    good,
                    {**good, "source_message_ids": [len(LINES) + 1]},
                ]
            }
        )

    fake_openai.default = reply
    run, _ = run_once(setup)
    (proposal,) = TaskProposal.objects.filter(run=run)
    assert [m.text for m in proposal.source_messages.all()] == [LINES[0]]
    batch = run.batches.get()
    assert batch.error == f"proposal 1: message ids [{len(LINES) + 1}] are not in the batch"
    assert batch.status == "done"
