"""The admin as the review UI: the actions, the reject confirmation, the change page's
review section and edits, what non-reviewers see, and constant queries."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from projects.models import ProjectMembership, Task
from proposals.models import ReviewEvent, TaskProposal
from proposals.services import approve_proposal, reject_proposal
from tests.factories import (
    ChatFactory,
    MessageFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:proposals_taskproposal_changelist")
REVIEW_ACTIONS = ["approve_selected", "reject_selected", "merge_selected", "mark_duplicate_of_similar"]


@pytest.fixture
def reviewer() -> Any:
    """Staff with no model permissions: reviewing is `projects.access`'s, and staff review
    every project."""
    return UserFactory(username="rita", is_staff=True)


@pytest.fixture
def client(reviewer: Any) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


def change_url(proposal: TaskProposal) -> str:
    return reverse("admin:proposals_taskproposal_change", args=[proposal.pk])


def review_url(proposal: TaskProposal, verb: str) -> str:
    return reverse("admin:proposals_taskproposal_review", args=[proposal.pk, verb])


def act(client: Client, action: str, proposals: list[TaskProposal], **extra: str) -> Any:
    data = {"action": action, "_selected_action": [p.pk for p in proposals], "index": "0", **extra}
    return client.post(CHANGELIST, data, follow=True)


def confirm(client: Client, action: str, proposals: list[TaskProposal], **extra: str) -> Any:
    """The POST of a confirmation page (no `index`, `post=yes`), as delete_selected's."""
    data = {"action": action, "_selected_action": [p.pk for p in proposals], "post": "yes", **extra}
    return client.post(CHANGELIST, data)


def messages_of(response: Any) -> list[tuple[str, str]]:
    return [(message.level_tag, str(message)) for message in response.context["messages"]]


def status_of(proposal: TaskProposal) -> str:
    proposal.refresh_from_db()
    return proposal.status


# The actions.


def test_a_reviewer_sees_the_review_actions_and_no_delete(client: Client) -> None:
    TaskProposalFactory()

    response = client.get(CHANGELIST)

    choices = [name for name, _ in response.context["action_form"].fields["action"].choices if name]
    assert choices == REVIEW_ACTIONS
    assert "Reject the selected proposals…" in response.content.decode()


def test_approving_the_selected_creates_their_tasks(client: Client, reviewer: Any) -> None:
    first, second = TaskProposalFactory(title="Fix login"), TaskProposalFactory(title="Update docs")

    response = act(client, "approve_selected", [first, second])

    assert sorted(Task.objects.values_list("title", flat=True)) == ["Fix login", "Update docs"]
    assert (status_of(first), status_of(second)) == ("approved", "approved")
    assert first.reviewer == reviewer
    assert messages_of(response) == [("success", f"Approved 2 proposal(s): {first.pk}, {second.pk}.")]


def test_approving_a_rejected_proposal_shows_an_error_and_approves_the_others(
    client: Client, reviewer: Any
) -> None:
    pending, rejected = TaskProposalFactory(confidence=0.9), TaskProposalFactory(confidence=0.8)
    reject_proposal(proposal_id=rejected.pk, user=reviewer, reason="Not a task")

    response = act(client, "approve_selected", [pending, rejected])

    assert messages_of(response) == [
        ("success", f"Approved 1 proposal(s): {pending.pk}."),
        ("error", f"Proposal {rejected.pk} is rejected; only pending proposals can be approved."),
    ]
    assert (status_of(pending), status_of(rejected)) == ("approved", "rejected")
    assert Task.objects.count() == 1


def test_rejecting_first_asks_for_the_reason(client: Client) -> None:
    first, second = TaskProposalFactory(title="Lunch on Friday"), TaskProposalFactory(title="Party")

    response = client.post(
        CHANGELIST, {"action": "reject_selected", "_selected_action": [first.pk, second.pk], "index": "0"}
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Lunch on Friday" in html and "Party" in html
    assert 'name="reason"' in html
    assert 'name="post" value="yes"' in html
    assert f'name="_selected_action" value="{first.pk}"' in html
    assert (status_of(first), status_of(second)) == ("pending", "pending")


def test_confirming_the_rejection_with_a_reason_rejects_them(client: Client) -> None:
    first, second = TaskProposalFactory(), TaskProposalFactory()

    response = confirm(client, "reject_selected", [first, second], reason="Small talk, not tasks")
    page = client.get(response["Location"])

    assert response.status_code == 302
    for proposal in (first, second):
        proposal.refresh_from_db()
        assert (proposal.status, proposal.review_note) == ("rejected", "Small talk, not tasks")
    assert ("success", f"Rejected 2 proposal(s): {first.pk}, {second.pk}.") in messages_of(page)


def test_confirming_the_rejection_without_a_reason_asks_again(client: Client) -> None:
    proposal = TaskProposalFactory(title="Lunch on Friday")

    response = confirm(client, "reject_selected", [proposal], reason="   ")

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert "Lunch on Friday" in response.content.decode()
    assert status_of(proposal) == "pending"


def test_rejecting_reports_the_ones_already_reviewed(client: Client, reviewer: Any) -> None:
    approved, pending = TaskProposalFactory(), TaskProposalFactory()
    approve_proposal(proposal_id=approved.pk, user=reviewer)

    response = confirm(client, "reject_selected", [approved, pending], reason="Not a task")
    page = client.get(response["Location"])

    assert ("error", f"Proposal {approved.pk} is approved; only pending proposals can be rejected.") in (
        messages_of(page)
    )
    assert (status_of(approved), status_of(pending)) == ("approved", "rejected")


def test_merging_the_selected_folds_them_into_the_first_listed(client: Client) -> None:
    project = ProjectFactory()
    top = TaskProposalFactory(
        project=project, title="Login crash", confidence=0.95, source_messages=[MessageFactory()]
    )
    lower = TaskProposalFactory(project=project, confidence=0.7, source_messages=[MessageFactory()])

    response = act(client, "merge_selected", [lower, top])

    lower.refresh_from_db()
    assert (status_of(top), lower.status, lower.merged_into) == ("pending", "merged", top)
    assert top.source_messages.count() == 2
    assert messages_of(response) == [("success", f"Merged {lower.pk} into “Login crash” ({top.pk}).")]


def test_merging_proposals_of_two_projects_shows_an_error(client: Client) -> None:
    first, second = TaskProposalFactory(), TaskProposalFactory()

    response = act(client, "merge_selected", [first, second])

    assert messages_of(response) == [("error", "Only proposals of one project can be merged.")]
    assert (status_of(first), status_of(second)) == ("pending", "pending")


def test_marking_duplicates_of_their_similar_proposals(client: Client) -> None:
    project = ProjectFactory()
    original = TaskProposalFactory(project=project)
    duplicate = TaskProposalFactory(project=project, similar_proposal=original, similarity_score=1)
    alone = TaskProposalFactory(project=project)

    response = act(client, "mark_duplicate_of_similar", [duplicate, alone])

    duplicate.refresh_from_db()
    assert (duplicate.status, duplicate.merged_into, duplicate.review_action) == (
        "merged",
        original,
        "mark_duplicate",
    )
    assert status_of(alone) == "pending"
    assert sorted(messages_of(response)) == [
        ("error", f"Proposal {alone.pk} has no similar proposal."),
        ("success", f"Marked as duplicates: {duplicate.pk} of {original.pk}."),
    ]


# The change page.


def test_the_change_page_shows_the_sources_in_their_chat_context(client: Client) -> None:
    chat = ChatFactory(title="Acme team", username="acme_team")
    start = timezone.now() - timedelta(hours=2)
    lines = [
        MessageFactory(chat=chat, text=f"Line {n}", sent_at=start + timedelta(minutes=n), telegram_id=200 + n)
        for n in range(12)
    ]
    proposal = TaskProposalFactory(source_messages=[lines[3], lines[5]])

    html = client.get(change_url(proposal)).content.decode()

    # Both windows (three messages either side) joined into one excerpt, each line once.
    for n in range(9):
        assert html.count(f"Line {n}</span>") == 1
    assert "Line 9</span>" not in html
    assert html.count('class="chat-line source"') == 2
    assert f'class="chat-line source" data-message-id="{lines[5].pk}"' in html
    assert 'href="https://t.me/acme_team/205"' in html


def test_a_private_chat_message_has_no_telegram_link(client: Client) -> None:
    chat = ChatFactory(type="private", username="")
    proposal = TaskProposalFactory(source_messages=[MessageFactory(chat=chat, text="Please fix it")])

    html = client.get(change_url(proposal)).content.decode()

    assert "Please fix it" in html
    assert "open in Telegram" not in html


def test_the_change_page_shows_the_models_view_and_similar_work(client: Client) -> None:
    project = ProjectFactory()
    similar = TaskProposalFactory(project=project, title="Login crash")
    task = TaskFactory(project=project, title="Crash on login")
    proposal = TaskProposalFactory(
        project=project,
        reasoning="Two people agreed on it.",
        recommendation="update_existing",
        similar_proposal=similar,
        similar_task=task,
        similarity_score=0.75,
        similarity_kind="overlapping_messages",
    )

    html = client.get(change_url(proposal)).content.decode()

    assert "Two people agreed on it." in html
    assert "Update existing" in html
    assert f'<a href="{change_url(similar)}">{similar.pk} “Login crash”</a> (pending)' in html
    assert f"#{task.pk} “Crash on login”</a>" in html
    assert "score 0.75, overlapping messages" in html


def test_the_review_section_offers_what_fits_the_status(client: Client, reviewer: Any) -> None:
    pending = TaskProposalFactory()
    rejected = TaskProposalFactory()
    reject_proposal(proposal_id=rejected.pk, user=reviewer, reason="Not a task")

    pending_html = client.get(change_url(pending)).content.decode()
    rejected_html = client.get(change_url(rejected)).content.decode()

    assert review_url(pending, "approve") in pending_html
    assert 'name="_approve"' in pending_html and 'name="title"' in pending_html
    assert review_url(rejected, "approve") not in rejected_html
    assert review_url(rejected, "reopen") in rejected_html and review_url(rejected, "undo") in rejected_html
    assert 'name="title"' not in rejected_html  # A reviewed proposal is read-only.


def test_approving_from_the_change_page(client: Client) -> None:
    proposal = TaskProposalFactory(title="Fix login")

    response = client.post(review_url(proposal, "approve"), follow=True)

    task = Task.objects.get()
    assert ("success", f"Approved “Fix login”: task #{task.pk} created.") in messages_of(response)
    assert status_of(proposal) == "approved"


def test_rejecting_from_the_change_page_needs_a_reason(client: Client) -> None:
    proposal = TaskProposalFactory(title="Lunch")

    refused = client.post(review_url(proposal, "reject"), {"reason": ""}, follow=True)
    done = client.post(review_url(proposal, "reject"), {"reason": "Not a task"}, follow=True)

    assert ("error", "Give a reason to reject a proposal.") in messages_of(refused)
    assert ("success", "Rejected “Lunch”.") in messages_of(done)
    assert status_of(proposal) == "rejected"


def test_undo_and_reopen_from_the_change_page(client: Client, reviewer: Any) -> None:
    approved, rejected = TaskProposalFactory(title="Fix login"), TaskProposalFactory(title="Lunch")
    approve_proposal(proposal_id=approved.pk, user=reviewer)
    reject_proposal(proposal_id=rejected.pk, user=reviewer, reason="Not a task")

    undone = client.post(review_url(approved, "undo"), follow=True)
    reopened = client.post(review_url(rejected, "reopen"), follow=True)

    assert ("success", "Undid the last review of “Fix login”: it is pending.") in messages_of(undone)
    assert ("success", "Reopened “Lunch”: it is pending again.") in messages_of(reopened)
    assert (status_of(approved), status_of(rejected)) == ("pending", "pending")
    assert Task.objects.count() == 0


def test_undo_with_nothing_to_undo_shows_an_error(client: Client) -> None:
    proposal = TaskProposalFactory()

    response = client.post(review_url(proposal, "undo"), follow=True)

    assert ("error", f"Proposal {proposal.pk} has no review action to undo.") in messages_of(response)


def edit_data(proposal: TaskProposal, **changes: Any) -> dict[str, Any]:
    data = {
        "title": proposal.title,
        "description": proposal.description,
        "priority": proposal.priority,
        "category": proposal.category,
        "tags": ", ".join(proposal.tags),
        "due_date": "",
        "suggested_assignee": "",
        "review_events-TOTAL_FORMS": "0",
        "review_events-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    return {**data, **changes}


def test_saving_the_change_form_edits_through_the_service(client: Client, reviewer: Any) -> None:
    proposal = TaskProposalFactory(title="Fix crash", confidence=0.8)

    response = client.post(
        change_url(proposal),
        edit_data(proposal, title="Fix the login crash", tags="android, login", confidence="0.1"),
    )

    proposal.refresh_from_db()
    assert response.status_code == 302
    assert (proposal.title, proposal.tags, proposal.status, proposal.confidence) == (
        "Fix the login crash",
        ["android", "login"],
        "pending",
        0.8,
    )
    event = proposal.review_events.get()
    assert (event.action, event.user, event.before["title"]) == (
        ReviewEvent.Action.EDIT,
        reviewer,
        "Fix crash",
    )


def test_save_and_approve_makes_the_task_from_the_edits(client: Client) -> None:
    proposal = TaskProposalFactory(title="Fix crash")
    data = edit_data(proposal, title="Fix the login crash", priority="critical", _approve="Save and approve")
    del data["_save"]

    response = client.post(change_url(proposal), data, follow=True)

    task = Task.objects.get()
    assert (task.title, task.priority) == ("Fix the login crash", "critical")
    assert status_of(proposal) == "approved"
    assert ("success", f"Approved “Fix the login crash”: task #{task.pk} created.") in messages_of(response)
    assert proposal.review_events.get().action == "approve"


def test_saving_a_proposal_approved_meanwhile_changes_nothing(client: Client, reviewer: Any) -> None:
    proposal = TaskProposalFactory(title="Fix crash")
    data = edit_data(proposal, title="Too late")
    approve_proposal(proposal_id=proposal.pk, user=UserFactory(is_staff=True))

    response = client.post(change_url(proposal), data, follow=True)

    proposal.refresh_from_db()
    assert proposal.title == "Fix crash"
    assert ("error", f"Proposal {proposal.pk} was approved meanwhile; your changes were not saved.") in (
        messages_of(response)
    )


# Who may review.


def model_admin() -> Any:
    return admin.site._registry[TaskProposal]


def request_of(user: Any, path: str = CHANGELIST) -> Any:
    request = RequestFactory().get(path)
    request.user = user
    return request


def test_only_reviewers_get_actions() -> None:
    project = ProjectFactory()
    lead = ProjectMembershipFactory(project=project, role=ProjectMembership.Role.LEAD).user
    member = ProjectMembershipFactory(project=project, role=ProjectMembership.Role.MEMBER).user

    assert list(model_admin().get_actions(request_of(lead))) == REVIEW_ACTIONS
    assert model_admin().get_actions(request_of(member)) == {}
    assert not model_admin().has_change_permission(request_of(member))


def test_someone_who_may_not_review_sees_a_read_only_page_and_no_actions() -> None:
    """The admin lets in staff only, and staff review; a member of the project (who sees
    its proposals) with the model's view permission still gets a page without actions or
    fields to edit."""
    proposal = TaskProposalFactory(title="Fix login")
    viewer = ProjectMembershipFactory(project=proposal.project, role=ProjectMembership.Role.MEMBER).user
    viewer.user_permissions.add(Permission.objects.get(codename="view_taskproposal"))

    changelist = model_admin().changelist_view(request_of(viewer))
    changelist.render()
    change = model_admin().change_view(request_of(viewer, change_url(proposal)), str(proposal.pk))
    change.render()

    assert "Fix login" in changelist.content.decode()
    assert changelist.context_data["action_form"] is None
    assert 'name="action"' not in changelist.content.decode()
    html = change.content.decode()
    assert "Fix login" in html
    assert 'id="review-box"' not in html
    assert 'name="title"' not in html and 'name="_save"' not in html


def test_the_admin_refuses_a_member_who_is_not_staff() -> None:
    member = ProjectMembershipFactory(role=ProjectMembership.Role.MEMBER).user
    proposal = TaskProposalFactory()
    client = Client()
    client.force_login(member)

    response = client.post(review_url(proposal, "approve"))

    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert status_of(proposal) == "pending"


# Queries.


def test_the_changelist_costs_the_same_queries_for_3_or_15_proposals(client: Client) -> None:
    counts = []
    for count in (3, 15):
        TaskProposal.objects.all().delete()
        for _ in range(count):
            TaskProposalFactory(source_messages=[MessageFactory()], suggested_assignee=UserFactory())
        client.get(CHANGELIST)  # Warm the session and content-type caches.
        with CaptureQueriesContext(connection) as queries:
            response = client.get(CHANGELIST)
        assert response.context["cl"].result_count == count
        assert response.context["action_form"] is not None
        counts.append(len(queries))
    assert counts[0] == counts[1]
