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

import gc
import multiprocessing
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import django
import pytest
from daphne.testing import DaphneProcess
from django.conf import settings
from django.db import connections
from django.test.utils import setup_test_environment
from playwright.sync_api import Browser, Page, sync_playwright

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
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Browser]:
    """Headless chromium, one for a module's tests: each test gets a context of its own.

    Playwright's sync API keeps an event loop running in this thread, and Django refuses
    ORM calls from a thread with a running loop; the tests' own ORM calls and the database
    set-up and flushes around them are plain sync code, so they are allowed for as long as
    the browser lives (and no longer: it stops with the module, so other modules' tests,
    async ones among them, keep Django's check and a thread with no loop running).
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium).")
    # An event loop left by an earlier async test closes its channel layer when collected,
    # by running the layer's flush on itself, which it cannot do while Playwright's loop
    # runs in this thread (an "Exception ignored" warning): collected now, it can.
    gc.collect()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()


@pytest.fixture
def browser_page(chromium_browser: Browser) -> Iterator[Page]:
    """A fresh page in a fresh browser context (no cookies, no storage, the default
    viewport), in the module's chromium."""
    context = chromium_browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def login(
    page: Page, base_url: str, username: str, *, password: str | None = None, next_url: str = "/"
) -> None:
    """Sign in on the /accounts/login/ page and land on `next_url`; the factories' password
    unless told another."""
    # Not imported at the top: a Daphne child imports this module before Django is set up,
    # and the factories import the models.
    from tests.factories import TEST_PASSWORD

    password = TEST_PASSWORD if password is None else password
    page.goto(f"{base_url}/accounts/login/?{urlencode({'next': next_url})}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "/accounts/login/" in page.url:
        errors = page.locator(".errorlist").all_inner_texts()
        raise AssertionError(f"Could not log in as {username}: {errors or 'still on the login page'}")


class FreshDaphneProcess(DaphneProcess):
    """Daphne in a child process started afresh (spawned), on this process's test database.

    A forked child kept the test process's objects but not its threads or locks. Worst is
    SQLite: the child took over the test process's open database files and its record of
    the locks held on them without holding any, so once the test process closed its last
    connection (as it does after each transactional test) SQLite deleted the write-ahead
    log under the child, which from then on read the old one and no longer saw what the
    tests committed (a user it was just given could not sign in). It also inherited
    asgiref's executor without its thread and the channel layer's Redis connections.

    A spawned child sets Django up itself, so it is told the test database's name and the
    password hashers, and the test environment (no real e-mail) is set up there as
    pytest-django set it up here.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A spawned child can only be given what was made in the spawn context.
        self.port = SPAWN.Value("i", self.port.value)
        self.ready = SPAWN.Event()
        self.errors = SPAWN.Queue()
        self.database_names = {alias: connections[alias].settings_dict["NAME"] for alias in connections}
        # The tests' fast hasher (conftest.py), or a user the tests made could not sign in.
        self.password_hashers = list(settings.PASSWORD_HASHERS)

    @staticmethod
    def _Popen(process: BaseProcess) -> Any:
        return SPAWN.Process._Popen(process)

    def run(self) -> None:
        for alias, name in self.database_names.items():
            settings.DATABASES[alias]["NAME"] = name
            settings.DATABASES[alias].setdefault("TEST", {})["NAME"] = name  # Channels' setup reads it
        settings.PASSWORD_HASHERS = self.password_hashers
        django.setup()
        setup_test_environment(debug=False)
        super().run()
