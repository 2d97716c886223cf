"""Past review decisions shown to the LLM as examples (a task config's `review_examples`):
which ones a batch gets, in what order, within what budget, and what the run records."""

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from rest_framework.test import APIClient

from agents.models import TaskConfig
from agents.prompts import EXAMPLES_HEAD, count_tokens
from analysis import services
from analysis.models import AnalysisRun, Batch
from analysis.services.batches import MIN_MESSAGE_TOKENS
from proposals.models import TaskProposal
from proposals.services.reviews import approve_proposal, reject_proposal
from sources.models import Message
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import (
    ChatFactory,
    MessageFactory,
    ProjectFactory,
    TaskProposalFactory,
    UserFactory,
)
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.django_db

APPROVED = TaskProposal.Status.APPROVED
REJECTED = TaskProposal.Status.REJECTED
# Before the run's window: these messages are never in a batch of it.
PAST = WINDOW_START - timedelta(days=7)


def ask_for_examples(setup: dict[str, Any], count: int, tokens: int = 400) -> None:
    TaskConfig.objects.filter(pk=setup["assignment"].task_config_id).update(
        review_examples=count, review_examples_tokens=tokens
    )


def past_message(chat: Any, text: str) -> Message:
    return MessageFactory(chat=chat, text=text, sent_at=PAST)


def reviewed(
    project: Any,
    *,
    title: str,
    sources: list[Message],
    status: str = APPROVED,
    days_ago: int = 1,
    **fields: Any,
) -> TaskProposal:
    """A proposal of an earlier run, reviewed `days_ago` days before the window."""
    return TaskProposalFactory(
        project=project,
        title=title,
        status=status,
        reviewed_at=WINDOW_START - timedelta(days=days_ago),
        source_messages=sources,
        **fields,
    )


def start(setup: dict[str, Any]) -> AnalysisRun:
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()  # the run's queued task: these tests play the worker
    return run


def analyse(run: AnalysisRun) -> list[Batch]:
    services.begin_run(run_id=run.pk)
    for batch_id in services.plan_run(run_id=run.pk):
        services.process_batch(batch_id=batch_id, claim_id=f"test-{batch_id}")
    return list(run.batches.order_by("index"))


def user_prompts(fake_openai: FakeOpenAI) -> list[str]:
    return [request["messages"][1]["content"] for request in fake_openai.completion_requests()]


def examples_section(prompt: str) -> str:
    return prompt[prompt.index("<examples>") : prompt.index("</examples>") + len("</examples>")]


def example_lines(prompt: str) -> list[str]:
    return examples_section(prompt).splitlines()[2:-1]


def test_examples_come_from_the_same_chat_first_then_by_the_words_they_share(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 3)
    other_chat = ChatFactory(title="Elsewhere")
    project = setup["project"]
    # The most recent, and sharing no word with the batch: last, and beyond the three.
    unrelated = reviewed(project, title="Order office chairs", sources=[past_message(other_chat, "chairs")])
    dark_mode = reviewed(
        project, title="Add dark mode", sources=[past_message(other_chat, "dark theme")], days_ago=2
    )
    login_crash = reviewed(
        project,
        title="Fix the Android login crash",
        sources=[past_message(other_chat, "The Android app crashes on login again")],
        days_ago=3,
    )
    same_chat = reviewed(
        project, title="Book the venue", sources=[past_message(setup["chat"], "venue?")], days_ago=4
    )

    (batch,) = analyse(start(setup))

    assert batch.review_example_ids == [same_chat.pk, login_crash.pk, dark_mode.pk]
    (prompt,) = user_prompts(fake_openai)
    assert [line.split(" (from")[0] for line in example_lines(prompt)] == [
        "approved: Book the venue — Fix the login page before the release.",
        "approved: Fix the Android login crash — Fix the login page before the release.",
        "approved: Add dark mode — Fix the login page before the release.",
    ]
    assert unrelated.title not in prompt


def test_the_prompt_marks_the_examples_before_the_messages(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 1)
    reviewed(
        setup["project"],
        title="Fix the Android login crash",
        sources=[past_message(setup["chat"], "The app crashes on login"), past_message(setup["chat"], "+1")],
    )

    analyse(start(setup))

    (prompt,) = user_prompts(fake_openai)
    assert prompt.index("</examples>") < prompt.index("<messages>")
    assert examples_section(prompt) == (
        f"<examples>\n{EXAMPLES_HEAD}\n"
        "approved: Fix the Android login crash — Fix the login page before the release. "
        '(from: "The app crashes on login", "+1")\n'
        "</examples>"
    )


def test_an_approved_example_is_as_the_reviewer_edited_it_and_a_rejected_one_carries_the_reason(
    fake_openai: FakeOpenAI,
) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 5)
    project, lead, chat = setup["project"], setup["lead"], setup["chat"]
    approved = TaskProposalFactory(
        project=project, title="fix crash", source_messages=[past_message(chat, "The app crashes")]
    )
    approve_proposal(
        proposal_id=approved.pk,
        user=lead,
        edits={"title": "Fix the crash on login in 2.3.1", "description": "Token refresh fails."},
    )
    rejected = TaskProposalFactory(
        project=project, title="Have lunch", source_messages=[past_message(chat, "Lunch?")]
    )
    reject_proposal(proposal_id=rejected.pk, user=lead, reason="Small talk, not work.")

    analyse(start(setup))

    lines = example_lines(user_prompts(fake_openai)[0])
    assert sorted(lines) == [
        'approved: Fix the crash on login in 2.3.1 — Token refresh fails. (from: "The app crashes")',
        "rejected: Have lunch — reason: Small talk, not work.",
    ]


def test_other_projects_pending_merged_and_the_runs_own_proposals_are_never_examples(
    fake_openai: FakeOpenAI,
) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 10)
    project, chat = setup["project"], setup["chat"]
    source = past_message(chat, "The Android app crashes on login")
    eligible = reviewed(project, title="Eligible", sources=[source])
    reviewed(ProjectFactory(), title="Of another project", sources=[source])
    reviewed(project, title="Still pending", sources=[source], status=TaskProposal.Status.PENDING)
    reviewed(project, title="Merged away", sources=[source], status=TaskProposal.Status.MERGED)
    run = start(setup)
    reviewed(project, title="Of this very run", sources=[source], run=run)

    (batch,) = analyse(run)

    assert batch.review_example_ids == [eligible.pk]
    assert [line.split(" —")[0] for line in example_lines(user_prompts(fake_openai)[0])] == [
        "approved: Eligible"
    ]


def test_a_long_example_that_does_not_fit_gives_way_to_a_shorter_one(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 3, tokens=60)
    long = reviewed(
        setup["project"],
        title="Fix the Android login crash",
        description="The token refresh races with the login screen. " * 10,
        sources=[past_message(setup["chat"], "The Android app crashes on login")],
    )
    short = reviewed(
        setup["project"],
        title="Add dark mode",
        description="",
        sources=[past_message(ChatFactory(), "dark mode")],
        days_ago=2,
    )

    (batch,) = analyse(start(setup))

    # The long one ranks first (same chat) but alone exceeds the budget: skipped, not the end.
    assert batch.review_example_ids == [short.pk]
    prompt = user_prompts(fake_openai)[0]
    assert long.title not in prompt
    assert count_tokens(examples_section(prompt) + "\n") <= 60


def test_no_more_examples_than_asked_for_and_none_beyond_the_budget(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 2, tokens=400)
    for i in range(5):
        reviewed(setup["project"], title=f"Task {i}", sources=[past_message(setup["chat"], f"task {i}")])

    (batch,) = analyse(start(setup))

    assert len(batch.review_example_ids) == 2
    assert len(example_lines(user_prompts(fake_openai)[0])) == 2


def test_batches_are_cut_smaller_by_the_examples_budget(fake_openai: FakeOpenAI) -> None:
    lines = [f"Please fix item {i} of the release checklist before the demo on Friday" for i in range(12)]
    setup = make_setup(fake_openai.base_url, budget=200, lines=lines)
    without = analyse(start(setup))
    ask_for_examples(setup, 3, tokens=90)

    with_examples = analyse(start(setup))

    assert max(b.token_count for b in without) > 200 - 90
    assert all(b.token_count <= 200 - 90 for b in with_examples)
    assert len(with_examples) > len(without)


def test_an_agent_budget_too_small_for_the_examples_keeps_messages_a_floor_and_examples_the_rest(
    fake_openai: FakeOpenAI,
) -> None:
    setup = make_setup(fake_openai.base_url, budget=150)
    ask_for_examples(setup, 10, tokens=400)
    for i in range(10):
        reviewed(setup["project"], title=f"Task {i}", sources=[past_message(setup["chat"], f"task {i}")])

    batches = analyse(start(setup))

    assert all(b.token_count <= MIN_MESSAGE_TOKENS for b in batches)
    assert any(b.review_example_ids for b in batches)
    for batch, prompt in zip(batches, user_prompts(fake_openai), strict=True):
        if batch.review_example_ids:
            assert batch.token_count + count_tokens(examples_section(prompt) + "\n") <= 150


def test_without_examples_asked_for_the_prompt_and_the_batches_are_unchanged(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    reviewed(setup["project"], title="Fix the login crash", sources=[past_message(setup["chat"], "crash")])
    # A budget for examples that are not asked for takes nothing from the batches.
    ask_for_examples(setup, 0, tokens=2900)
    run = start(setup)

    (batch,) = analyse(run)

    assert batch.review_example_ids == []
    (prompt,) = user_prompts(fake_openai)
    assert "<examples>" not in prompt
    messages = Message.objects.in_bulk(batch.message_ids)
    assert prompt == services.batch_prompt(run=run, messages=[messages[pk] for pk in batch.message_ids]).user
    assert prompt.startswith(("Context: ", "<messages>"))


def test_the_runs_batches_show_the_examples_they_used(fake_openai: FakeOpenAI) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    ask_for_examples(setup, 1)
    example = reviewed(
        setup["project"], title="Fix the login crash", sources=[past_message(setup["chat"], "x")]
    )
    run = start(setup)
    analyse(run)
    client = APIClient()
    client.force_authenticate(setup["lead"])

    (batch,) = client.get(f"/api/v1/runs/{run.pk}/batches/").json()

    assert batch["review_example_ids"] == [example.pk]


def test_task_config_limits_on_examples_are_field_errors() -> None:
    config = TaskConfig(name="Examples", instructions="List tasks.", response_schema={"type": "object"})
    config.review_examples, config.review_examples_tokens = 11, 0

    with pytest.raises(ValidationError) as error:
        config.full_clean()

    assert set(error.value.message_dict) == {"review_examples", "review_examples_tokens"}
    with pytest.raises(IntegrityError), transaction.atomic():
        config.save()


def test_the_api_shows_a_task_configs_examples_settings() -> None:
    config = TaskConfig.objects.create(
        name="Examples", instructions="List tasks.", response_schema={"type": "object"}, review_examples=3
    )
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True, is_superuser=True))

    body = client.get(f"/api/v1/task-configs/{config.pk}/").json()

    assert (body["review_examples"], body["review_examples_tokens"]) == (3, 400)


def test_the_api_refuses_examples_settings_out_of_range() -> None:
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    body = {"name": "Examples", "instructions": "List tasks.", "response_schema": {"type": "object"}}

    too_many = client.post("/api/v1/task-configs/", {**body, "review_examples": 11}, format="json")
    no_tokens = client.post("/api/v1/task-configs/", {**body, "review_examples_tokens": 0}, format="json")
    stored = client.post(
        "/api/v1/task-configs/", {**body, "review_examples": 2, "review_examples_tokens": 300}, format="json"
    )

    assert (too_many.status_code, list(too_many.json())) == (400, ["review_examples"])
    assert (no_tokens.status_code, list(no_tokens.json())) == (400, ["review_examples_tokens"])
    assert stored.status_code == 201
    assert TaskConfig.objects.values_list("review_examples", "review_examples_tokens").get(
        name="Examples"
    ) == (2, 300)


def test_the_admin_refuses_examples_settings_out_of_range(admin_client: Any) -> None:
    page = admin_client.post(
        reverse("admin:agents_taskconfig_add"),
        {
            "name": "Examples",
            "instructions": "List tasks.",
            "response_schema": '{"type": "object"}',
            "max_proposals_per_message": 2,
            "review_examples": 11,
            "review_examples_tokens": 0,
            "assignments-TOTAL_FORMS": 0,
            "assignments-INITIAL_FORMS": 0,
        },
    )

    errors = page.context["adminform"].form.errors
    assert set(errors) == {"review_examples", "review_examples_tokens"}
    assert not TaskConfig.objects.filter(name="Examples").exists()
