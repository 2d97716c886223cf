"""The pages people use pass axe-core's WCAG 2.1 A/AA rules (no critical or serious violation)
and do not scroll sideways on a 390 px wide phone.

axe-core is a pinned copy (tests/browser/vendor/axe.min.js, 4.11.1 from its npm package,
MPL-2.0, licence beside it): no download at test time.
"""

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page
from pytest_django.live_server_helper import LiveServer

from projects.services import create_project
from tests.browser.conftest import login
from tests.factories import (
    BatchFactory,
    ChatFactory,
    MessageFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text(encoding="utf-8")
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
PHONE_WIDTH = 390


def pages(lead_username: str) -> dict[str, Any]:
    """A project as a team lead sets it up (glossary, priority rules, components), a run with a
    done and a failed batch, and a pending proposal with its source message."""
    lead = UserFactory(username=lead_username, is_staff=True)
    chat = ChatFactory(title="Acme Mobile Team")
    project = create_project(
        name="Acme Mobile",
        slug="acme-mobile",
        user=lead,
        changes={
            "chats": [chat.pk],
            "keywords": ["android"],
            "glossary": [{"term": "RC", "meaning": "Release candidate"}],
            "components": [{"name": "Android app", "keywords": ["android"]}],
            "priority_rules": [{"when": "crash on login", "priority": "critical"}],
        },
    )
    message = MessageFactory(chat=chat, text="The Android app crashes on login, can someone fix it?")
    proposal = TaskProposalFactory(project=project, title="Fix the login crash", source_messages=[message])
    run = proposal.run
    run.projects.add(project)
    BatchFactory(run=run, index=0, status="done", message_ids=[message.pk])
    BatchFactory(run=run, index=1, status="failed", error="The provider kept answering 500.")
    TaskFactory(project=project, title="Update the release checklist", assignee=lead)
    return {
        "run list": "/runs/",
        "run": f"/runs/{run.pk}/",
        "new run": "/runs/new/",
        "review queue": "/review/",
        "split": f"/review/{proposal.pk}/split/",
        "duplicate": f"/review/{proposal.pk}/duplicate/?find=login",
        "edit proposal": f"/review/{proposal.pk}/edit/",
        "projects": "/projects/",
        "project": f"/projects/{project.slug}/",
        "project edit": f"/projects/{project.slug}/edit/",
        "tasks": f"/projects/{project.slug}/tasks/",
    }


def violations(page: Page) -> list[str]:
    page.add_script_tag(content=AXE)
    found = page.evaluate(
        """async (tags) => (await axe.run(document, {runOnly: tags})).violations
            .filter((v) => v.impact === "critical" || v.impact === "serious")
            .map((v) => `${v.id} (${v.impact}): ` +
                v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", "))""",
        WCAG,
    )
    return list(found)


def sideways_overflow(page: Page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))


def test_the_pages_people_use_have_no_serious_accessibility_violation(
    browser_page: Page, live_server: LiveServer
) -> None:
    urls = pages("alice")
    login(browser_page, live_server.url, "alice")

    found = {}
    for name, url in urls.items():
        browser_page.goto(live_server.url + url)
        if problems := violations(browser_page):
            found[name] = problems

    assert found == {}


def test_the_pages_people_use_do_not_scroll_sideways_on_a_phone(
    browser_page: Page, live_server: LiveServer
) -> None:
    urls = pages("alice")
    browser_page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    login(browser_page, live_server.url, "alice")

    overflowing = {}
    for name, url in urls.items():
        browser_page.goto(live_server.url + url)
        if overflow := sideways_overflow(browser_page):
            overflowing[name] = overflow

    assert overflowing == {}
