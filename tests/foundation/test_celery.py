import pytest

from tasktracker.celery import app as celery_app
from tasktracker.celery import ping


def test_a_task_round_trips_through_the_broker_and_a_real_worker(live_worker: str) -> None:
    result = ping.delay()
    assert result.get(timeout=30) == "pong"
    assert result.status == "SUCCESS"


def test_celery_is_configured_for_at_least_once_work() -> None:
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit


@pytest.mark.parametrize("setting", ["broker_url", "result_backend"])
def test_celery_uses_the_configured_redis(setting: str, settings) -> None:
    assert celery_app.conf[setting] == settings.REDIS_URL
