"""An open run page follows its run live, over Daphne's WebSocket: batches start, fail with
their error and finish in the table, and the bar shows the failed part, with no reload."""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from channels.testing import ChannelsLiveServerTestCase
from django.db import connections
from django.db.models import F
from django.urls import reverse
from playwright.sync_api import Locator, Page, expect

from analysis import services
from analysis.consumers import run_group
from analysis.models import AnalysisRun, Batch
from conftest import WorkerProcess
from tasktracker import realtime
from tasktracker.celery import app as celery_app
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.browser.conftest import FreshDaphneProcess, login
from tests.fakes.openai_server import FakeOpenAI, FakeReply, propose_actionable

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REFUSAL = "The model refused: I can't help with that."
GREEN, RED, BLUE = "rgb(21, 128, 61)", "rgb(185, 28, 28)", "rgb(37, 99, 235)"


def planned_run(base_url: str) -> tuple[AnalysisRun, list[int]]:
    """A running run of the helpers' chat with its batches planned, none processed."""
    setup = make_setup(base_url)
    run = services.start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    celery_app.control.purge()  # the run's queued task: this test plays the worker
    services.begin_run(run_id=run.pk)
    return run, services.plan_run(run_id=run.pk)


class TestLiveRunPage(ChannelsLiveServerTestCase):
    ProtocolServerProcess = FreshDaphneProcess

    @pytest.fixture(autouse=True)
    def _fixtures(
        self, browser_page: Page, fake_openai: FakeOpenAI, worker_process: WorkerProcess
    ) -> Iterator[None]:
        worker_process.stop()  # no worker may take the run's batches meanwhile
        self.page, self.fake_openai = browser_page, fake_openai
        # Services run in a thread of their own: this one runs Playwright's event loop, and
        # `broadcast` cannot run its own loop in a thread that already runs one. That thread's
        # channel layer is closed there too, or its loop, collected later in a thread running
        # Playwright's, fails to close.
        with ThreadPoolExecutor(max_workers=1) as self.pool:
            yield
            self.pool.submit(connections.close_all).result()
            self.pool.submit(realtime._drop_sender).result()

    def call(self, service: Callable[..., Any], /, **kwargs: Any) -> Any:
        return self.pool.submit(service, **kwargs).result()

    def open_run_page(self) -> tuple[AnalysisRun, list[int]]:
        run, batch_ids = self.call(planned_run, base_url=self.fake_openai.base_url)
        # Keeps the page's sockets within the test's reach, to drop them.
        self.page.add_init_script(
            "window.sockets = []; window.WebSocket = class extends WebSocket {"
            " constructor(...args) { super(...args); window.sockets.push(this); } };"
        )
        page_url = reverse("analysis:run-detail", args=[run.pk])
        login(self.page, self.live_server_url, "alice", next_url=page_url)
        expect(self.page.locator("#live")).to_have_text("live")
        self.page.evaluate("window.sameDocument = true")  # gone if the page reloads
        return run, batch_ids

    def row(self, index: int) -> Locator:
        return self.page.locator(f'#batches tr[data-batch="{index}"]')

    def wait_until_painted(self, part: str) -> None:
        """Until the bar's `part` has a width on screen (its width is animated)."""
        self.page.wait_for_function(
            f"document.querySelector('[data-part={part}]').getBoundingClientRect().width > 0"
        )

    def send(self, run: AnalysisRun, event: str, data: dict[str, Any], seq: int) -> None:
        self.call(realtime.broadcast, group=run_group(run.pk), event=event, data=data, seq=seq)

    def test_batches_start_fail_and_finish_on_the_open_page(self) -> None:
        _, batch_ids = self.open_run_page()
        total = len(batch_ids)
        page = self.page
        bar = page.get_by_role("progressbar", name="Batches finished")
        expect(page.locator("#batches tbody tr")).to_have_count(total)
        expect(self.row(0)).to_have_attribute("data-status", "pending")
        expect(bar).to_have_attribute("aria-valuenow", "0")

        self.call(services.claim_batch, batch_id=batch_ids[0], claim_id="page-0")
        expect(self.row(0)).to_have_attribute("data-status", "running")
        expect(self.row(0).locator(".badge")).to_have_text("running")
        expect(self.row(1)).to_have_attribute("data-status", "pending")

        self.fake_openai.replies.append(FakeReply.refused())
        self.call(services.process_batch, batch_id=batch_ids[0], claim_id="page-0")
        expect(self.row(0)).to_have_attribute("data-status", "failed")
        expect(self.row(0).locator("td.error-text")).to_have_text(REFUSAL)
        expect(bar).to_have_attribute("aria-valuetext", f"0 of {total} batches done, 1 failed")
        self.wait_until_painted("failed")

        self.fake_openai.default = propose_actionable
        self.call(services.process_batch, batch_id=batch_ids[1], claim_id="page-1")
        expect(self.row(1)).to_have_attribute("data-status", "done")
        expect(bar).to_have_attribute("aria-valuetext", f"1 of {total} batches done, 1 failed")
        expect(bar).to_have_attribute("aria-valuenow", str(round(200 / total)))
        expect(page.locator('[data-field="batches_failed"]')).to_have_text("1")
        self.wait_until_painted("done")
        done, failed = page.evaluate(
            "[...document.querySelectorAll('#progress > div')]"
            ".map(el => getComputedStyle(el).backgroundColor + ' ' + getComputedStyle(el).backgroundImage)"
        )
        assert done.startswith(GREEN)
        assert RED in failed
        assert BLUE not in done + failed
        assert page.evaluate("window.sameDocument") is True

    def test_a_gap_in_the_events_reloads_the_snapshot_and_late_events_are_ignored(self) -> None:
        run, batch_ids = self.open_run_page()
        shown = self.call(lambda: services.run_state(AnalysisRun.objects.get(pk=run.pk)))
        # Two changes whose events were lost on the way: the page only hears of a later one,
        # whose data it does not need (here the state it already shows).
        Batch.objects.filter(pk=batch_ids[0]).update(status=Batch.Status.FAILED, error="Lost on the way")
        AnalysisRun.objects.filter(pk=run.pk).update(event_seq=F("event_seq") + 2)
        self.send(run, "progress_updated", shown, seq=shown["seq"] + 2)

        expect(self.row(0)).to_have_attribute("data-status", "failed")
        expect(self.row(0).locator("td.error-text")).to_have_text("Lost on the way")

        # An older event arriving late changes nothing.
        self.send(run, "batch_started", shown, seq=shown["seq"] + 1)
        self.page.wait_for_timeout(500)
        expect(self.row(0)).to_have_attribute("data-status", "failed")
        assert self.page.evaluate("window.sameDocument") is True

    def test_a_dropped_connection_reconnects_and_reloads_the_snapshot(self) -> None:
        _, batch_ids = self.open_run_page()
        # A change whose event is lost, then the connection drops: only the snapshot the page
        # reloads once it is back can tell it.
        Batch.objects.filter(pk=batch_ids[0]).update(status=Batch.Status.FAILED, error="Sent while away")
        self.page.evaluate("window.sockets[0].close()")

        expect(self.row(0)).to_have_attribute("data-status", "failed")
        expect(self.row(0).locator("td.error-text")).to_have_text("Sent while away")
        expect(self.page.locator("#live")).to_have_text("live")
        assert self.page.evaluate("window.sockets.length") == 2
        assert self.page.evaluate("window.sameDocument") is True
