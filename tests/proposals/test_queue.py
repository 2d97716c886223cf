"""The review queue page: order, filters, the plain-form reviews, permissions, the live
notices' WebSocket, and a constant number of queries."""

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from projects.models import ProjectMembership, Task
from proposals.models import TaskProposal
from proposals.services import approve_proposal, reject_proposal
from tasktracker.asgi import application
from tests.factories import (
    AnalysisRunFactory,
    ChatFactory,
    MessageFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)
from tests.proposals.helpers import review_every_project

pytestmark = pytest.mark.django_db
QUEUE = reverse("proposals:queue")
NOW = timezone.now()


def reviewer_user(username: str = "rita") -> Any:
    return review_every_project(UserFactory(username=username))


@pytest.fixture
def reviewer() -> Any:
    return reviewer_user()


@pytest.fixture
def client_of(client: Client) -> Any:
    def log_in(user: Any) -> Client:
        client.force_login(user)
        return client

    return log_in


def proposal(title: str, confidence: float, age_minutes: int = 0, **fields: Any) -> TaskProposal:
    made = TaskProposalFactory(title=title, confidence=confidence, **fields)
    TaskProposal.objects.filter(pk=made.pk).update(created_at=NOW - timedelta(minutes=age_minutes))
    made.refresh_from_db()
    return made


def url(name: str, made: TaskProposal) -> str:
    return reverse(f"proposals:{name}", args=[made.pk])


def shown_title(response: Any) -> str | None:
    shown = response.context["proposal"]
    return shown.title if shown else None


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# What the queue shows.


def test_the_queue_shows_the_most_confident_then_oldest_proposal_first(client_of, reviewer) -> None:
    project = ProjectFactory()
    proposal("Sure but new", 0.95, age_minutes=5, project=project)
    proposal("Unsure and old", 0.6, age_minutes=60, project=project)
    proposal("Sure and old", 0.95, age_minutes=30, project=project)

    response = client_of(reviewer).get(QUEUE)

    html = response.content.decode()
    assert response.status_code == 200
    assert shown_title(response) == "Sure and old"
    assert '<span data-field="remaining">3</span> pending' in html
    assert 'id="previous-link"' not in html


def test_next_and_previous_follow_the_queue_order(client_of, reviewer) -> None:
    first = proposal("First", 0.95, age_minutes=30)
    second = proposal("Second", 0.8, age_minutes=30)
    third = proposal("Third", 0.6, age_minutes=30)
    client = client_of(reviewer)

    html = client.get(url("proposal", second)).content.decode()

    assert f'href="{url("proposal", first)}" id="previous-link"' in html
    assert f'href="{url("proposal", third)}" id="next-link"' in html


def test_the_queue_filters_by_project_and_band(client_of, reviewer) -> None:
    acme, other = ProjectFactory(name="Acme"), ProjectFactory(name="Other")
    proposal("Acme high", 0.95, project=acme)
    proposal("Acme low", 0.5, project=acme)
    proposal("Other low", 0.4, project=other)
    client = client_of(reviewer)

    by_project = client.get(QUEUE, {"project": acme.pk})
    by_band = client.get(QUEUE, {"band": "low"})
    both = client.get(QUEUE, {"project": other.pk, "band": "low"})
    none_left = client.get(QUEUE, {"project": other.pk, "band": "high"})

    assert (shown_title(by_project), by_project.context["remaining"]) == ("Acme high", 2)
    assert (shown_title(by_band), by_band.context["remaining"]) == ("Acme low", 2)
    assert (shown_title(both), both.context["remaining"]) == ("Other low", 1)
    assert shown_title(none_left) is None
    assert "Nothing left to review with these filters." in none_left.content.decode()
    # The forms on the page keep the filters.
    assert f'action="{url("approve", by_band.context["proposal"])}?band=low"' in by_band.content.decode()


def test_the_page_shows_the_proposal_with_its_sources_in_their_chat(client_of, reviewer) -> None:
    chat = ChatFactory(title="Acme team", username="acme_team")
    base = NOW - timedelta(hours=1)
    lines = [
        MessageFactory(chat=chat, text=f"Line {n}", sent_at=base + timedelta(minutes=n), telegram_id=100 + n)
        for n in range(10)
    ]
    assignee = UserFactory(first_name="Bob", last_name="Martin")
    similar = proposal("Login crash on Android", 0.7)
    shown = proposal(
        "Fix the login crash",
        0.95,
        description="It crashes after tapping Log in.",
        reasoning="Two people agreed and set a date.",
        recommendation="merge",
        priority="high",
        suggested_assignee=assignee,
        similar_proposal=similar,
        similarity_score=0.85,
        similarity_kind="similar_title",
        source_messages=[lines[5]],
        project=similar.project,
    )

    html = client_of(reviewer).get(url("proposal", shown)).content.decode()

    assert '<h2 data-field="title" id="proposal-title">Fix the login crash</h2>' in html
    assert "It crashes after tapping Log in." in html
    assert "Two people agreed and set a date." in html
    assert "Bob Martin" in html and "High" in html and "Merge" in html
    assert 'class="badge high" title="High confidence">High 0.95' in html
    assert f"Proposal {similar.pk} “Login crash on Android” (pending)" in html
    assert "score 0.85, similar title" in html
    # Three messages either side of the source, the source marked and linked to Telegram.
    for n in (2, 3, 4, 5, 6, 7, 8):
        assert f"Line {n}</span>" in html
    assert "Line 1</span>" not in html and "Line 9</span>" not in html
    assert f'class="chat-line source" data-message-id="{lines[5].pk}"' in html
    assert 'href="https://t.me/acme_team/105"' in html
    assert f"Merge with proposal {similar.pk}" in html


# Reviews with plain forms (no JavaScript).


def test_approving_creates_the_task_and_goes_on_to_the_next_proposal(client_of, reviewer) -> None:
    first = proposal("Fix the login crash", 0.95)
    second = proposal("Update the docs", 0.8)
    client = client_of(reviewer)

    response = client.post(url("approve", first))
    page = client.get(response["Location"])

    task = Task.objects.get()
    assert response.status_code == 302
    assert response["Location"] == url("proposal", second)
    tasks_url = f"/projects/{task.project.slug}/tasks/#task-{task.pk}"
    link = f'<a href="{tasks_url}">#{task.pk} “Fix the login crash”</a>'
    assert f"Approved proposal {first.pk}: task {link} created." in messages_of(page)
    assert f'<a href="{tasks_url}">' in page.content.decode()  # a link, not escaped text
    assert shown_title(page) == "Update the docs"
    assert page.context["remaining"] == 1
    assert f"Last reviewed: proposal {first.pk} “Fix the login crash”." in page.content.decode()


def test_the_last_approval_leads_back_to_an_empty_queue(client_of, reviewer) -> None:
    only = proposal("Fix the login crash", 0.95)
    client = client_of(reviewer)

    response = client.post(url("approve", only), follow=True)

    assert response.redirect_chain == [(QUEUE, 302)]
    assert "Nothing left to review." in response.content.decode()


def test_rejecting_needs_a_reason(client_of, reviewer) -> None:
    shown = proposal("Lunch on Friday", 0.6)

    response = client_of(reviewer).post(url("reject", shown), {"reason": "   "})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert shown_title(response) == "Lunch on Friday"
    shown.refresh_from_db()
    assert shown.status == "pending"


def test_rejecting_with_a_reason_goes_on_to_the_next_proposal(client_of, reviewer) -> None:
    first = proposal("Lunch on Friday", 0.95)
    second = proposal("Update the docs", 0.8)
    client = client_of(reviewer)

    response = client.post(url("reject", first), {"reason": "Not a task"})

    first.refresh_from_db()
    assert response["Location"] == url("proposal", second)
    assert (first.status, first.review_note, first.reviewer) == ("rejected", "Not a task", reviewer)
    assert f"Rejected proposal {first.pk} “Lunch on Friday”." in messages_of(client.get(response["Location"]))


def test_approving_a_proposal_rejected_meanwhile_shows_an_error(client_of, reviewer) -> None:
    shown = proposal("Lunch on Friday", 0.6)
    reject_proposal(proposal_id=shown.pk, user=UserFactory(is_staff=True), reason="Not a task")

    response = client_of(reviewer).post(url("approve", shown), follow=True)

    assert f"Proposal {shown.pk} is rejected; only pending proposals can be approved." in messages_of(
        response
    )
    assert "This proposal was rejected by" in response.content.decode()
    assert Task.objects.count() == 0


def test_editing_then_approving_makes_the_task_from_the_edits(client_of, reviewer) -> None:
    shown = proposal("Fix crash", 0.95, tags=["android"])
    client = client_of(reviewer)
    form = client.get(url("edit", shown))
    data = {
        "title": "Fix the login crash on Android",
        "description": shown.description,
        "priority": "critical",
        "category": "bug",
        "tags": "android, login",
        "due_date": "2026-12-01",
        "suggested_assignee": "",
        "approve": "",
    }

    response = client.post(url("edit", shown), data)

    task = Task.objects.get()
    assert form.status_code == 200 and 'value="android"' in form.content.decode()
    assert response.status_code == 302
    assert (task.title, task.priority, task.category, task.tags) == (
        "Fix the login crash on Android",
        "critical",
        "bug",
        ["android", "login"],
    )
    assert str(task.due_date) == "2026-12-01"
    assert shown.review_events.get().before["title"] == "Fix crash"


def test_saving_an_edit_keeps_the_proposal_pending(client_of, reviewer) -> None:
    shown = proposal("Fix crash", 0.95)
    client = client_of(reviewer)
    data = {
        "title": "Fix the crash",
        "description": "",
        "priority": "medium",
        "category": "feature",
        "tags": "",
    }

    response = client.post(url("edit", shown), {**data, "save": ""}, follow=True)

    shown.refresh_from_db()
    assert (shown.title, shown.status) == ("Fix the crash", "pending")
    assert f"Saved your changes to proposal {shown.pk}." in messages_of(response)
    assert shown.review_events.get().action == "edit"


def test_an_edit_without_a_title_is_a_form_error(client_of, reviewer) -> None:
    shown = proposal("Fix crash", 0.95)

    response = client_of(reviewer).post(
        url("edit", shown), {"title": "", "priority": "medium", "category": "bug"}
    )

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_merging_folds_the_proposal_into_its_pending_duplicate(client_of, reviewer) -> None:
    project = ProjectFactory()
    original = proposal("Login crash", 0.8, project=project, source_messages=[MessageFactory()])
    duplicate = proposal(
        "Crash at login", 0.95, project=project, similar_proposal=original, source_messages=[MessageFactory()]
    )

    response = client_of(reviewer).post(url("merge", duplicate), follow=True)

    duplicate.refresh_from_db()
    assert (duplicate.status, duplicate.merged_into) == ("merged", original)
    assert original.source_messages.count() == 2
    assert f"Merged proposal {duplicate.pk} into proposal {original.pk} “Login crash”." in messages_of(
        response
    )


def test_merging_with_an_approved_duplicate_marks_it_as_a_duplicate(client_of, reviewer) -> None:
    project = ProjectFactory()
    original = proposal("Login crash", 0.8, project=project)
    approve_proposal(proposal_id=original.pk, user=reviewer)
    duplicate = proposal("Crash at login", 0.95, project=project, similar_proposal=original)

    client_of(reviewer).post(url("merge", duplicate))

    duplicate.refresh_from_db()
    assert (duplicate.status, duplicate.review_action, duplicate.merged_into) == (
        "merged",
        "mark_duplicate",
        original,
    )


def test_merging_without_a_suggested_duplicate_shows_an_error(client_of, reviewer) -> None:
    alone = proposal("Login crash", 0.8)

    response = client_of(reviewer).post(url("merge", alone), follow=True)

    assert f"Proposal {alone.pk} has no similar proposal to merge with." in messages_of(response)


def test_undo_brings_an_approved_proposal_back_to_the_queue(client_of, reviewer) -> None:
    shown = proposal("Fix the login crash", 0.95)
    client = client_of(reviewer)
    client.post(url("approve", shown))

    response = client.post(url("undo", shown), follow=True)

    shown.refresh_from_db()
    assert shown.status == "pending"
    assert Task.objects.count() == 0
    assert f"Undid the last review of proposal {shown.pk}: it is pending again." in messages_of(response)
    assert shown_title(response) == "Fix the login crash"
    assert 'id="approve-form"' in response.content.decode()


def test_the_state_snapshot_counts_what_remains(client_of, reviewer) -> None:
    shown = proposal("Fix the login crash", 0.95)
    proposal("Update the docs", 0.8)
    approve_proposal(proposal_id=shown.pk, user=reviewer)

    state = client_of(reviewer).get(reverse("proposals:queue-state"), {"current": shown.pk}).json()

    assert state == {"remaining": 1, "current": {"id": shown.pk, "status": "approved"}}


# Permissions.


def test_someone_who_reviews_nothing_is_refused_everywhere(client_of) -> None:
    shown = proposal("Fix the login crash", 0.95)
    member = ProjectMembershipFactory(project=shown.project, role=ProjectMembership.Role.MEMBER).user
    client = client_of(member)

    pages = [client.get(QUEUE), client.get(url("proposal", shown)), client.get(url("edit", shown))]
    posts = [
        client.post(url(name, shown), {"reason": "no"}) for name in ("approve", "reject", "merge", "undo")
    ]
    posts.append(client.post(url("edit", shown), {"title": "Mine now", "approve": ""}))

    assert [response.status_code for response in pages + posts] == [403] * 8
    shown.refresh_from_db()
    assert (shown.status, shown.title) == ("pending", "Fix the login crash")
    assert Task.objects.count() == 0


def test_a_team_lead_reviews_only_the_projects_they_lead(client_of) -> None:
    led, other = ProjectFactory(name="Led"), ProjectFactory(name="Other")
    lead = ProjectMembershipFactory(project=led, role=ProjectMembership.Role.LEAD).user
    mine = proposal("Mine", 0.5, project=led)
    theirs = proposal("Theirs", 0.99, project=other)
    client = client_of(lead)

    page = client.get(QUEUE)

    assert (shown_title(page), page.context["remaining"]) == ("Mine", 1)
    # Not on the other project's team: its proposals do not exist for them.
    assert client.get(url("proposal", theirs)).status_code == 404
    assert client.post(url("approve", theirs)).status_code == 404
    assert client.post(url("approve", mine)).status_code == 302
    assert list(Task.objects.values_list("title", flat=True)) == ["Mine"]


def test_anonymous_visitors_are_sent_to_log_in(client: Client) -> None:
    response = client.get(QUEUE)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


# Queries.


def make_proposals(count: int, project: Any) -> None:
    chat = ChatFactory()
    for n in range(count):
        similar = TaskFactory(project=project)
        proposal(
            f"Proposal {n}",
            0.5 + n / 100,
            project=project,
            similar_task=similar,
            suggested_assignee=UserFactory(),
            source_messages=MessageFactory.create_batch(2, chat=chat),
        )


@pytest.mark.parametrize("page", ["queue", "second"])
def test_the_queue_page_costs_the_same_queries_for_3_or_15_proposals(client_of, reviewer, page) -> None:
    client = client_of(reviewer)
    counts = []
    for count in (3, 15):
        TaskProposal.objects.all().delete()
        make_proposals(count, ProjectFactory())
        target = (
            QUEUE if page == "queue" else url("proposal", TaskProposal.objects.order_by("-confidence")[1])
        )
        client.get(target)  # Warm the session.
        with CaptureQueriesContext(connection) as queries:
            response = client.get(target)
        assert response.context["remaining"] == count
        counts.append(len(queries))
    assert counts[0] == counts[1]


# The live queue: a colleague's review reaches an open queue.


@pytest.fixture
async def close_thread_connections() -> AsyncIterator[None]:
    # The consumer reaches the database from asgiref's shared thread; close its connection
    # or it keeps the test database open past the session (PostgreSQL refuses to drop it).
    yield
    await sync_to_async(connections.close_all)()


def session_of(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_queue(session: str) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = [(b"origin", b"http://localhost"), (b"cookie", f"sessionid={session}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/review/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


@pytest.mark.django_db(transaction=True)
async def test_a_reviewer_hears_when_a_colleague_approves(close_thread_connections) -> None:
    shown = await sync_to_async(proposal)("Fix the login crash", 0.95)
    rita, sam = await sync_to_async(reviewer_user)("rita"), await sync_to_async(reviewer_user)("sam")
    communicator, connected, _ = await open_queue(await sync_to_async(session_of)(rita))
    assert connected

    await sync_to_async(approve_proposal)(proposal_id=shown.pk, user=sam)

    event = await communicator.receive_json_from(timeout=5)
    assert event == {
        "event": "proposal_reviewed",
        "seq": 0,
        "data": {"id": shown.pk, "status": "approved", "action": "approve"},
    }
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_lead_hears_only_of_the_projects_they_lead(close_thread_connections) -> None:
    def setup() -> tuple[TaskProposal, TaskProposal, Any, Any]:
        led, other = ProjectFactory(), ProjectFactory()
        lead = ProjectMembershipFactory(project=led, role=ProjectMembership.Role.LEAD).user
        return (
            proposal("Mine", 0.9, project=led),
            proposal("Theirs", 0.9, project=other),
            lead,
            reviewer_user(),
        )

    mine, theirs, lead, colleague = await sync_to_async(setup)()
    communicator, connected, _ = await open_queue(await sync_to_async(session_of)(lead))
    assert connected

    await sync_to_async(reject_proposal)(proposal_id=theirs.pk, user=colleague, reason="Not a task")
    await sync_to_async(reject_proposal)(proposal_id=mine.pk, user=colleague, reason="Not a task")

    event = await communicator.receive_json_from(timeout=5)
    assert event["data"] == {"id": mine.pk, "status": "rejected", "action": "reject"}
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_someone_who_reviews_nothing_cannot_open_the_live_queue(close_thread_connections) -> None:
    member = await sync_to_async(UserFactory)()
    _, connected, code = await open_queue(await sync_to_async(session_of)(member))
    assert not connected
    assert code == 4403


def test_the_run_page_links_to_a_queue_of_that_runs_proposals_only() -> None:
    lead = UserFactory()
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=lead, role="lead")
    run, other = AnalysisRunFactory(projects=[project]), AnalysisRunFactory(projects=[project])
    TaskProposalFactory(run=run, project=project, title="From this run")
    TaskProposalFactory(run=other, project=project, title="From another run", confidence=0.99)
    client = Client()
    client.force_login(lead)

    run_page = client.get(f"/runs/{run.pk}/").content.decode()
    queue = client.get(f"/review/?run={run.pk}").content.decode()

    assert f'href="/review/?run={run.pk}"' in run_page
    assert "From this run" in queue
    assert "From another run" not in queue
    assert f"Run #{run.pk}" in queue
    assert "From another run" in client.get("/review/").content.decode()
