"""Two batches committing at once on PostgreSQL: the second waits for the first's project
lock, then sees its proposals and marks its own repeat as a duplicate."""

import threading

import pytest
from django.conf import settings
from django.db import connection, transaction

from analysis import services
from projects.models import Project
from proposals.models import TaskProposal
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import TaskProposalFactory
from tests.fakes.openai_server import FakeOpenAI, propose_actionable

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        "postgresql" not in settings.DATABASES["default"]["ENGINE"],
        reason="SQLite's write transactions are serialised whole; the row lock matters on PostgreSQL",
    ),
]


def test_a_batch_committing_while_another_holds_the_project_sees_its_proposals(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.default = propose_actionable
    setup = make_setup(fake_openai.base_url, budget=3000)
    asked = next(m for m in setup["messages"] if m.text.startswith("Please fix the flaky"))
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()  # the run's queued task: this test plays the workers
    services.begin_run(run_id=run.pk)
    (batch_id,) = services.plan_run(run_id=run.pk)

    def other_worker() -> None:
        try:
            services.process_batch(batch_id=batch_id, claim_id="other")
        finally:
            connection.close()

    worker = threading.Thread(target=other_worker)
    with transaction.atomic():
        # Another batch committing its proposal over the same message: it holds the
        # project's row, as `save_proposals` does, until it commits.
        Project.objects.select_for_update().get(pk=setup["project"].pk)
        first = TaskProposalFactory(project=setup["project"], run=run, source_messages=[asked])
        worker.start()
        worker.join(timeout=3)
        waited = worker.is_alive()
    worker.join(timeout=30)

    repeat = TaskProposal.objects.exclude(pk=first.pk).get(source_messages=asked)
    assert waited, "the batch did not wait for the other transaction"
    assert not worker.is_alive()
    assert repeat.similar_proposal_id == first.pk
    assert repeat.similarity_kind == TaskProposal.SimilarityKind.SAME_MESSAGES
