"""Run events reach a subscribed browser over the real channel layer, numbered and in order."""

from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client

from analysis import services
from analysis.models import AnalysisRun
from conftest import WorkerProcess
from tasktracker.asgi import application
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.fakes.openai_server import FakeOpenAI, propose_actionable

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    yield
    await sync_to_async(connections.close_all)()


def prepare(base_url: str) -> tuple[AnalysisRun, str]:
    setup = make_setup(base_url)
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()  # the run's queued task: this test plays the worker
    client = Client()
    client.force_login(setup["lead"])
    return run, client.cookies["sessionid"].value


def run_pipeline(run_id: int) -> None:
    services.begin_run(run_id=run_id)
    for batch_id in services.plan_run(run_id=run_id):
        services.process_batch(batch_id=batch_id, claim_id=f"test-{batch_id}")


async def test_a_run_streams_numbered_events_in_order(
    fake_openai: FakeOpenAI, worker_process: WorkerProcess
) -> None:
    # This test drives the pipeline itself: no worker may take the run's task meanwhile.
    await sync_to_async(worker_process.stop)()
    fake_openai.default = propose_actionable
    run, session = await sync_to_async(prepare)(fake_openai.base_url)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/runs/{run.pk}/",
        headers=[(b"origin", b"http://localhost"), (b"cookie", f"sessionid={session}".encode())],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    await sync_to_async(run_pipeline)(run.pk)
    events = []
    while not events or events[-1]["event"] not in ("run_completed", "run_failed"):
        events.append(await communicator.receive_json_from(timeout=5))
    await communicator.disconnect()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))
    names = [e["event"] for e in events]
    assert names[0] == "run_started"
    assert "progress_updated" in names and "proposals_created" in names
    assert names[-1] == "run_completed"
    final = events[-1]["data"]
    assert final["status"] == "completed"
    assert final["batches_done"] == final["batches_total"] > 0
    assert final["proposals_created"] == 5
    assert final["prompt_tokens"] == 120 * final["batches_total"]
    # A progress event once the batches are planned and after every batch; proposals and
    # the end are announced after it.
    assert names.count("progress_updated") == 1 + final["batches_total"]
    assert all(
        names[i - 1] == "progress_updated" for i, name in enumerate(names) if name == "proposals_created"
    )
