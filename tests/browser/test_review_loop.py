"""The whole review loop in a browser: a team lead starts a run on the New run page, a
worker asks the (fake, loopback) model; the project's reviewer triages its proposals from
the list by keyboard only, including a split, a duplicate and an undo; the lead closes the
run, reads its band table, and moves one of the new tasks to done."""

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from analysis.models import AnalysisRun
from projects.models import Task
from proposals.models import ReviewEvent, TaskProposal
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup, wait_for_status
from tests.browser.conftest import login
from tests.factories import ProjectMembershipFactory, UserFactory
from tests.fakes.openai_server import FakeOpenAI, propose_actionable

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state()


def start_run_as_lead(page: Page, base_url: str) -> AnalysisRun:
    login(page, base_url, "alice", next_url="/runs/new/")
    page.fill("#id_window_start", WINDOW_START.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#id_window_end", WINDOW_END.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#run")).to_be_visible()
    run = wait_for_status(AnalysisRun.objects.latest("pk"), AnalysisRun.Status.COMPLETED)
    assert run.proposals_created >= 4
    return run


def press(page: Page, key: str) -> None:
    page.keyboard.press(key)


def arrived(page: Page, locator: Any) -> None:
    """Once `locator` shows that a new page is in, wait until its scripts have run (the
    keys are theirs)."""
    expect(locator).to_be_visible()
    page.wait_for_load_state("load")


def approve(page: Page) -> None:
    """`a` on the proposal shown, then wait for the next page to say it was approved."""
    shown = page.locator("#review").get_attribute("data-proposal-id")
    press(page, "a")
    arrived(page, page.locator(".messages", has_text=f"Approved proposal {shown}:"))


def triage_by_keyboard(page: Page, base_url: str, run: AnalysisRun) -> None:
    """Bob reviews the run's proposals with keys only, from the run page's link."""
    login(page, base_url, "bob", next_url=f"/runs/{run.pk}/")
    page.locator("#review-link").focus()
    press(page, "Enter")
    title = page.locator("#proposal h2")
    listed = page.locator("#triage-list li")
    arrived(page, page.locator("#triage-list"))
    expect(listed).to_have_count(run.proposals_created)
    expect(page.locator("#queue-progress")).to_contain_text(f"0 of {run.proposals_created} reviewed")
    expect(page.locator("#triage-list li.current")).to_contain_text(title.inner_text())

    # The keys, and the guidelines of the run's task config.
    press(page, "?")
    expect(page.locator("#help")).to_be_visible()
    expect(page.locator("#help")).to_contain_text("Split into several proposals")
    press(page, "Escape")
    expect(page.locator("#help")).to_be_hidden()
    press(page, "g")
    expect(page.locator("#guidelines > div")).to_be_visible()

    # Approve the first.
    approve(page)

    # Split the second into two parts: the first title is focused, Tab reaches the second.
    split_title = title.inner_text()
    press(page, "s")
    arrived(page, page.locator("#split-form"))
    expect(page.locator("#id_part-0-title")).to_be_focused()
    page.keyboard.type("First half")
    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "id_part-1-title":
            break
        page.keyboard.press("Tab")
    expect(page.locator("#id_part-1-title")).to_be_focused()
    page.keyboard.type("Second half")
    press(page, "Enter")
    arrived(page, page.locator(".messages", has_text="into proposals"))

    # Mark the one shown now as a duplicate of a part, found by search, then undo that.
    duplicate_title = title.inner_text()
    press(page, "d")
    arrived(page, page.locator("#duplicate-search"))
    expect(page.locator("#duplicate-search")).to_be_focused()
    page.keyboard.type("First half")
    press(page, "Enter")
    expect(page).to_have_url(re.compile(r"find=First"))
    arrived(page, page.locator("#candidates"))
    expect(page.locator("#candidates li")).to_have_count(1)
    expect(page.locator("#candidates li")).to_contain_text("First half")
    press(page, "1")
    arrived(page, page.locator(".messages", has_text="as a duplicate of proposal"))
    press(page, "u")
    arrived(page, page.locator(".messages", has_text="it is pending again"))
    expect(title).to_have_text(duplicate_title)

    # Reject it after all, with a reason, then approve what remains.
    press(page, "r")
    page.keyboard.type("Not something we will do")
    press(page, "Enter")
    arrived(page, page.locator(".messages", has_text="Rejected proposal"))
    for _ in range(20):
        if page.locator("#queue-empty").count():
            break
        approve(page)
    expect(page.locator("#queue-empty")).to_have_text("Nothing left to review with these filters.")
    total = run.proposals_created + 2  # The split's two parts.
    expect(page.locator("#queue-progress")).to_contain_text(f"{total} of {total} reviewed")

    split = TaskProposal.objects.get(title=split_title, run=run, review_action=ReviewEvent.Action.SPLIT)
    assert split.status == TaskProposal.Status.MERGED
    rejected = TaskProposal.objects.get(title=duplicate_title, run=run)
    assert (rejected.status, rejected.review_note) == ("rejected", "Not something we will do")
    actions = set(rejected.review_events.values_list("action", flat=True))
    assert actions == {"mark_duplicate", "undo", "reject"}
    log_out(page)


def close_run_as_lead(page: Page, base_url: str, run: AnalysisRun) -> None:
    login(page, base_url, "alice", next_url=f"/runs/{run.pk}/")
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    page.get_by_role("link", name="Close run…").click()
    page.get_by_role("button", name="Yes, close the run").click()
    figures = page.locator("#review-figures")
    expect(figures).to_be_visible()
    expect(figures.locator('tr[data-band="medium"]')).to_contain_text("%")
    run.refresh_from_db()
    assert run.status == AnalysisRun.Status.CLOSED
    expect(page.get_by_role("link", name="Close run…")).to_be_hidden()


def finish_a_task_as_lead(page: Page, base_url: str, project: Any) -> None:
    task = Task.objects.filter(project=project).order_by("pk").first()
    page.goto(f"{base_url}/projects/{project.slug}/tasks/")
    row = page.locator(f"#task-{task.pk}")
    row.locator("select").first.select_option("done")
    row.get_by_role("button", name="Save").click()
    expect(page.locator(f"#task-{task.pk}")).to_have_attribute("data-status", "done")
    task.refresh_from_db()
    assert task.status == Task.Status.DONE


def test_a_run_goes_from_start_through_keyboard_triage_to_closed_and_a_task_done(
    browser_page: Page, live_server: LiveServer, fake_openai: FakeOpenAI, live_worker: str
) -> None:
    fake_openai.default = propose_actionable
    setup = make_setup(fake_openai.base_url, budget=60)
    bob = UserFactory(username="bob")
    ProjectMembershipFactory(project=setup["project"], user=bob, role="reviewer")

    run = start_run_as_lead(browser_page, live_server.url)
    log_out(browser_page)
    triage_by_keyboard(browser_page, live_server.url, run)
    close_run_as_lead(browser_page, live_server.url, run)
    finish_a_task_as_lead(browser_page, live_server.url, setup["project"])
