import pytest
from django.test import Client
from django.urls import reverse

from agents.defaults import DEFAULT_TASK_CONFIG_NAME
from agents.models import Agent, AgentTaskAssignment, LLMProvider, TaskConfig
from agents.services import assign_task_config, check_provider_health
from tasktracker.exceptions import DomainError
from tests.factories import AgentFactory, LLMProviderFactory, UserFactory
from tests.fakes.openai_server import REFUSED_KEY, FakeOpenAI, FakeReply

pytestmark = pytest.mark.django_db

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


@pytest.fixture
def agent(fake_openai: FakeOpenAI) -> Agent:
    provider = LLMProviderFactory(base_url=fake_openai.base_url, timeout_seconds=2)
    agent = AgentFactory(provider=provider, model="fake-model")
    assign_task_config(agent=agent, task_config=TaskConfig.objects.get(name=DEFAULT_TASK_CONFIG_NAME))
    return agent


def agent_test_url(agent: Agent) -> str:
    return reverse("admin:agents_agent_test", args=[agent.pk])


def test_the_agent_page_links_to_its_test(admin_client: Client, agent: Agent) -> None:
    page = admin_client.get(reverse("admin:agents_agent_change", args=[agent.pk]))
    assert agent_test_url(agent) in page.content.decode()


def test_testing_an_agent_shows_its_proposals_and_usage(admin_client: Client, agent, fake_openai) -> None:
    fake_openai.queue(FakeReply.ok({"proposals": [GOOD_PROPOSAL]}))
    page = admin_client.post(agent_test_url(agent), {"sample": ""})
    html = page.content.decode()
    assert page.status_code == 200
    assert "Fix the login crash on Android 14" in html
    assert "120 prompt + 40 completion tokens" in html
    sent = fake_openai.completion_requests()[0]["messages"][1]["content"]
    assert "dark mode" in sent  # the built-in sample went out


def test_testing_with_given_messages_sends_them(admin_client: Client, agent, fake_openai) -> None:
    admin_client.post(agent_test_url(agent), {"sample": "Zoe: please rotate the staging keys\nYan: on it"})
    sent = fake_openai.completion_requests()[0]["messages"][1]["content"]
    assert "#1 09:00 Zoe: please rotate the staging keys" in sent
    assert "#2 Yan: on it" in sent  # the time is shown again only 10 minutes on


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("unreachable", "cannot be reached"),
        ("refused_key", "refused the API key"),
        ("unknown_model", "has no model"),
        ("malformed", "not valid JSON"),
    ],
)
def test_a_failing_agent_test_says_why(admin_client: Client, agent, fake_openai, setup, expected) -> None:
    if setup == "unreachable":
        LLMProvider.objects.filter(pk=agent.provider_id).update(base_url="http://127.0.0.1:9/v1")
    elif setup == "refused_key":
        agent.provider.api_key = REFUSED_KEY
        agent.provider.save()
    elif setup == "unknown_model":
        Agent.objects.filter(pk=agent.pk).update(model="gpt-nonexistent")
    else:
        fake_openai.queue(FakeReply.malformed())
    page = admin_client.post(agent_test_url(agent), {"sample": ""}, follow=True)
    assert page.status_code == 200
    assert expected in page.content.decode()


def test_a_bad_sample_line_is_a_form_error(admin_client: Client, agent) -> None:
    page = admin_client.post(agent_test_url(agent), {"sample": "no colon here"})
    assert "Line 1 is not" in page.content.decode()


def test_only_users_who_may_change_agents_can_test_them(client: Client, agent) -> None:
    staff = UserFactory(is_staff=True)
    client.force_login(staff)
    assert client.get(agent_test_url(agent)).status_code == 403


def test_a_provider_outside_the_allowed_hosts_is_refused(admin_client: Client) -> None:
    page = admin_client.post(
        reverse("admin:agents_llmprovider_add"),
        {
            "name": "Internal",
            "base_url": "http://169.254.169.254/v1",
            "is_active": "on",
            "timeout_seconds": 30,
            "max_concurrency": 2,
            "requests_per_minute": 60,
            "price_per_1k_input": 0,
            "price_per_1k_output": 0,
        },
    )
    assert page.status_code == 200
    assert "not in LLM_ALLOWED_HOSTS" in page.content.decode()
    assert not LLMProvider.objects.filter(name="Internal").exists()


def test_creating_a_provider_queues_its_health_check(
    admin_client: Client, fake_openai, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        admin_client.post(
            reverse("admin:agents_llmprovider_add"),
            {
                "name": "Local",
                "base_url": fake_openai.base_url,
                "api_key": "sk-new-secret-9999",
                "is_active": "on",
                "timeout_seconds": 30,
                "max_concurrency": 2,
                "requests_per_minute": 60,
                "price_per_1k_input": 0,
                "price_per_1k_output": 0,
            },
        )
    provider = LLMProvider.objects.get(name="Local")
    assert provider.health == LLMProvider.Health.PENDING
    assert len(callbacks) == 1


@pytest.mark.parametrize(
    ("change", "rechecked"),
    [
        ({"name": "Renamed"}, False),
        ({"api_key": "sk-old-secret-1234"}, False),  # the stored key typed again
        ({"api_key": "sk-new-secret-9999"}, True),
        ({"base_url": "http://127.0.0.1:9/v2"}, True),
    ],
)
def test_a_provider_changed_in_the_admin_is_checked_again_only_for_a_new_address_or_key(
    admin_client: Client, django_capture_on_commit_callbacks, change: dict, rechecked: bool
) -> None:
    provider = LLMProviderFactory(base_url="http://127.0.0.1:9/v1", health=LLMProvider.Health.CONNECTED)
    provider.api_key = "sk-old-secret-1234"
    provider.save()
    data = {
        "name": provider.name,
        "base_url": provider.base_url,
        "is_active": "on",
        "timeout_seconds": 30,
        "max_concurrency": 2,
        "requests_per_minute": 60,
        "price_per_1k_input": 0,
        "price_per_1k_output": 0,
        **change,
    }

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(reverse("admin:agents_llmprovider_change", args=[provider.pk]), data)

    provider.refresh_from_db()
    assert response.status_code == 302
    assert provider.name == data["name"]
    assert provider.api_key == data.get("api_key", "sk-old-secret-1234")
    assert len(callbacks) == (1 if rechecked else 0)
    assert (provider.health == LLMProvider.Health.PENDING) is rechecked


def test_a_health_check_records_the_models_or_the_reason(fake_openai: FakeOpenAI) -> None:
    provider = LLMProviderFactory(base_url=fake_openai.base_url)
    checked = check_provider_health(provider_id=provider.pk)
    assert checked.health == LLMProvider.Health.CONNECTED
    assert checked.available_models == ["fake-model", "fake-model-large"]
    provider.api_key = REFUSED_KEY
    provider.save()
    checked = check_provider_health(provider_id=provider.pk)
    assert checked.health == LLMProvider.Health.ERROR
    assert "refused the API key" in checked.health_error


def test_the_agent_form_offers_the_providers_models(admin_client: Client, fake_openai) -> None:
    provider = LLMProviderFactory(base_url=fake_openai.base_url)
    check_provider_health(provider_id=provider.pk)
    page = admin_client.get(reverse("admin:agents_agent_add"))
    assert '<option value="fake-model-large">' in page.content.decode()


def test_an_agent_on_a_switched_off_provider_is_refused(admin_client: Client) -> None:
    provider = LLMProviderFactory(is_active=False)
    page = admin_client.post(
        reverse("admin:agents_agent_add"),
        {
            "name": "Off",
            "provider": provider.pk,
            "model": "m",
            "temperature": 0.2,
            "max_output_tokens": 100,
            "batch_token_budget": 1000,
            "assignments-TOTAL_FORMS": 0,
            "assignments-INITIAL_FORMS": 0,
        },
    )
    assert "switched off" in page.content.decode()
    assert not Agent.objects.filter(name="Off").exists()


def test_an_invalid_json_schema_is_refused_with_the_reason(admin_client: Client) -> None:
    page = admin_client.post(
        reverse("admin:agents_taskconfig_add"),
        {
            "name": "Broken",
            "instructions": "x",
            "response_schema": '{"type": "object", "properties": {"a": {"type": "strin"}}}',
            "assignments-TOTAL_FORMS": 0,
            "assignments-INITIAL_FORMS": 0,
        },
    )
    assert "Not a valid JSON Schema at properties/a/type" in page.content.decode()
    assert not TaskConfig.objects.filter(name="Broken").exists()


def test_assigning_the_same_task_config_twice_is_a_409(agent: Agent) -> None:
    task_config = TaskConfig.objects.get(name=DEFAULT_TASK_CONFIG_NAME)
    with pytest.raises(DomainError) as error:
        assign_task_config(agent=agent, task_config=task_config)
    assert error.value.status == 409
    assert AgentTaskAssignment.objects.filter(agent=agent).count() == 1
