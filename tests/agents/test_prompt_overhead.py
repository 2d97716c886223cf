"""The prompt overhead: a request is counted whole (both prompts, the `response_format`
object, the chat format), as the server receives it, and at every batch token budget the
product ships it costs at most twice the messages' own tokens."""

import json
from datetime import timedelta

import pytest

from agents.defaults import DEFAULT_RESPONSE_SCHEMA
from agents.models import AgentTaskAssignment
from agents.prompts import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    count_tokens,
    json_schema_format,
    request_tokens,
)
from agents.services import ensure_small_task_config, update_agent
from analysis import services
from analysis.evaluation import SHIPPED_BUDGETS, request_figures
from analysis.management.commands.load_demo import DEMO_AGENT_SETTINGS
from analysis.models import AnalysisRun, Batch
from sources.models import Message
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import MessageFactory
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.django_db

# A working day of a team chat: requests, reports, answers and chatter, at the length such
# messages have (AMI's kept utterances average 14 tokens; these 13).
DAY = [
    ("Alice Kim", "The Android app crashes on login since 2.3.1, can someone look at it today?"),
    ("Bob Martin", "I can reproduce it on a Pixel 7, the token refresh throws before the screen loads"),
    ("Carol Diaz", "Please add dark mode to the settings screen, customers keep asking for it"),
    ("Dave Okafor", "I'll update the release checklist with the new TestFlight steps by Friday"),
    ("Erin Walsh", "Checkout fails with promo codes longer than twelve characters on iOS"),
    ("Alice Kim", "Could you check whether the staging API still returns the old order format?"),
    ("Bob Martin", "We should decide who owns the push notification service before the next release"),
    ("Carol Diaz", "The flaky checkout test failed three times on main this morning, please fix it"),
    ("Dave Okafor", "I think the crash comes from the refresh token being null after an upgrade"),
    ("Erin Walsh", "Let's move the design review to Thursday afternoon so that everyone can join"),
]


def typical_chat(setup: dict, *, count: int) -> None:
    """`setup`'s chat holding only `count` such messages, two minutes apart."""
    Message.objects.filter(pk__in=[m.pk for m in setup["messages"]]).delete()
    at = WINDOW_END - timedelta(hours=10)
    for i in range(count):
        author, text = DAY[i % len(DAY)]
        MessageFactory(
            chat=setup["chat"],
            telegram_id=1000 + i,
            author_name=author,
            text=f"{text} ({i})",
            sent_at=at + timedelta(minutes=2 * i),
        )


def planned_run(assignment: AgentTaskAssignment, setup: dict) -> AnalysisRun:
    run = services.start_run(
        window_start=WINDOW_START, window_end=WINDOW_END, projects=[setup["project"]], assignment=assignment
    )
    celery_app.control.purge()  # the run's queued task: this test plays the worker
    services.begin_run(run_id=run.pk)
    services.plan_run(run_id=run.pk)
    return AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config").get(pk=run.pk)


def ratio(run: AnalysisRun) -> float:
    figures = request_figures(run, list(Batch.objects.filter(run=run).order_by("index")))
    return figures["prompt_tokens"] / figures["content_tokens"]


def test_a_request_is_counted_whole() -> None:
    response_format = json_schema_format(DEFAULT_RESPONSE_SCHEMA, "proposals")

    counted = request_tokens("Find the tasks.", "<messages>\n#1 Alice: Fix it\n</messages>", response_format)

    sent = json.dumps(response_format, separators=(",", ":"))
    expected = (
        count_tokens("Find the tasks.")
        + count_tokens("<messages>\n#1 Alice: Fix it\n</messages>")
        + count_tokens(sent)
        + 2 * TOKENS_PER_MESSAGE
        + REPLY_PRIMING_TOKENS
    )
    assert counted == expected
    assert counted - request_tokens("Find the tasks.", "<messages>\n#1 Alice: Fix it\n</messages>") > 100


def test_what_is_counted_is_what_the_server_receives(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    run = planned_run(setup["assignment"], setup)
    for batch in Batch.objects.filter(run=run):
        services.process_batch(batch_id=batch.pk, claim_id=f"test-{batch.pk}")

    (request,) = fake_openai.completion_requests()
    system, user = (m["content"] for m in request["messages"])
    figures = request_figures(run, list(Batch.objects.filter(run=run)))
    assert figures["prompt_tokens"] == request_tokens(system, user, request["response_format"])
    assert figures["requests"] == 1


def test_the_default_task_config_costs_at_most_twice_its_content_at_a_new_agents_budget() -> None:
    setup = make_setup("http://127.0.0.1:9/v1", budget=max(SHIPPED_BUDGETS))
    typical_chat(setup, count=300)

    run = planned_run(setup["assignment"], setup)

    assert run.batches.count() >= 2
    assert ratio(run) <= 2.0


def test_the_small_task_config_costs_at_most_twice_its_content_at_the_demo_agents_budget() -> None:
    setup = make_setup("http://127.0.0.1:9/v1", budget=3000)
    typical_chat(setup, count=120)
    agent = update_agent(
        agent=setup["assignment"].agent, batch_token_budget=DEMO_AGENT_SETTINGS["batch_token_budget"]
    )
    small, _ = ensure_small_task_config()
    assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=small)

    run = planned_run(assignment, setup)

    assert run.batches.count() >= 2
    assert ratio(run) <= 2.0
