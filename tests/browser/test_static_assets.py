"""The pages people use take their look and their scripts from static files (no `<style>`
element, no inline script or style attribute that is not a live width), and every
stylesheet and script they link loads."""

import pytest
from playwright.sync_api import Page, Response
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import login
from tests.browser.test_accessibility import pages

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

INLINE = """() => [
    ...[...document.querySelectorAll("style, script:not([src])")].map((el) => el.outerHTML.slice(0, 80)),
    // A bar's width is the one style a page writes itself (the run's progress, a band's rate).
    ...[...document.querySelectorAll("[style]")]
        .filter((el) => !/^width: [\\d.]+%;?$/.test(el.getAttribute("style").trim()))
        .map((el) => el.outerHTML.slice(0, 80)),
]"""


def test_the_pages_people_use_load_their_styles_and_scripts_from_static_files(
    browser_page: Page, live_server: LiveServer
) -> None:
    urls = pages("alice")
    login(browser_page, live_server.url, "alice")
    failed: list[str] = []

    def record(response: Response) -> None:
        if "/static/" in response.url and response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    browser_page.on("response", record)
    # A page's own fetches (the run's snapshot) may be cut short by the next navigation.
    browser_page.on(
        "requestfailed",
        lambda request: failed.append(f"failed {request.url}") if "/static/" in request.url else None,
    )
    inline = {}
    for name, url in urls.items():
        browser_page.goto(live_server.url + url)
        browser_page.wait_for_load_state("load")
        if found := browser_page.evaluate(INLINE):
            inline[name] = found

    assert inline == {}
    assert failed == []


def test_the_review_pages_look_comes_from_its_stylesheet(browser_page: Page, live_server: LiveServer) -> None:
    urls = pages("alice")
    login(browser_page, live_server.url, "alice", next_url=urls["review queue"])

    # review.css lays the queue out in two columns beside each other on a wide screen.
    assert browser_page.locator(".triage").evaluate("(el) => getComputedStyle(el).display") == "grid"
