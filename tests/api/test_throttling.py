"""The per-user throttle keeps DRF's sliding window (now a Redis sorted set written in one
round trip): a user over the rate gets 429 with Retry-After, and only that user."""

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tasktracker.throttling import redis_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PROJECTS_URL = "/api/v1/projects/"


@pytest.fixture
def two_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "user", "2/min")


@pytest.fixture
def users() -> Iterator[list[AbstractBaseUser]]:
    made = [UserFactory(), UserFactory()]
    # Test databases reuse ids: clear what an earlier test's user of the same id left.
    for user in made:
        cache.delete(f"throttle_user_{user.pk}")
    yield made
    for user in made:
        cache.delete(f"throttle_user_{user.pk}")


def client_of(user: AbstractBaseUser) -> APIClient:
    api = APIClient()
    api.force_login(user)
    return api


@pytest.mark.usefixtures("two_a_minute")
def test_a_user_over_the_rate_is_refused_with_a_retry_after(users: list[AbstractBaseUser]) -> None:
    api = client_of(users[0])

    responses = [api.get(PROJECTS_URL) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert 0 < int(responses[2]["Retry-After"]) <= 60


@pytest.mark.usefixtures("two_a_minute")
def test_one_users_requests_do_not_count_against_another(users: list[AbstractBaseUser]) -> None:
    first, second = (client_of(user) for user in users)
    for _ in range(3):
        first.get(PROJECTS_URL)

    assert [second.get(PROJECTS_URL).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.usefixtures("two_a_minute")
def test_refused_requests_do_not_use_up_the_window(users: list[AbstractBaseUser]) -> None:
    api = client_of(users[0])
    for _ in range(5):
        api.get(PROJECTS_URL)

    # Two accepted requests in the window, whatever was refused after them.
    key = cache.make_key(f"throttle_user_{users[0].pk}")
    assert redis_client().zcard(key) == 2
