"""A worker killed mid-run: the run finishes after a restart, nothing is done twice."""

import time

import pytest

from analysis.models import AnalysisRun, Batch
from analysis.services import resume_stale_runs, start_run
from conftest import WorkerProcess
from proposals.models import TaskProposal
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup, wait_for_status
from tests.fakes.openai_server import FakeOpenAI, propose_actionable

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_run_survives_its_worker_being_killed(
    live_worker: str, worker_process: WorkerProcess, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = propose_actionable
    fake_openai.latency = 0.4
    setup = make_setup(fake_openai.base_url, budget=20)
    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    deadline = time.monotonic() + 30
    while not Batch.objects.filter(run=run, status=Batch.Status.DONE).exists():
        assert time.monotonic() < deadline, "no batch finished"
        time.sleep(0.05)
    worker_process.kill()
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.RUNNING
    assert run.batches_done < run.batches_total

    worker_process.start()
    resume_stale_runs(lease_seconds=0)
    run = wait_for_status(run, AnalysisRun.Status.COMPLETED)
    assert run.batches_done == run.batches_total
    assert run.batches_failed == 0
    assert TaskProposal.objects.filter(run=run).count() == run.proposals_created == 5
    cited = list(TaskProposal.objects.filter(run=run).values_list("source_messages", flat=True))
    assert len(cited) == len(set(cited))  # no message proposed twice
    assert sum(Batch.objects.filter(run=run).values_list("llm_calls", flat=True)) == run.llm_calls
