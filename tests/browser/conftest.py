"""Fixtures for browser tests: Playwright driving Debian's chromium.

A browser test is marked `@pytest.mark.browser`, runs against pytest-django's
`live_server` (so it needs committed data: `django_db(transaction=True)`), takes
`browser_page` and signs in with `login`:

    pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

    def test_something(browser_page: Page, live_server: LiveServer) -> None:
        UserFactory(username="alice")
        login(browser_page, live_server.url, "alice", next_url="/projects/")
        expect(browser_page.locator("h1")).to_contain_text("Projects")

`live_server` speaks no WebSocket: pages that stream progress need Channels'
`ChannelsLiveServerTestCase` (Daphne) instead, with `FreshDaphneProcess` as its
`ProtocolServerProcess`.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
from asgiref.sync import SyncToAsync
from channels.layers import channel_layers
from daphne.testing import DaphneProcess
from playwright.sync_api import Page, sync_playwright

from tests.factories import TEST_PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--headless=new",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


@pytest.fixture
def browser_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    """A fresh page in a fresh browser context (no cookies), in headless chromium.

    Playwright's sync API keeps an event loop running in this thread, and Django refuses
    ORM calls from a thread with a running loop; the test's own ORM calls are plain sync
    code, so they are allowed for as long as the browser lives (and no longer: the
    browser is started and stopped per test, so other tests keep Django's check).
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium).")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def login(
    page: Page, base_url: str, username: str, *, password: str = TEST_PASSWORD, next_url: str = "/"
) -> None:
    """Sign in on the /accounts/login/ page and land on `next_url`."""
    page.goto(f"{base_url}/accounts/login/?{urlencode({'next': next_url})}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "/accounts/login/" in page.url:
        errors = page.locator(".errorlist").all_inner_texts()
        raise AssertionError(f"Could not log in as {username}: {errors or 'still on the login page'}")


class FreshDaphneProcess(DaphneProcess):
    """Daphne in a forked child that starts clean. A fork keeps the test process's objects
    but not its threads: after an earlier WebSocket test, asgiref's thread-sensitive
    executor counts a worker thread the child does not have (so the consumer's database
    call would wait forever), and the channel layer holds Redis connections of the test
    process's event loops."""

    def run(self) -> None:
        SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
        channel_layers.backends.clear()
        super().run()
