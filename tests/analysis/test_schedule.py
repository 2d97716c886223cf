from datetime import timedelta

import pytest
from django.utils import timezone

from analysis.models import AnalysisRun
from analysis.services import start_scheduled_runs
from projects.models import ProjectConfig
from projects.schedules import parse_schedule
from tasktracker.exceptions import DomainError
from tests.analysis.helpers import make_setup

pytestmark = pytest.mark.django_db


def test_a_project_with_a_due_schedule_gets_a_scheduled_run() -> None:
    setup = make_setup("http://127.0.0.1:9/v1")
    ProjectConfig.objects.filter(project=setup["project"]).update(
        schedule="*/5 * * * *", created_at=timezone.now() - timedelta(hours=1)
    )
    runs = start_scheduled_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run.trigger == AnalysisRun.Trigger.SCHEDULED
    assert run.assignment == setup["assignment"]
    assert timezone.now() - run.window_end < timedelta(minutes=1)
    # The next tick starts nothing: the new run is pending and nothing is due yet.
    assert start_scheduled_runs() == []


def test_projects_without_a_schedule_get_no_runs() -> None:
    make_setup("http://127.0.0.1:9/v1")
    assert start_scheduled_runs() == []
    assert AnalysisRun.objects.count() == 0


@pytest.mark.parametrize("expression", ["every day", "* * * *", "61 * * * *"])
def test_an_invalid_schedule_is_refused_with_a_sentence(expression: str) -> None:
    with pytest.raises(DomainError, match="cron expression"):
        parse_schedule(expression)
