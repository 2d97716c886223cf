"""What the LLM is told about the run's projects: the configuration the run snapshotted."""

import json

import pytest

from analysis import services
from projects.services import bump_config
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.django_db


def test_the_prompt_carries_the_projects_language_glossary_and_priority_rules(
    fake_openai: FakeOpenAI,
) -> None:
    setup = make_setup(fake_openai.base_url, budget=3000)
    rules = [{"when": "customer data is exposed", "priority": "critical"}]
    glossary = [{"term": "OTA", "meaning": "over-the-air update"}]
    bump_config(
        project=setup["project"],
        user=setup["lead"],
        changes={"language": "de", "priority_rules": rules, "glossary": glossary},
    )
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()  # the run's queued task: this test plays the worker

    services.begin_run(run_id=run.pk)
    for batch_id in services.plan_run(run_id=run.pk):
        services.process_batch(batch_id=batch_id, claim_id=f"test-{batch_id}")

    user_prompt = fake_openai.completion_requests()[0]["messages"][1]["content"]
    context = json.loads(
        user_prompt[user_prompt.index("{") : user_prompt.index("\n", user_prompt.index("{"))]
    )
    (project,) = context["projects"]
    assert project["slug"] == "acme-mobile"
    assert project["language"] == "de"
    assert project["priority_rules"] == rules
    assert project["glossary"] == glossary
