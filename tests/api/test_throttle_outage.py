"""The API keeps answering while the cache's Redis is down: throttling, which reads and
writes that cache on every request, lets requests through with a warning instead of
answering 500, and throttles again once the cache is back."""

import logging
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tasktracker.embedded import free_port
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PROJECTS_URL = "/api/v1/projects/"
DOCS_URL = "/api/docs/"  # open to anonymous requests, so the anon throttle reads the cache


def take_the_cache_down(settings: Any) -> None:
    """The default cache at a port where nothing listens."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tasktracker.throttling"]


def test_a_user_request_is_answered_while_the_cache_is_down(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api = APIClient()
    api.force_login(UserFactory())
    take_the_cache_down(settings)
    caplog.set_level(logging.WARNING)

    response = api.get(PROJECTS_URL)

    assert response.status_code == 200
    (warning,) = warnings_of(caplog)
    assert warning.startswith("The user throttle let a request through: its cache failed")


def test_an_anonymous_request_is_answered_while_the_cache_is_down(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    take_the_cache_down(settings)
    caplog.set_level(logging.WARNING)

    response = APIClient().get(DOCS_URL)

    assert response.status_code == 200
    (warning,) = warnings_of(caplog)
    assert warning.startswith("The anon throttle let a request through: its cache failed")


def test_throttling_resumes_once_the_cache_is_back(
    settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "user", "2/min")
    user = UserFactory()
    cache.delete(f"throttle_user_{user.pk}")  # an earlier test's user of the same id
    api = APIClient()
    api.force_login(user)
    working = settings.CACHES

    assert [api.get(PROJECTS_URL).status_code for _ in range(3)] == [200, 200, 429]
    take_the_cache_down(settings)
    assert api.get(PROJECTS_URL).status_code == 200
    settings.CACHES = working
    assert api.get(PROJECTS_URL).status_code == 429
    cache.delete(f"throttle_user_{user.pk}")
