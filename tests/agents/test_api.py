"""The providers, agents, task configs and assignments API."""

import logging
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agents.defaults import DEFAULT_TASK_CONFIG_NAME
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from tests.factories import (
    TEST_API_KEY,
    AgentFactory,
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    LLMProviderFactory,
    TaskConfigFactory,
    UserFactory,
)
from tests.fakes.openai_server import REFUSED_KEY, FakeOpenAI, FakeReply

pytestmark = pytest.mark.django_db

PROVIDERS_URL = "/api/v1/providers/"
AGENTS_URL = "/api/v1/agents/"
TASK_CONFIGS_URL = "/api/v1/task-configs/"
ASSIGNMENTS_URL = "/api/v1/assignments/"
SECRET_KEY = "sk-live-secret-abcd1234"
UNREACHABLE_URL = "http://127.0.0.1:9/v1"

GOOD_PROPOSAL = {
    "title": "Fix the login crash on Android 14",
    "description": "Crash after tapping Log in.",
    "project": "acme-mobile",
    "assignee": None,
    "priority": "high",
    "category": "bug",
    "tags": [],
    "due_date": None,
    "confidence": 0.95,
    "reasoning": "Reported and confirmed.",
    "recommendation": "new_task",
    "source_message_ids": [1, 2],
}


def provider_in(**overrides: Any) -> dict[str, Any]:
    return {"name": "Local", "base_url": "http://127.0.0.1:11434/v1", "api_key": SECRET_KEY, **overrides}


def agent_in(provider: LLMProvider, **overrides: Any) -> dict[str, Any]:
    return {"name": "Extractor", "provider": provider.pk, "model": "fake-model", **overrides}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def grant(user: Any, *codenames: str) -> None:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="agents", codename__in=codenames)
    )


@pytest.fixture
def admin_api() -> APIClient:
    return client_for(UserFactory(is_staff=True, is_superuser=True))


@pytest.fixture
def staff_api() -> APIClient:
    """Staff without any permission on the agents app's models."""
    return client_for(UserFactory(is_staff=True))


@pytest.fixture
def agent(fake_openai: FakeOpenAI) -> Agent:
    """An agent on the fake server with the default task config assigned."""
    provider = LLMProviderFactory(
        base_url=fake_openai.base_url, timeout_seconds=2, price_per_1k_input=1, price_per_1k_output=2
    )
    agent = AgentFactory(provider=provider, model="fake-model")
    AgentTaskAssignmentFactory(agent=agent, task_config=TaskConfig.objects.get(name=DEFAULT_TASK_CONFIG_NAME))
    return agent


# Providers


def test_an_admin_creates_a_provider_whose_key_is_stored_encrypted_and_never_echoed(
    admin_api: APIClient, django_capture_on_commit_callbacks: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_api.post(PROVIDERS_URL, provider_in(), format="json")

    assert response.status_code == 201, response.data
    assert "api_key" not in response.data
    assert SECRET_KEY not in response.content.decode()
    assert response.data["api_key_set"] is True
    assert response.data["api_key_masked"] == "••••••••1234"
    assert response.data["health"] == "pending"
    provider = LLMProvider.objects.get(name="Local")
    assert provider.api_key == SECRET_KEY
    assert provider.api_key_encrypted
    assert SECRET_KEY not in provider.api_key_encrypted
    assert len(callbacks) == 1  # the background health check
    for url in (PROVIDERS_URL, f"{PROVIDERS_URL}{provider.pk}/"):
        assert SECRET_KEY not in admin_api.get(url).content.decode()
    assert SECRET_KEY not in caplog.text


def test_a_provider_without_a_key_says_so(admin_api: APIClient) -> None:
    response = admin_api.post(PROVIDERS_URL, provider_in(api_key=""), format="json")

    assert response.status_code == 201, response.data
    assert (response.data["api_key_set"], response.data["api_key_masked"]) == (False, "")
    assert LLMProvider.objects.get().api_key_encrypted == ""


def test_health_fields_cannot_be_written(admin_api: APIClient) -> None:
    response = admin_api.post(
        PROVIDERS_URL,
        provider_in(health="connected", available_models=["x"], api_key_encrypted="forged"),
        format="json",
    )

    assert response.status_code == 201
    provider = LLMProvider.objects.get()
    assert (provider.health, provider.available_models) == ("pending", [])
    assert provider.api_key == SECRET_KEY


def test_non_staff_users_are_refused(django_capture_on_commit_callbacks: Callable) -> None:
    provider = LLMProviderFactory()
    user = UserFactory()
    grant(user, "add_llmprovider", "change_llmprovider", "view_llmprovider")
    api = client_for(user)

    assert api.get(PROVIDERS_URL).status_code == 403
    assert api.get(f"{PROVIDERS_URL}{provider.pk}/").status_code == 403
    assert api.post(PROVIDERS_URL, provider_in(), format="json").status_code == 403
    assert api.get(AGENTS_URL).status_code == 403
    assert api.get(TASK_CONFIGS_URL).status_code == 403
    assert api.get(ASSIGNMENTS_URL).status_code == 403
    assert APIClient().get(PROVIDERS_URL).status_code == 401


def test_staff_without_permissions_read_but_cannot_write(staff_api: APIClient) -> None:
    provider = LLMProviderFactory(name="Kept")
    detail = f"{PROVIDERS_URL}{provider.pk}/"

    assert staff_api.get(PROVIDERS_URL).status_code == 200
    assert staff_api.get(detail).status_code == 200
    assert staff_api.post(PROVIDERS_URL, provider_in(), format="json").status_code == 403
    assert staff_api.patch(detail, {"name": "Renamed"}, format="json").status_code == 403
    assert staff_api.delete(detail).status_code == 403
    assert staff_api.post(f"{detail}check/").status_code == 403
    assert list(LLMProvider.objects.values_list("name", flat=True)) == ["Kept"]


def test_staff_with_the_model_permission_may_write(django_capture_on_commit_callbacks: Callable) -> None:
    user = UserFactory(is_staff=True)
    grant(user, "add_llmprovider")
    api = client_for(user)

    with django_capture_on_commit_callbacks():
        created = api.post(PROVIDERS_URL, provider_in(), format="json")
    changed = api.patch(f"{PROVIDERS_URL}{created.data['id']}/", {"name": "Renamed"}, format="json")

    assert created.status_code == 201
    assert changed.status_code == 403  # adding is not changing


def test_a_host_outside_the_allowed_hosts_is_a_field_error(admin_api: APIClient) -> None:
    response = admin_api.post(PROVIDERS_URL, provider_in(base_url="http://169.254.169.254/v1"), format="json")

    assert response.status_code == 400
    assert "not in LLM_ALLOWED_HOSTS" in str(response.data["base_url"])
    assert not LLMProvider.objects.exists()


def test_a_new_key_or_base_url_queues_a_check_and_other_changes_do_not(
    admin_api: APIClient, django_capture_on_commit_callbacks: Callable
) -> None:
    provider = LLMProviderFactory(health=LLMProvider.Health.CONNECTED, available_models=["m"])
    detail = f"{PROVIDERS_URL}{provider.pk}/"

    with django_capture_on_commit_callbacks() as callbacks:
        renamed = admin_api.patch(detail, {"name": "Renamed", "max_concurrency": 8}, format="json")
    assert renamed.status_code == 200, renamed.data
    assert (renamed.data["health"], len(callbacks)) == ("connected", 0)

    with django_capture_on_commit_callbacks() as callbacks:
        rekeyed = admin_api.patch(detail, {"api_key": "sk-rotated-5678"}, format="json")
    assert (rekeyed.data["health"], rekeyed.data["api_key_masked"], len(callbacks)) == (
        "pending",
        "••••••••5678",
        1,
    )

    with django_capture_on_commit_callbacks() as callbacks:
        moved = admin_api.patch(detail, {"base_url": "http://localhost:8080/v1"}, format="json")
    assert (moved.data["health"], len(callbacks)) == ("pending", 1)

    provider.refresh_from_db()
    assert (provider.name, provider.max_concurrency) == ("Renamed", 8)
    assert provider.api_key == "sk-rotated-5678"  # a PATCH without a key kept it
    assert provider.base_url == "http://localhost:8080/v1"


def test_an_empty_key_removes_the_stored_one(
    admin_api: APIClient, django_capture_on_commit_callbacks: Callable
) -> None:
    provider = LLMProviderFactory()

    with django_capture_on_commit_callbacks():
        response = admin_api.patch(f"{PROVIDERS_URL}{provider.pk}/", {"api_key": ""}, format="json")

    assert response.data["api_key_set"] is False
    provider.refresh_from_db()
    assert provider.api_key == ""


def test_checking_a_provider_records_its_models(admin_api: APIClient, fake_openai: FakeOpenAI) -> None:
    provider = LLMProviderFactory(base_url=fake_openai.base_url)

    response = admin_api.post(f"{PROVIDERS_URL}{provider.pk}/check/")

    assert response.status_code == 200, response.data
    assert response.data["health"] == "connected"
    assert response.data["available_models"] == ["fake-model", "fake-model-large"]
    assert response.data["health_checked_at"] is not None
    provider.refresh_from_db()
    assert provider.health == LLMProvider.Health.CONNECTED


def test_checking_a_provider_that_refuses_the_key_says_why(
    admin_api: APIClient, fake_openai: FakeOpenAI
) -> None:
    provider = LLMProviderFactory(base_url=fake_openai.base_url, api_key=REFUSED_KEY)

    response = admin_api.post(f"{PROVIDERS_URL}{provider.pk}/check/")

    assert response.status_code == 200
    assert response.data["health"] == "error"
    assert "refused the API key" in response.data["health_error"]
    assert REFUSED_KEY not in response.content.decode()


def test_the_models_endpoint_asks_the_provider(staff_api: APIClient, fake_openai: FakeOpenAI) -> None:
    provider = LLMProviderFactory(base_url=fake_openai.base_url)

    response = staff_api.get(f"{PROVIDERS_URL}{provider.pk}/models/")

    assert response.status_code == 200
    assert response.data == {"models": ["fake-model", "fake-model-large"]}
    assert any(r["_path"].endswith("/models") for r in fake_openai.requests)


def test_the_models_of_an_unreachable_provider_are_a_502(staff_api: APIClient) -> None:
    provider = LLMProviderFactory(base_url=UNREACHABLE_URL, timeout_seconds=2)

    response = staff_api.get(f"{PROVIDERS_URL}{provider.pk}/models/")

    assert response.status_code == 502
    assert "cannot be reached" in response.data["detail"]


def test_providers_filter_by_health_and_activity(staff_api: APIClient) -> None:
    LLMProviderFactory(name="Up", health=LLMProvider.Health.CONNECTED)
    LLMProviderFactory(name="Down", health=LLMProvider.Health.ERROR)
    LLMProviderFactory(name="Off", health=LLMProvider.Health.CONNECTED, is_active=False)

    connected = staff_api.get(PROVIDERS_URL, {"health": "connected", "is_active": "true"})

    assert [p["name"] for p in connected.data["results"]] == ["Up"]


def test_a_provider_used_by_agents_cannot_be_deleted(admin_api: APIClient) -> None:
    used = AgentFactory().provider
    unused = LLMProviderFactory()

    refused = admin_api.delete(f"{PROVIDERS_URL}{used.pk}/")
    deleted = admin_api.delete(f"{PROVIDERS_URL}{unused.pk}/")

    assert refused.status_code == 409
    assert refused.data["detail"].startswith(f"{used} is still used by 1 agent;")
    assert deleted.status_code == 204
    assert list(LLMProvider.objects.all()) == [used]


# Agents


def test_an_admin_creates_an_agent(admin_api: APIClient) -> None:
    provider = LLMProviderFactory()

    response = admin_api.post(AGENTS_URL, agent_in(provider, temperature=0.7), format="json")

    assert response.status_code == 201, response.data
    assert response.data["provider_name"] == provider.name
    assert response.data["task_configs"] == []
    agent = Agent.objects.get(name="Extractor")
    assert (agent.provider, agent.model, agent.temperature) == (provider, "fake-model", 0.7)


def test_an_agent_on_a_switched_off_provider_is_refused(admin_api: APIClient) -> None:
    provider = LLMProviderFactory(is_active=False)

    response = admin_api.post(AGENTS_URL, agent_in(provider), format="json")

    assert response.status_code == 400
    assert "switched off" in str(response.data["provider"])
    assert not Agent.objects.exists()


def test_an_agent_whose_provider_was_switched_off_stays_editable(admin_api: APIClient) -> None:
    agent = AgentFactory(provider=LLMProviderFactory(is_active=False))

    response = admin_api.put(
        f"{AGENTS_URL}{agent.pk}/", agent_in(agent.provider, name="Renamed"), format="json"
    )

    assert response.status_code == 200, response.data
    agent.refresh_from_db()
    assert agent.name == "Renamed"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"temperature": 3}, "temperature"), ({"temperature": -0.1}, "temperature"), ({"model": ""}, "model")],
)
def test_an_invalid_agent_is_a_field_error(admin_api: APIClient, overrides: dict, field: str) -> None:
    response = admin_api.post(AGENTS_URL, agent_in(LLMProviderFactory(), **overrides), format="json")

    assert response.status_code == 400
    assert field in response.data
    assert not Agent.objects.exists()


def test_an_agent_without_a_model_is_refused(admin_api: APIClient) -> None:
    payload = agent_in(LLMProviderFactory())
    del payload["model"]

    response = admin_api.post(AGENTS_URL, payload, format="json")

    assert response.status_code == 400
    assert "model" in response.data


def test_agents_filter_by_provider_and_activity(staff_api: APIClient) -> None:
    provider = LLMProviderFactory()
    AgentFactory(name="Mine", provider=provider)
    AgentFactory(name="Mine but off", provider=provider, is_active=False)
    AgentFactory(name="Other")

    response = staff_api.get(AGENTS_URL, {"provider": provider.pk, "is_active": "true"})

    assert [a["name"] for a in response.data["results"]] == ["Mine"]


def test_testing_an_agent_returns_its_proposals_and_usage(
    admin_api: APIClient, agent: Agent, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_openai.queue(FakeReply.ok({"proposals": [GOOD_PROPOSAL]}))

    response = admin_api.post(f"{AGENTS_URL}{agent.pk}/test/")

    assert response.status_code == 200, response.data
    assert response.data["ok"] is True
    assert [p["title"] for p in response.data["proposals"]] == ["Fix the login crash on Android 14"]
    assert (response.data["error"], response.data["error_kind"]) == ("", "")
    assert (response.data["prompt_tokens"], response.data["completion_tokens"]) == (120, 40)
    assert response.data["cost"] == "0.200000"  # 120 × 1 + 40 × 2 per 1000 tokens
    assert response.data["attempts"] == 1
    assert response.data["latency_seconds"] > 0
    sent = fake_openai.completion_requests()[0]["messages"][1]["content"]
    assert "dark mode" in sent  # the built-in sample went out
    assert fake_openai.completion_requests()[0]["_auth"] == f"Bearer {TEST_API_KEY}"
    assert TEST_API_KEY not in caplog.text


def test_testing_an_agent_with_given_messages_and_task_config_sends_them(
    admin_api: APIClient, agent: Agent, fake_openai: FakeOpenAI
) -> None:
    other = TaskConfigFactory(instructions="Only list chores.")
    AgentTaskAssignmentFactory(agent=agent, task_config=other)
    fake_openai.queue(FakeReply.ok({"tasks": []}))
    body = {
        "task_config": other.pk,
        "messages": [
            {"author": "Zoe", "text": "please rotate the staging keys"},
            {"author": "Yan", "text": "ok"},
        ],
    }

    response = admin_api.post(f"{AGENTS_URL}{agent.pk}/test/", body, format="json")

    assert response.status_code == 200, response.data
    assert response.data["ok"] is True
    request = fake_openai.completion_requests()[0]
    assert "Only list chores." in request["messages"][0]["content"]
    assert "#1 09:00 Zoe: please rotate the staging keys" in request["messages"][1]["content"]
    assert "#2 Yan: ok" in request["messages"][1]["content"]  # no time within 10 minutes


def test_testing_an_agent_on_an_unreachable_provider_says_why(admin_api: APIClient, agent: Agent) -> None:
    LLMProvider.objects.filter(pk=agent.provider_id).update(base_url=UNREACHABLE_URL)

    response = admin_api.post(f"{AGENTS_URL}{agent.pk}/test/", {}, format="json")

    assert response.status_code == 200
    assert response.data["ok"] is False
    assert "cannot be reached" in response.data["error"]
    assert response.data["error_kind"] == "connection"
    assert response.data["proposals"] == []


def test_testing_an_agent_without_a_task_config_is_a_400(admin_api: APIClient) -> None:
    agent = AgentFactory()

    response = admin_api.post(f"{AGENTS_URL}{agent.pk}/test/")

    assert response.status_code == 400
    assert response.data["code"] == "no_task_config"
    assert "has no task config" in response.data["detail"]


def test_testing_with_a_task_config_the_agent_lacks_is_a_field_error(
    admin_api: APIClient, agent: Agent
) -> None:
    stranger = TaskConfigFactory()

    response = admin_api.post(f"{AGENTS_URL}{agent.pk}/test/", {"task_config": stranger.pk}, format="json")

    assert response.status_code == 400
    assert "not one of this agent's" in str(response.data["task_config"])


def test_testing_an_agent_takes_the_change_permission(agent: Agent, fake_openai: FakeOpenAI) -> None:
    user = UserFactory(is_staff=True)
    api = client_for(user)

    refused = api.post(f"{AGENTS_URL}{agent.pk}/test/")
    grant(user, "change_agent")
    allowed = api.post(f"{AGENTS_URL}{agent.pk}/test/")

    assert refused.status_code == 403
    assert allowed.status_code == 200
    assert len(fake_openai.completion_requests()) == 1


def test_an_agent_used_by_runs_cannot_be_deleted(admin_api: APIClient) -> None:
    run = AnalysisRunFactory()

    response = admin_api.delete(f"{AGENTS_URL}{run.assignment.agent_id}/")

    assert response.status_code == 409
    assert "is still used by 1 analysis run;" in response.data["detail"]
    assert Agent.objects.filter(pk=run.assignment.agent_id).exists()


# Task configs


def test_an_admin_creates_a_task_config(admin_api: APIClient) -> None:
    schema = {"type": "object", "properties": {"tasks": {"type": "array"}}}

    response = admin_api.post(
        TASK_CONFIGS_URL,
        {"name": "Chores", "instructions": "List chores.", "response_schema": schema},
        format="json",
    )

    assert response.status_code == 201, response.data
    assert TaskConfig.objects.get(name="Chores").response_schema == schema


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "strin"}}},
            "Not a valid JSON Schema at properties/a/type",
        ),
        ({"type": "array"}, '"type": "object"'),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_an_invalid_json_schema_is_refused_with_the_reason(
    admin_api: APIClient, schema: Any, reason: str
) -> None:
    response = admin_api.post(
        TASK_CONFIGS_URL, {"name": "Broken", "instructions": "x", "response_schema": schema}, format="json"
    )

    assert response.status_code == 400
    assert reason in str(response.data["response_schema"])
    assert not TaskConfig.objects.filter(name="Broken").exists()


def test_a_task_config_cannot_be_changed_to_an_invalid_schema(admin_api: APIClient) -> None:
    task_config = TaskConfigFactory()

    response = admin_api.patch(
        f"{TASK_CONFIGS_URL}{task_config.pk}/", {"response_schema": {"type": 5}}, format="json"
    )

    assert response.status_code == 400
    assert "Not a valid JSON Schema" in str(response.data["response_schema"])


# Assignments


def test_assigning_a_task_config_and_repeating_it(admin_api: APIClient) -> None:
    agent, task_config = AgentFactory(), TaskConfigFactory()
    body = {"agent": agent.pk, "task_config": task_config.pk}

    first = admin_api.post(ASSIGNMENTS_URL, body, format="json")
    repeat = admin_api.post(ASSIGNMENTS_URL, body, format="json")

    assert first.status_code == 201, first.data
    assert (first.data["agent_name"], first.data["task_config_name"]) == (agent.name, task_config.name)
    assert repeat.status_code == 409
    assert repeat.data["code"] == "already_assigned"
    assert f"{agent} already has the task config {task_config}" in repeat.data["detail"]
    assert AgentTaskAssignment.objects.filter(agent=agent).count() == 1


def test_removing_an_assignment(admin_api: APIClient) -> None:
    assignment = AgentTaskAssignmentFactory()
    used = AnalysisRunFactory().assignment

    removed = admin_api.delete(f"{ASSIGNMENTS_URL}{assignment.pk}/")
    refused = admin_api.delete(f"{ASSIGNMENTS_URL}{used.pk}/")

    assert removed.status_code == 204
    assert refused.status_code == 409
    assert list(AgentTaskAssignment.objects.all()) == [used]


def test_assignments_take_the_add_permission(staff_api: APIClient) -> None:
    agent, task_config = AgentFactory(), TaskConfigFactory()

    response = staff_api.post(
        ASSIGNMENTS_URL, {"agent": agent.pk, "task_config": task_config.pk}, format="json"
    )

    assert response.status_code == 403
    assert not AgentTaskAssignment.objects.filter(agent=agent).exists()


# Costs


def _make_providers(count: int) -> None:
    LLMProviderFactory.create_batch(count, available_models=["a", "b"])


def _make_agents(count: int) -> None:
    for agent in AgentFactory.create_batch(count):
        AgentTaskAssignmentFactory(agent=agent)


def _make_task_configs(count: int) -> None:
    TaskConfigFactory.create_batch(count)


def _make_assignments(count: int) -> None:
    AgentTaskAssignmentFactory.create_batch(count)


@pytest.mark.parametrize(
    ("url", "make"),
    [
        (PROVIDERS_URL, _make_providers),
        (AGENTS_URL, _make_agents),
        (TASK_CONFIGS_URL, _make_task_configs),
        (ASSIGNMENTS_URL, _make_assignments),
    ],
)
def test_lists_cost_the_same_queries_however_long(url: str, make: Callable[[int], None]) -> None:
    # A token, so the count does not depend on session handling.
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=UserFactory(is_staff=True)).key}")

    def queries_for_list() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            response = api.get(url)
        assert response.status_code == 200
        return len(queries), response.data["count"]

    make(5)
    few, few_count = queries_for_list()
    make(15)
    many, many_count = queries_for_list()

    assert many_count - few_count == 15
    assert many == few
