"""A reviewer works through the review queue with the keyboard and finds the tasks made;
with Daphne serving WebSockets, a colleague's reviews show up in an open queue."""

from datetime import timedelta

import pytest
from channels.testing import ChannelsLiveServerTestCase
from django.utils import timezone
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from projects.models import Task
from proposals.models import TaskProposal
from tests.browser.conftest import FreshDaphneProcess, login
from tests.factories import ChatFactory, MessageFactory, ProjectFactory, TaskProposalFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def make_queue() -> None:
    project = ProjectFactory(name="Acme Mobile")
    chat = ChatFactory(title="Acme team", username="acme_team")
    start = timezone.now() - timedelta(hours=1)
    for n, (title, confidence, text) in enumerate(
        [
            ("Fix the login crash", 0.95, "The app crashes on login, can someone fix it by Friday?"),
            ("Lunch on Friday", 0.8, "Lunch on Friday, anyone?"),
            ("Update the docs", 0.6, "The docs still describe the old login."),
        ]
    ):
        message = MessageFactory(chat=chat, text=text, sent_at=start + timedelta(minutes=n))
        TaskProposalFactory(project=project, title=title, confidence=confidence, source_messages=[message])


def test_a_reviewer_approves_rejects_and_edits_with_the_keyboard(
    browser_page: Page, live_server: LiveServer
) -> None:
    UserFactory(username="rita", is_staff=True, is_superuser=True)
    make_queue()
    page = browser_page
    title = page.locator("#proposal h2")
    remaining = page.locator('[data-field="remaining"]')
    notices = page.locator(".messages")

    login(page, live_server.url, "rita", next_url="/review/")
    expect(title).to_have_text("Fix the login crash")
    expect(remaining).to_have_text("3")
    expect(page.locator("li.chat-line.source")).to_contain_text("The app crashes on login")

    page.keyboard.press("a")
    expect(notices).to_contain_text("“Fix the login crash” created.")
    expect(title).to_have_text("Lunch on Friday")
    expect(remaining).to_have_text("2")

    page.keyboard.press("r")
    reason = page.locator("#id_reason")
    expect(reason).to_be_focused()
    page.keyboard.type("Small talk, not a task")
    expect(reason).to_have_value("Small talk, not a task")
    page.keyboard.press("Enter")
    expect(notices).to_contain_text("Rejected proposal")
    expect(title).to_have_text("Update the docs")
    expect(remaining).to_have_text("1")

    page.keyboard.press("e")
    page.fill("#id_title", "Update the login docs")
    page.get_by_role("button", name="Save and approve").click()
    expect(notices).to_contain_text("“Update the login docs” created.")
    expect(page.locator("#queue-empty")).to_have_text("Nothing left to review.")
    expect(remaining).to_have_text("0")

    page.goto(f"{live_server.url}/admin/projects/task/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#result_list")).to_contain_text("Fix the login crash")
    expect(page.locator("#result_list")).to_contain_text("Update the login docs")
    expect(page.locator("#result_list")).not_to_contain_text("Lunch on Friday")
    rejected = TaskProposal.objects.get(title="Lunch on Friday")
    assert (rejected.status, rejected.review_note) == ("rejected", "Small talk, not a task")
    assert Task.objects.filter(proposals__reviewer__username="rita").count() == 2


class TestLiveQueue(ChannelsLiveServerTestCase):
    """With Daphne serving WebSockets, a colleague's reviews show up in an open queue."""

    ProtocolServerProcess = FreshDaphneProcess

    @pytest.fixture(autouse=True)
    def _page(self, browser_page: Page) -> None:
        self.page = browser_page

    def test_a_colleagues_reviews_show_up_in_the_open_queue(self) -> None:
        UserFactory(username="rita", is_staff=True)
        UserFactory(username="sam", is_staff=True)
        make_queue()
        shown = TaskProposal.objects.get(title="Fix the login crash")
        other = TaskProposal.objects.get(title="Update the docs")
        page = self.page
        notices = page.locator("#live-notices")
        login(page, self.live_server_url, "rita", next_url="/review/")
        expect(page.locator("#proposal h2")).to_have_text("Fix the login crash")
        expect(page.locator("#live")).to_have_text("live")
        # Sam reviews in a browser of his own.
        colleague = page.context.browser.new_context().new_page()
        login(colleague, self.live_server_url, "sam", next_url=f"/review/{other.pk}/")

        colleague.keyboard.press("a")
        expect(colleague.locator(".messages")).to_contain_text("Approved proposal")
        expect(notices).to_contain_text(f"Proposal {other.pk} was approved by a colleague.")
        expect(page.locator('[data-field="remaining"]')).to_have_text("2")

        colleague.goto(f"{self.live_server_url}/review/{shown.pk}/")
        colleague.fill("#id_reason", "Not a task")
        colleague.keyboard.press("Enter")
        expect(notices).to_contain_text(
            f"Proposal {shown.pk} was rejected by a colleague: it is the one shown here."
        )
        expect(page.locator("#approve-form")).to_be_hidden()
        expect(page.locator('[data-field="remaining"]')).to_have_text("1")
        page.get_by_role("link", name="Next proposal").click()
        expect(page.locator("#proposal h2")).to_have_text("Lunch on Friday")
        colleague.context.close()
