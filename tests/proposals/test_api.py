"""The proposals API: the review queue, every review action, and closing a run."""

from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import AnalysisRun
from projects.models import Task
from proposals.models import ReviewEvent, TaskProposal
from proposals.services import approve_proposal, reject_proposal
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
PROPOSALS = "/api/v1/proposals/"
RUNS = "/api/v1/runs/"


def client_for(user: object) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def reviewer():
    return review_every_project(UserFactory(username="rita"))


@pytest.fixture
def outsider():
    return UserFactory(username="olga")


@pytest.fixture
def proposal():
    chat = ChatFactory(username="acme_team")
    messages = [
        MessageFactory(chat=chat, telegram_id=41, text="The app crashes on login"),
        MessageFactory(chat=chat, telegram_id=42, text="Same on Pixel 8"),
    ]
    return TaskProposalFactory(
        title="Fix the login crash",
        description="Crash after tapping Log in.",
        priority="high",
        category="bug",
        tags=["android"],
        due_date=date(2026, 12, 1),
        confidence=0.95,
        source_messages=messages,
    )


def url(proposal: TaskProposal, action: str = "") -> str:
    return f"{PROPOSALS}{proposal.pk}/{action + '/' if action else ''}"


# The queue and the detail


def test_a_reviewer_lists_proposals_most_confident_first(reviewer) -> None:
    low = TaskProposalFactory(confidence=0.5)
    high = TaskProposalFactory(confidence=0.95)
    response = client_for(reviewer).get(PROPOSALS)
    assert response.status_code == 200
    body = response.json()
    assert [p["id"] for p in body["results"]] == [high.pk, low.pk]
    assert body["results"][0]["band"] == "high"


def test_a_user_lists_the_proposals_of_the_projects_they_are_on() -> None:
    lead = UserFactory()
    led = ProjectMembershipFactory(user=lead, role="lead").project
    member_of = ProjectMembershipFactory(user=lead, role="member").project
    mine = TaskProposalFactory(project=led)
    read_only = TaskProposalFactory(project=member_of)
    TaskProposalFactory()
    response = client_for(lead).get(PROPOSALS)
    assert [p["id"] for p in response.json()["results"]] == [mine.pk, read_only.pk]


def test_a_member_lists_their_projects_proposals_and_an_outsider_nothing(outsider) -> None:
    seen = TaskProposalFactory()
    member = ProjectMembershipFactory(role="member", project=seen.project).user
    TaskProposalFactory()
    listed = client_for(member).get(PROPOSALS)
    nothing = client_for(outsider).get(PROPOSALS)
    assert [p["id"] for p in listed.json()["results"]] == [seen.pk]
    assert (nothing.status_code, nothing.json()["results"]) == (200, [])


def test_an_anonymous_client_is_refused() -> None:
    assert APIClient().get(PROPOSALS).status_code == 401


def test_the_list_filters_by_band_status_project_run_and_recommendation(reviewer) -> None:
    run = AnalysisRunFactory()
    high = TaskProposalFactory(confidence=0.95, run=run, recommendation="update_existing")
    medium = TaskProposalFactory(confidence=0.8, project=high.project)
    low = TaskProposalFactory(confidence=0.4, status="rejected")
    client = client_for(reviewer)

    def ids(**params: object) -> list[int]:
        return [p["id"] for p in client.get(PROPOSALS, params).json()["results"]]

    assert ids(band="high") == [high.pk]
    assert ids(band="medium") == [medium.pk]
    assert ids(band="low") == [low.pk]
    assert ids(status="rejected") == [low.pk]
    assert ids(project=high.project_id) == [high.pk, medium.pk]
    assert ids(run=run.pk) == [high.pk]
    assert ids(recommendation="update_existing") == [high.pk]
    assert client.get(PROPOSALS, {"band": "huge"}).status_code == 400


def test_the_list_searches_and_orders(reviewer) -> None:
    crash = TaskProposalFactory(title="Fix the crash", confidence=0.6)
    dark = TaskProposalFactory(title="Dark mode", description="Users ask for a dark theme", confidence=0.9)
    client = client_for(reviewer)
    assert [p["id"] for p in client.get(PROPOSALS, {"search": "dark"}).json()["results"]] == [dark.pk]
    ordered = client.get(PROPOSALS, {"ordering": "confidence"}).json()["results"]
    assert [p["id"] for p in ordered] == [crash.pk, dark.pk]


def test_the_detail_shows_sources_similarity_and_review_events(proposal, reviewer) -> None:
    similar = TaskFactory(project=proposal.project, title="Login crash")
    TaskProposal.objects.filter(pk=proposal.pk).update(
        similar_task=similar, similarity_score=0.9, similarity_kind="similar_title"
    )
    client = client_for(reviewer)
    client.patch(url(proposal), {"title": "Fix the login crash on Android"}, format="json")
    body = client.get(url(proposal)).json()
    assert body["title"] == "Fix the login crash on Android"
    assert body["status"] == "pending"
    assert [m["text"] for m in body["source_messages"]] == ["The app crashes on login", "Same on Pixel 8"]
    source = body["source_messages"][0]
    assert source["link"] == "https://t.me/acme_team/41"
    assert {"id", "chat", "author_name", "sent_at"} <= set(source)
    assert body["similar_task"] == {"id": similar.pk, "title": "Login crash"}
    assert (body["similarity_score"], body["similarity_kind"]) == (0.9, "similar_title")
    [event] = body["review_events"]
    assert (event["action"], event["username"]) == ("edit", "rita")
    assert event["before"]["title"] == "Fix the login crash"
    assert event["after"]["title"] == "Fix the login crash on Android"
    assert event["created_at"]


def test_a_proposal_is_hidden_from_who_is_not_on_its_project(proposal, outsider) -> None:
    member = ProjectMembershipFactory(role="member", project=proposal.project).user
    assert client_for(outsider).get(url(proposal)).status_code == 404
    assert client_for(member).get(url(proposal)).status_code == 200


def test_a_missing_proposal_is_a_404(reviewer) -> None:
    client = client_for(reviewer)
    assert client.get(f"{PROPOSALS}999999/").status_code == 404
    assert client.post(f"{PROPOSALS}999999/approve/", {}, format="json").status_code == 404


# Editing


def test_editing_changes_the_fields_and_keeps_it_pending(proposal, reviewer) -> None:
    assignee = UserFactory()
    response = client_for(reviewer).patch(
        url(proposal),
        {
            "description": "More detail",
            "priority": "critical",
            "tags": ["ios"],
            "suggested_assignee": assignee.pk,
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    proposal.refresh_from_db()
    assert (proposal.status, proposal.description, proposal.priority) == (
        "pending",
        "More detail",
        "critical",
    )
    assert (proposal.tags, proposal.suggested_assignee) == (["ios"], assignee)
    assert response.json()["review_events"][0]["action"] == "edit"


@pytest.mark.parametrize("body", [{"confidence": 1}, {"status": "approved"}, {}, {"priority": "urgent"}])
def test_editing_refuses_fields_that_are_not_editable_or_invalid(proposal, reviewer, body: dict) -> None:
    response = client_for(reviewer).patch(url(proposal), body, format="json")
    assert response.status_code == 400
    proposal.refresh_from_db()
    assert (proposal.status, proposal.confidence, proposal.priority) == ("pending", 0.95, "high")
    assert not proposal.review_events.exists()


def test_editing_a_reviewed_proposal_is_a_409(proposal, reviewer) -> None:
    approve_proposal(proposal_id=proposal.pk, user=reviewer)
    response = client_for(reviewer).patch(url(proposal), {"title": "Too late"}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "not_pending"


# Approving and rejecting


def test_approving_creates_the_task_and_returns_it(proposal, reviewer) -> None:
    response = client_for(reviewer).post(url(proposal, "approve"), {}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    task = Task.objects.get()
    assert (body["id"], body["title"], body["priority"], body["project"]) == (
        task.pk,
        "Fix the login crash",
        "high",
        proposal.project_id,
    )
    proposal.refresh_from_db()
    assert (proposal.status, proposal.task, proposal.reviewer) == ("approved", task, reviewer)


def test_approving_applies_edits_first(proposal, reviewer) -> None:
    response = client_for(reviewer).post(
        url(proposal, "approve"), {"edits": {"title": "Fix token refresh", "due_date": None}}, format="json"
    )
    assert response.status_code == 201
    task = Task.objects.get()
    assert (task.title, task.due_date) == ("Fix token refresh", None)


def test_approving_with_an_unknown_edit_is_a_400(proposal, reviewer) -> None:
    response = client_for(reviewer).post(
        url(proposal, "approve"), {"edits": {"confidence": 1}}, format="json"
    )
    assert response.status_code == 400
    assert "confidence" in response.json()["edits"]
    assert Task.objects.count() == 0


def test_approving_can_add_to_the_similar_task(reviewer) -> None:
    existing = TaskFactory(title="Login crash", description="Seen on Android.")
    proposal = TaskProposalFactory(project=existing.project, similar_task=existing)
    response = client_for(reviewer).post(url(proposal, "approve"), {"add_to_task": True}, format="json")
    assert response.status_code == 201
    assert response.json()["id"] == existing.pk
    assert f"From proposal {proposal.pk}" in response.json()["description"]
    assert Task.objects.count() == 1


def test_approving_twice_is_a_409(proposal, reviewer) -> None:
    client = client_for(reviewer)
    client.post(url(proposal, "approve"), {}, format="json")
    response = client.post(url(proposal, "approve"), {}, format="json")
    assert response.status_code == 409
    assert "only pending proposals can be approved" in response.json()["detail"]
    assert Task.objects.count() == 1


def test_approving_a_rejected_proposal_is_a_409(proposal, reviewer) -> None:
    reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="Not a task")
    response = client_for(reviewer).post(url(proposal, "approve"), {}, format="json")
    assert response.status_code == 409
    assert Task.objects.count() == 0


def test_rejecting_keeps_the_reason(proposal, reviewer) -> None:
    response = client_for(reviewer).post(url(proposal, "reject"), {"reason": "Just chatter"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["review_note"]) == ("rejected", "Just chatter")
    assert body["review_events"][0]["note"] == "Just chatter"


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}])
def test_rejecting_without_a_reason_is_a_400(proposal, reviewer, body: dict) -> None:
    response = client_for(reviewer).post(url(proposal, "reject"), body, format="json")
    assert response.status_code == 400
    proposal.refresh_from_db()
    assert proposal.status == "pending"


# Merging, splitting, duplicates, undo, reopen


def test_merging_returns_the_proposal_that_stays(reviewer) -> None:
    first = TaskProposalFactory(source_messages=[MessageFactory()])
    second = TaskProposalFactory(project=first.project, source_messages=[MessageFactory()])
    response = client_for(reviewer).post(
        f"{PROPOSALS}merge/", {"proposal_ids": [first.pk, second.pk], "into": second.pk}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["id"], body["status"]) == (second.pk, "pending")
    assert len(body["source_messages"]) == 2
    first.refresh_from_db()
    assert (first.status, first.merged_into) == ("merged", second)


def test_merging_a_reviewed_proposal_is_a_409(reviewer) -> None:
    first = TaskProposalFactory(status="rejected")
    second = TaskProposalFactory(project=first.project)
    response = client_for(reviewer).post(
        f"{PROPOSALS}merge/", {"proposal_ids": [first.pk, second.pk]}, format="json"
    )
    assert response.status_code == 409


def test_splitting_returns_the_new_proposals(proposal, reviewer) -> None:
    first, second = proposal.source_messages.order_by("pk")
    parts = [
        {"title": "Fix the crash", "source_message_ids": [first.pk]},
        {"title": "Test on Pixel 8", "description": "Repro", "source_message_ids": [second.pk]},
    ]
    response = client_for(reviewer).post(url(proposal, "split"), {"parts": parts}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert [p["title"] for p in body] == ["Fix the crash", "Test on Pixel 8"]
    assert [[m["id"] for m in p["source_messages"]] for p in body] == [[first.pk], [second.pk]]
    proposal.refresh_from_db()
    assert (proposal.status, proposal.merged_into_id) == ("merged", body[0]["id"])


def test_splitting_into_one_part_is_a_400(proposal, reviewer) -> None:
    ids = list(proposal.source_messages.values_list("pk", flat=True))
    parts = [{"title": "All of it", "source_message_ids": ids}]
    response = client_for(reviewer).post(url(proposal, "split"), {"parts": parts}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "too_few"


def test_marking_a_duplicate(proposal, reviewer) -> None:
    original = TaskProposalFactory(project=proposal.project)
    response = client_for(reviewer).post(url(proposal, "duplicate"), {"of": original.pk}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["merged_into"]) == ("merged", original.pk)
    assert body["review_events"][0]["action"] == "mark_duplicate"


def test_marking_a_duplicate_of_a_task_of_the_project(proposal, reviewer) -> None:
    task = TaskFactory(project=proposal.project)
    response = client_for(reviewer).post(url(proposal, "duplicate"), {"of_task": task.pk}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["task"], body["review_note"]) == (
        "merged",
        task.pk,
        f"Duplicate of task #{task.pk}",
    )


@pytest.mark.parametrize("payload", [{}, {"of": 1, "of_task": 1}])
def test_a_duplicate_names_either_a_proposal_or_a_task(proposal, reviewer, payload) -> None:
    response = client_for(reviewer).post(url(proposal, "duplicate"), payload, format="json")
    assert response.status_code == 400
    proposal.refresh_from_db()
    assert proposal.status == "pending"


def test_a_task_of_another_project_is_no_duplicate(proposal, reviewer) -> None:
    elsewhere = TaskFactory()
    response = client_for(reviewer).post(url(proposal, "duplicate"), {"of_task": elsewhere.pk}, format="json")
    assert response.status_code == 400
    proposal.refresh_from_db()
    assert proposal.status == "pending"


def test_undo_restores_an_approved_proposal_and_deletes_its_task(proposal, reviewer) -> None:
    client = client_for(reviewer)
    client.post(url(proposal, "approve"), {}, format="json")
    response = client.post(url(proposal, "undo"))
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["task"]) == ("pending", None)
    assert [e["action"] for e in body["review_events"]] == ["undo", "approve"]
    assert Task.objects.count() == 0


def test_reopening_a_rejected_proposal(proposal, reviewer) -> None:
    reject_proposal(proposal_id=proposal.pk, user=reviewer, reason="Not now")
    response = client_for(reviewer).post(url(proposal, "reopen"))
    assert response.status_code == 200
    assert response.json()["status"] == "pending"


# Bulk


def test_bulk_approval_reports_the_refused(reviewer) -> None:
    pending = TaskProposalFactory()
    rejected = TaskProposalFactory(status="rejected")
    response = client_for(reviewer).post(
        f"{PROPOSALS}bulk/",
        {"proposal_ids": [pending.pk, rejected.pk, 999999], "action": "approve"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["done"] == [pending.pk]
    assert set(body["refused"]) == {str(rejected.pk), "999999"}
    assert "only pending proposals can be approved" in body["refused"][str(rejected.pk)]
    assert Task.objects.count() == 1


def test_bulk_rejection_needs_a_reason(reviewer) -> None:
    pending = TaskProposalFactory()
    client = client_for(reviewer)
    body = {"proposal_ids": [pending.pk], "action": "reject"}
    assert client.post(f"{PROPOSALS}bulk/", body, format="json").status_code == 400
    response = client.post(f"{PROPOSALS}bulk/", {**body, "reason": "Noise"}, format="json")
    assert response.json() == {"done": [pending.pk], "refused": {}}
    pending.refresh_from_db()
    assert (pending.status, pending.review_note) == ("rejected", "Noise")


def test_a_lead_bulk_approving_other_projects_gets_them_refused() -> None:
    lead = UserFactory()
    mine = TaskProposalFactory(project=ProjectMembershipFactory(user=lead, role="lead").project)
    theirs = TaskProposalFactory()
    response = client_for(lead).post(
        f"{PROPOSALS}bulk/", {"proposal_ids": [mine.pk, theirs.pk], "action": "approve"}, format="json"
    )
    assert response.json()["done"] == [mine.pk]
    assert response.json()["refused"][str(theirs.pk)] == f"There is no proposal {theirs.pk}."


# Who may review


@pytest.mark.parametrize(
    ("method", "action", "body"),
    [
        ("patch", "", {"title": "Mine now"}),
        ("post", "approve", {}),
        ("post", "reject", {"reason": "No"}),
        ("post", "duplicate", {"of": "OTHER"}),
        ("post", "undo", {}),
        ("post", "reopen", {}),
    ],
)
def test_a_non_reviewer_is_refused_every_action(
    proposal, outsider, method: str, action: str, body: dict
) -> None:
    ProjectMembershipFactory(user=outsider, project=proposal.project, role="member")
    other = TaskProposalFactory(project=proposal.project)
    body = {k: other.pk if v == "OTHER" else v for k, v in body.items()}
    response = getattr(client_for(outsider), method)(url(proposal, action), body, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    proposal.refresh_from_db()
    assert (proposal.status, proposal.title) == ("pending", "Fix the login crash")
    assert not ReviewEvent.objects.exists()


@pytest.mark.parametrize(("who", "status"), [("member", 403), ("outsider", 404)])
def test_a_non_reviewer_cannot_merge_split_or_bulk_review(proposal, outsider, who: str, status: int) -> None:
    # A member sees the proposals and may not review them; to an outsider they do not exist.
    other = TaskProposalFactory(project=proposal.project)
    if who == "member":
        ProjectMembershipFactory(user=outsider, project=proposal.project, role="member")
    client = client_for(outsider)
    merge = client.post(f"{PROPOSALS}merge/", {"proposal_ids": [proposal.pk, other.pk]}, format="json")
    ids = list(proposal.source_messages.values_list("pk", flat=True))
    parts = [{"title": "A", "source_message_ids": ids[:1]}, {"title": "B", "source_message_ids": ids[1:]}]
    split = client.post(url(proposal, "split"), {"parts": parts}, format="json")
    bulk = client.post(
        f"{PROPOSALS}bulk/", {"proposal_ids": [proposal.pk], "action": "approve"}, format="json"
    )
    assert (merge.status_code, split.status_code, bulk.status_code) == (status, status, 403)
    assert not ReviewEvent.objects.exists()
    assert Task.objects.count() == 0


def test_a_lead_reviews_their_projects_proposals_only(proposal) -> None:
    lead = UserFactory()
    ProjectMembershipFactory(user=lead, project=proposal.project, role="lead")
    client = client_for(lead)
    assert client.post(url(proposal, "approve"), {}, format="json").status_code == 201
    elsewhere = TaskProposalFactory()
    assert client.post(url(elsewhere, "approve"), {}, format="json").status_code == 404


def test_token_authentication_works(proposal, reviewer) -> None:
    token = Token.objects.create(user=reviewer)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get(PROPOSALS).json()["results"][0]["id"] == proposal.pk
    response = client.post(url(proposal, "reject"), {"reason": "Duplicate of an old ticket"}, format="json")
    assert response.status_code == 200
    assert response.json()["reviewer_username"] == "rita"


# Closing a run


@pytest.fixture
def completed_run():
    lead = UserFactory(username="lena")
    project = ProjectFactory()
    ProjectMembershipFactory(user=lead, project=project, role="lead")
    run = AnalysisRunFactory(projects=[project], status=AnalysisRun.Status.COMPLETED)
    high = TaskProposalFactory(run=run, project=project, confidence=0.95)
    low = TaskProposalFactory(run=run, project=project, confidence=0.5)
    return {"run": run, "lead": lead, "high": high, "low": low}


def test_closing_a_run_with_pending_proposals_is_a_409(completed_run) -> None:
    run = completed_run["run"]
    response = client_for(completed_run["lead"]).post(f"{RUNS}{run.pk}/close/")
    assert response.status_code == 409
    assert response.json()["code"] == "pending_left"
    run.refresh_from_db()
    assert run.status == "completed"


def test_closing_a_reviewed_run_stores_its_review_stats(completed_run) -> None:
    lead, run = completed_run["lead"], completed_run["run"]
    client = client_for(lead)
    client.post(url(completed_run["high"], "approve"), {}, format="json")
    client.post(url(completed_run["low"], "reject"), {"reason": "Noise"}, format="json")
    response = client.post(f"{RUNS}{run.pk}/close/")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "closed" and body["closed_at"]
    stats = body["review_stats"]
    assert (stats["approved"], stats["rejected"], stats["merged"], stats["approval_rate"]) == (1, 1, 0, 0.5)
    assert stats["bands"]["high"]["approval_rate"] == 1.0
    assert stats["bands"]["low"]["approval_rate"] == 0.0


def test_only_staff_or_the_runs_leads_close_it(completed_run, reviewer) -> None:
    run = completed_run["run"]
    # The reviewer reviews the run's project and does not lead it.
    assert client_for(reviewer).post(f"{RUNS}{run.pk}/close/").status_code == 403


# Cost


def test_the_list_costs_the_same_queries_for_3_or_20_proposals(reviewer) -> None:
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client_for(reviewer).get(PROPOSALS)
        assert response.status_code == 200
        return len(queries)

    previous: list[TaskProposal] = []

    def add(n: int) -> None:
        for _ in range(n):
            project = ProjectFactory()
            previous.append(
                TaskProposalFactory(
                    project=project,
                    suggested_assignee=UserFactory(),
                    similar_proposal=previous[-1] if previous else None,
                    similar_task=TaskFactory(project=project),
                    source_messages=[MessageFactory(), MessageFactory()],
                )
            )

    add(3)
    few = count_queries()
    add(17)
    assert count_queries() == few
    assert TaskProposal.objects.count() == 20


def test_a_leads_list_costs_the_same_queries_whatever_its_length() -> None:
    lead = UserFactory()
    project = ProjectMembershipFactory(user=lead, role="lead").project

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert len(client_for(lead).get(PROPOSALS).json()["results"]) == TaskProposal.objects.count()
        return len(queries)

    for _ in range(3):
        TaskProposalFactory(project=project, source_messages=[MessageFactory()])
    few = count_queries()
    for _ in range(17):
        TaskProposalFactory(project=project, source_messages=[MessageFactory()])
    assert count_queries() == few
