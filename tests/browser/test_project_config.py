"""A team lead edits a project's keywords in the browser and finds the new version."""

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from projects.services import create_project
from tests.browser.conftest import login
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_lead_edits_keywords_and_sees_the_new_version_in_the_history(
    browser_page: Page, live_server: LiveServer
) -> None:
    lead = UserFactory(username="alice")
    create_project(name="Acme Mobile", slug="acme-mobile", user=lead, changes={"keywords": ["android"]})
    page = browser_page

    login(page, live_server.url, "alice", next_url="/projects/")
    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#id_keywords")).to_have_value("android")
    page.fill("#id_keywords", "android, Crash\nLOGIN")
    page.fill("#id_summary", "Crashes and login too")
    page.get_by_role("button", name="Save a new version").click()

    expect(page.locator(".messages")).to_contain_text("Saved as v1.1.0")
    expect(page.locator("h1")).to_contain_text("v1.1.0")
    page.get_by_role("link", name="Version history").click()

    versions = page.locator("#versions tbody tr")
    expect(versions).to_have_count(2)
    expect(versions.first).to_contain_text("v1.1.0")
    expect(versions.first).to_contain_text("Crashes and login too")
    expect(versions.first).to_contain_text("alice")
    added = page.locator('table.diff tr[data-field="keywords"] li.added')
    expect(added).to_have_text(["crash", "login"])
