"""A close title is found among all of a project's live proposals and tasks, from the title
indexes (PostgreSQL pg_trgm, SQLite FTS5), in queries that do not grow with the history."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from proposals.models import TaskProposal
from proposals.selectors import filter_words
from proposals.services import NewProposal, create_proposals
from tests.factories import MessageFactory, ProjectFactory, TaskFactory, TaskProposalFactory, UserFactory
from tests.proposals.test_duplicates import data

pytestmark = pytest.mark.django_db


def history(project: object, count: int) -> None:
    TaskProposal.objects.bulk_create(
        TaskProposal(project=project, title=f"Update the billing report number {n}", confidence=0.8)
        for n in range(count)
    )


def test_a_close_title_older_than_the_newest_500_proposals_is_still_found() -> None:
    project = ProjectFactory()
    original = TaskProposalFactory(project=project, title="Fix the login crash on Android")
    history(project, 600)
    [proposal] = create_proposals(
        proposals=[NewProposal(project, data("Fix teh login crash on Android"), [MessageFactory()])]
    )
    assert proposal.similar_proposal == original
    assert proposal.similarity_kind == "similar_title"


def test_a_close_task_title_among_many_tasks_is_found() -> None:
    project = ProjectFactory()
    task = TaskFactory(project=project, title="Fix the login crash on Android")
    TaskFactory.create_batch(30, project=project)
    [proposal] = create_proposals(
        proposals=[NewProposal(project, data("Fix the login crash on Android!"), [MessageFactory()])]
    )
    assert (proposal.similar_proposal, proposal.similar_task) == (None, task)


def test_an_edited_title_is_found_by_its_new_words_only() -> None:
    project = ProjectFactory()
    proposal = TaskProposalFactory(project=project, title="Add dark mode to the settings page")
    TaskProposal.objects.filter(pk=proposal.pk).update(title="Fix the login crash on Android")
    [new] = create_proposals(proposals=[NewProposal(project, data("Add dark mode to the settings page"), [])])
    assert new.similar_proposal is None
    [new] = create_proposals(proposals=[NewProposal(project, data("Fix the login crash on android"), [])])
    assert new.similar_proposal_id == proposal.pk


def saving_queries(project: object, titles: list[str]) -> int:
    news = [NewProposal(project, data(title), [MessageFactory()]) for title in titles]
    with CaptureQueriesContext(connection) as queries:
        create_proposals(proposals=news)
    return len(queries)


def test_the_duplicate_check_queries_do_not_grow_with_the_history_or_the_batch() -> None:
    project = ProjectFactory()
    history(project, 10)
    TaskFactory(project=project)
    small = saving_queries(project, ["Update the billing report number 1!"])
    history(project, 1000)
    TaskFactory.create_batch(20, project=project)
    large = saving_queries(project, ["Fix the login crash on iOS", "Add dark mode", "Update billing report"])
    assert large == small


@pytest.fixture
def staff_client() -> APIClient:
    client = APIClient()
    client.force_login(UserFactory(is_staff=True))
    return client


@pytest.mark.parametrize(
    ("search", "found"),
    [
        ("LOGIN crash", {"Fix the login crash"}),
        ("ogi", {"Fix the login crash"}),
        ("in", {"Fix the login crash", "Add dark mode"}),
        ("dark mode", {"Add dark mode"}),
        ("settings", {"Add dark mode"}),
        ("login settings", set()),
    ],
)
def test_the_api_search_finds_every_word_in_the_title_or_the_description(
    staff_client: APIClient, search: str, found: set[str]
) -> None:
    TaskProposalFactory(title="Fix the login crash", description="On Android")
    TaskProposalFactory(title="Add dark mode", description="In the settings")
    response = staff_client.get("/api/v1/proposals/", {"search": search})
    assert {row["title"] for row in response.json()["results"]} == found


def test_an_edited_title_is_searched_by_its_new_words() -> None:
    proposal = TaskProposalFactory(title="Add dark mode", description="")
    TaskProposal.objects.filter(pk=proposal.pk).update(title="Fix the login crash")
    assert list(filter_words(TaskProposal.objects.all(), ["login"])) == [proposal]
    assert not filter_words(TaskProposal.objects.all(), ["dark"]).exists()
