"""The review queue as a triage list: the list beside the shown proposal, the status and
text filters, the progress for a filter, the guidelines, and the split and duplicate pages
(plain forms: they work without JavaScript)."""

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from projects.models import Task
from proposals.models import ReviewEvent, TaskProposal
from proposals.services import approve_proposal, reject_proposal, undo_last_action
from tests.factories import (
    AgentTaskAssignmentFactory,
    AnalysisRunFactory,
    ChatFactory,
    MessageFactory,
    ProjectFactory,
    TaskConfigFactory,
    TaskFactory,
    TaskProposalFactory,
    UserFactory,
)
from tests.proposals.helpers import review_every_project

pytestmark = pytest.mark.django_db
QUEUE = reverse("proposals:queue")


@pytest.fixture
def reviewer() -> Any:
    return review_every_project(UserFactory(username="rita"))


@pytest.fixture
def browser(client: Client, reviewer: Any) -> Client:
    client.force_login(reviewer)
    return client


def page(name: str, proposal: TaskProposal) -> str:
    return reverse(f"proposals:{name}", args=[proposal.pk])


def listed_ids(response: Any) -> list[int]:
    return [item.pk for item in response.context["listed"]]


# The list and its filters.


def test_the_list_shows_the_queue_beside_the_first_proposal(browser) -> None:
    chat = ChatFactory()
    first = TaskProposalFactory(
        title="Ship the release",
        confidence=0.95,
        source_messages=[MessageFactory(chat=chat, text="Can someone ship the release on Friday?")],
    )
    second = TaskProposalFactory(title="Renew the certificate", confidence=0.6)

    response = browser.get(QUEUE)

    html = response.content.decode()
    assert listed_ids(response) == [first.pk, second.pk]
    assert response.context["proposal"] == first
    assert f'<li aria-current="true" class="current" data-proposal-id="{first.pk}">' in html
    assert "Can someone ship the release on Friday?" in html
    assert f"run #{first.run_id}" in html


def test_the_status_filter_lists_reviewed_proposals(browser, reviewer) -> None:
    pending = TaskProposalFactory(title="Still pending")
    rejected = TaskProposalFactory(title="Turned down")
    reject_proposal(proposal_id=rejected.pk, user=reviewer, reason="Not ours")

    assert listed_ids(browser.get(QUEUE)) == [pending.pk]
    response = browser.get(QUEUE, {"status": "rejected"})
    assert listed_ids(response) == [rejected.pk]
    assert response.context["proposal"] == rejected
    assert 'id="undo-current-form"' in response.content.decode()
    assert sorted(listed_ids(browser.get(QUEUE, {"status": "all"}))) == sorted([pending.pk, rejected.pk])


def test_the_text_filter_needs_every_word_in_the_title_or_description(browser) -> None:
    login = TaskProposalFactory(title="Fix the login crash", description="On Android 14")
    TaskProposalFactory(title="Fix the export", description="CSV export is empty")
    TaskProposalFactory(title="Write the login docs", description="")

    assert listed_ids(browser.get(QUEUE, {"q": "login android"})) == [login.pk]
    assert len(listed_ids(browser.get(QUEUE, {"q": "fix"}))) == 2


def test_a_filtered_page_keeps_its_filters_in_every_link(browser) -> None:
    one = TaskProposalFactory(title="Fix the login crash", confidence=0.95)
    TaskProposalFactory(title="Fix the login page", confidence=0.8)

    html = browser.get(QUEUE, {"q": "login", "status": "all"}).content.decode()

    assert f'href="{page("proposal", one)}?status=all&amp;q=login"' in html
    assert f'action="{page("approve", one)}?status=all&amp;q=login"' in html


def test_the_progress_counts_the_reviewed_proposals_of_the_filter(browser, reviewer) -> None:
    run = AnalysisRunFactory()
    made = TaskProposalFactory.create_batch(4, run=run, project=run.projects.first() or ProjectFactory())
    TaskProposalFactory()  # Another run's: not counted.
    approve_proposal(proposal_id=made[0].pk, user=reviewer)
    reject_proposal(proposal_id=made[1].pk, user=reviewer, reason="No")

    response = browser.get(QUEUE, {"run": run.pk})

    assert (response.context["progress"].reviewed, response.context["progress"].total) == (2, 4)
    assert "2</span> of 4 reviewed with these filters" in response.content.decode()
    assert response.context["remaining"] == 2


def test_the_task_configs_instructions_are_the_guidelines(browser) -> None:
    config = TaskConfigFactory(name="Bugs only", instructions="Only bugs that users reported count.")
    run = AnalysisRunFactory(assignment=AgentTaskAssignmentFactory(task_config=config))
    proposal = TaskProposalFactory(run=run)

    html = browser.get(page("proposal", proposal)).content.decode()

    assert 'id="guidelines"' in html
    assert "Only bugs that users reported count." in html
    assert "(Bugs only)" in html


def test_a_proposal_made_by_hand_has_no_guidelines(browser) -> None:
    proposal = TaskProposalFactory(run=None)
    assert 'id="guidelines"' not in browser.get(page("proposal", proposal)).content.decode()


def test_the_edit_page_focuses_the_title_and_offers_save_and_approve(browser) -> None:
    html = browser.get(page("edit", TaskProposalFactory())).content.decode()
    title_input = re.search(r'<input[^>]*name="title"[^>]*>', html)
    assert title_input is not None
    assert "autofocus" in title_input.group()
    assert 'id="save-and-approve"' in html


# Split.


def split_data(*parts: tuple[str, list[int]]) -> dict[str, Any]:
    data: dict[str, Any] = {"part-TOTAL_FORMS": str(len(parts)), "part-INITIAL_FORMS": "0"}
    for number, (title, sources) in enumerate(parts):
        data[f"part-{number}-title"] = title
        data[f"part-{number}-sources"] = sources
    return data


@pytest.fixture
def two_sources() -> TaskProposal:
    chat = ChatFactory()
    return TaskProposalFactory(
        title="Fix login and export",
        confidence=0.9,
        source_messages=[
            MessageFactory(chat=chat, text="The login crashes"),
            MessageFactory(chat=chat, text="The export is empty"),
        ],
    )


def test_the_split_page_offers_two_parts_with_every_source_ticked(browser, two_sources) -> None:
    response = browser.get(page("split", two_sources))

    html = response.content.decode()
    assert response.status_code == 200
    assert len(response.context["formset"].forms) == 2
    assert html.count("checked") == 4
    assert html.count("autofocus") == 1


def test_splitting_makes_one_pending_proposal_per_part(browser, two_sources) -> None:
    login, export = two_sources.source_messages.order_by("pk")

    response = browser.post(
        page("split", two_sources), split_data(("Fix the login", [login.pk]), ("Fix the export", [export.pk]))
    )

    assert response.status_code == 302
    two_sources.refresh_from_db()
    assert two_sources.status == TaskProposal.Status.MERGED
    parts = TaskProposal.objects.filter(status=TaskProposal.Status.PENDING).order_by("pk")
    assert [(p.title, [m.pk for m in p.source_messages.all()]) for p in parts] == [
        ("Fix the login", [login.pk]),
        ("Fix the export", [export.pk]),
    ]
    assert two_sources.review_events.get().action == ReviewEvent.Action.SPLIT


def test_a_split_that_leaves_a_source_out_is_refused_and_changes_nothing(browser, two_sources) -> None:
    login, _ = two_sources.source_messages.order_by("pk")

    response = browser.post(
        page("split", two_sources), split_data(("Fix the login", [login.pk]), ("Also the login", [login.pk]))
    )

    assert response.status_code == 400
    assert "Every source message must go to some part." in response.content.decode()
    assert TaskProposal.objects.get().status == TaskProposal.Status.PENDING


def test_a_part_without_a_title_is_a_field_error(browser, two_sources) -> None:
    ids = list(two_sources.source_messages.values_list("pk", flat=True))

    response = browser.post(page("split", two_sources), split_data(("", ids), ("Fix the export", ids)))

    assert response.status_code == 400
    assert response.context["formset"].forms[0].errors["title"] == ["This field is required."]
    assert TaskProposal.objects.count() == 1


def test_adding_a_part_keeps_what_was_typed(browser, two_sources) -> None:
    ids = [str(pk) for pk in two_sources.source_messages.values_list("pk", flat=True)]
    data = {**split_data(("Fix the login", ids[:1]), ("", ids)), "add": "1"}

    response = browser.post(page("split", two_sources), data)

    forms = response.context["formset"].forms
    assert response.status_code == 200
    assert len(forms) == 3
    assert 'value="Fix the login"' in response.content.decode()
    assert TaskProposal.objects.count() == 1


# Duplicate of a proposal or a task.


def test_the_duplicate_page_offers_what_the_duplicate_check_linked(browser) -> None:
    task = TaskFactory(title="Fix the login crash")
    linked = TaskProposalFactory(project=task.project, title="Login crash on Android")
    proposal = TaskProposalFactory(project=task.project, similar_task=task, similar_proposal=linked)

    response = browser.get(page("duplicate", proposal))

    assert response.context["candidate_proposals"] == [linked]
    assert response.context["candidate_tasks"] == [task]


def test_the_duplicate_search_finds_proposals_and_tasks_of_the_same_project_only(browser) -> None:
    project = ProjectFactory()
    proposal = TaskProposalFactory(project=project, title="Login broken")
    same = TaskProposalFactory(project=project, title="The login crash")
    task = TaskFactory(project=project, title="Login crash on start")
    TaskFactory(title="Login crash elsewhere")  # Another project's.
    rejected = TaskProposalFactory(project=project, title="Login crash again", status="rejected")

    response = browser.get(page("duplicate", proposal), {"find": "login crash"})

    assert response.context["candidate_proposals"] == [same]
    assert response.context["candidate_tasks"] == [task]
    assert rejected not in response.context["candidate_proposals"]


def test_marking_a_duplicate_of_a_proposal_merges_it_into_that_one(browser) -> None:
    original = TaskProposalFactory(title="Fix the login crash")
    proposal = TaskProposalFactory(project=original.project, title="Login crashes")

    response = browser.post(page("duplicate", proposal), {"of": f"proposal-{original.pk}"})

    assert response.status_code == 302
    proposal.refresh_from_db()
    assert (proposal.status, proposal.merged_into_id) == (TaskProposal.Status.MERGED, original.pk)


def test_marking_a_duplicate_of_a_task_links_it_and_undo_unlinks_it(browser, reviewer) -> None:
    task = TaskFactory(title="Fix the login crash")
    proposal = TaskProposalFactory(project=task.project, title="Login crashes")

    response = browser.post(page("duplicate", proposal), {"of": f"task-{task.pk}"})

    assert response.status_code == 302
    proposal.refresh_from_db()
    assert (proposal.status, proposal.task_id) == (TaskProposal.Status.MERGED, task.pk)
    assert proposal.review_note == f"Duplicate of task #{task.pk}"
    undo_last_action(proposal_id=proposal.pk, user=reviewer)
    proposal.refresh_from_db()
    assert (proposal.status, proposal.task_id) == (TaskProposal.Status.PENDING, None)
    assert Task.objects.filter(pk=task.pk).exists()


def test_a_task_of_another_project_is_refused_and_changes_nothing(browser) -> None:
    proposal = TaskProposalFactory()
    elsewhere = TaskFactory()

    response = browser.post(page("duplicate", proposal), {"of": f"task-{elsewhere.pk}"})

    assert response.status_code == 400
    assert f"Task #{elsewhere.pk} is not a task of" in response.content.decode()
    proposal.refresh_from_db()
    assert proposal.status == TaskProposal.Status.PENDING


@pytest.mark.parametrize("value", ["", "task-", "project-3", "task-0", "task-1; DROP"])
def test_a_bad_choice_is_a_form_error(browser, value) -> None:
    proposal = TaskProposalFactory()

    response = browser.post(page("duplicate", proposal), {"of": value})

    assert response.status_code == 400
    assert response.context["form"].errors["of"]
    proposal.refresh_from_db()
    assert proposal.status == TaskProposal.Status.PENDING
