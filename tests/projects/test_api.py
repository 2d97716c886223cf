"""The projects API (projects, versions, rollback) and the tasks API."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from projects.models import Project, ProjectConfig, Task
from projects.services import bump_config, create_project
from tests.factories import TaskFactory, UserFactory

pytestmark = pytest.mark.django_db
PROJECTS = "/api/v1/projects/"
TASKS = "/api/v1/tasks/"


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# Projects


def test_the_list_has_the_projects_a_user_is_on(project: Project, member: Any) -> None:
    create_project(name="Back office", slug="back-office", user=UserFactory())

    body = client_for(member).get(PROJECTS).json()

    assert [p["slug"] for p in body["results"]] == ["acme-mobile"]
    assert body["results"][0]["current_version"] == "1.0.0"
    assert {m["username"]: m["role"] for m in body["results"][0]["team"]} == {
        "alice": "lead",
        "bob": "member",
    }


def test_the_list_costs_the_same_queries_for_more_projects() -> None:
    staff = UserFactory(is_staff=True)
    client = client_for(staff)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(PROJECTS).status_code == 200
        return len(captured)

    create_project(name="One", slug="one", user=UserFactory())
    few = queries()
    for n in range(4):
        create_project(name=f"More {n}", slug=f"more-{n}", user=UserFactory())
    assert queries() == few


def test_a_project_shows_its_current_configuration(project: Project, lead: Any, chat: Any) -> None:
    body = client_for(lead).get(f"{PROJECTS}acme-mobile/").json()

    config = body["current_config"]
    assert config["version"] == "1.0.0"
    assert config["chats"] == [chat.pk]
    assert config["keywords"] == ["android", "ios"]
    assert config["author"] == "alice"


def test_staff_create_a_project_with_a_first_configuration(chat: Any) -> None:
    staff = UserFactory(is_staff=True)
    member = UserFactory()

    response = client_for(staff).post(
        PROJECTS,
        {
            "name": "Back office",
            "keywords": ["Invoice", "invoice", " VAT "],
            "chats": [chat.pk],
            "team": [{"user_id": member.pk, "role": "member"}],
            "default_assignee": member.pk,
        },
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "back-office"
    assert body["current_config"]["version"] == "1.0.0"
    assert body["current_config"]["keywords"] == ["invoice", "vat"]
    assert {m["user_id"]: m["role"] for m in body["team"]} == {staff.pk: "lead", member.pk: "member"}
    assert body["default_assignee"] == member.pk


def test_only_staff_create_projects(lead: Any) -> None:
    response = client_for(lead).post(PROJECTS, {"name": "Mine"}, format="json")
    assert response.status_code == 403
    assert not Project.objects.exists()


def test_a_taken_slug_is_a_field_error(project: Project) -> None:
    response = client_for(UserFactory(is_staff=True)).post(
        PROJECTS, {"name": "Other", "slug": "acme-mobile"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"slug": ["The slug acme-mobile is taken."]}


def test_patch_makes_a_version_by_the_rule(project: Project, lead: Any) -> None:
    client = client_for(lead)

    minor = client.patch(f"{PROJECTS}acme-mobile/", {"keywords": ["crash"], "summary": "Why"}, format="json")
    patch = client.patch(f"{PROJECTS}acme-mobile/", {"schedule": "0 9 * * 1-5"}, format="json")
    major = client.patch(f"{PROJECTS}acme-mobile/", {"chats": []}, format="json")

    assert minor.status_code == 200, minor.json()
    assert [r.json()["new_version"] for r in (minor, patch, major)] == ["1.1.0", "1.1.1", "2.0.0"]
    assert major.json()["current_config"]["chats"] == []
    config = ProjectConfig.objects.get(project=project, major=1, minor=1, patch=0)
    assert (config.change_summary, config.author, config.keywords) == ("Why", lead, ["crash"])


def test_a_patch_that_changes_nothing_makes_no_version(project: Project, lead: Any) -> None:
    response = client_for(lead).patch(
        f"{PROJECTS}acme-mobile/", {"keywords": ["IOS", "android"]}, format="json"
    )
    # Same keywords, other order: the order is kept, so this is a change...
    assert response.json()["new_version"] == "1.1.0"
    response = client_for(lead).patch(
        f"{PROJECTS}acme-mobile/", {"keywords": ["ios", "android"]}, format="json"
    )
    # ...and saying it again is not.
    assert response.status_code == 200
    assert response.json()["new_version"] is None
    assert project.configs.count() == 2


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"schedule": "every monday"}, "schedule", "five-field cron expression"),
        ({"default_assignee": "outsider"}, "default_assignee", "must be on the team"),
        ({"team": "no lead"}, "team", "at least one team lead"),
        ({"chats": [424242]}, "chats", "no chat 424242"),
        ({"priority_rules": [{"when": "x", "priority": "urgent"}]}, "priority_rules", "not a valid choice"),
        ({"batch_time_gap_minutes": 0}, "batch_time_gap_minutes", "greater than or equal to 1"),
    ],
)
def test_invalid_patches_are_400_with_the_message_under_the_field(
    project: Project, lead: Any, member: Any, payload: dict[str, Any], field: str, message: str
) -> None:
    if payload.get("default_assignee") == "outsider":
        payload = {"default_assignee": UserFactory().pk}
    if payload.get("team") == "no lead":
        payload = {"team": [{"user_id": member.pk, "role": "member"}]}

    response = client_for(lead).patch(f"{PROJECTS}acme-mobile/", payload, format="json")

    assert response.status_code == 400
    assert message in str(response.json()[field])
    assert project.configs.count() == 1


def test_a_patch_on_an_older_base_version_is_a_409(project: Project, lead: Any) -> None:
    bump_config(project=project, user=lead, changes={"description": "Meanwhile."})

    response = client_for(lead).patch(
        f"{PROJECTS}acme-mobile/", {"keywords": ["x"], "base_version": "1.0.0"}, format="json"
    )

    assert response.status_code == 409
    assert response.json()["code"] == "stale_version"


@pytest.mark.parametrize(("who", "status"), [("member", 403), ("outsider", 404)])
def test_only_leads_and_staff_patch(project: Project, member: Any, who: str, status: int) -> None:
    # A member sees the project and may not change it; to an outsider it does not exist.
    user = member if who == "member" else UserFactory()
    client = client_for(user)

    assert client.patch(f"{PROJECTS}acme-mobile/", {"keywords": ["x"]}, format="json").status_code == status
    assert (
        client.post(f"{PROJECTS}acme-mobile/rollback/", {"version": "1.0.0"}, format="json").status_code
        == status
    )
    assert project.configs.count() == 1


def test_staff_patch_any_project(project: Project) -> None:
    response = client_for(UserFactory(is_staff=True)).patch(
        f"{PROJECTS}acme-mobile/", {"description": "By staff"}, format="json"
    )
    assert response.json()["new_version"] == "1.0.1"


def test_versions_are_listed_newest_first_and_shown_one_by_one(project: Project, lead: Any) -> None:
    bump_config(project=project, user=lead, changes={"keywords": ["crash"]}, summary="Crashes")
    client = client_for(lead)

    listed = client.get(f"{PROJECTS}acme-mobile/configs/").json()
    one = client.get(f"{PROJECTS}acme-mobile/configs/1.0.0/")

    assert [c["version"] for c in listed["results"]] == ["1.1.0", "1.0.0"]
    assert listed["results"][0]["change_summary"] == "Crashes"
    assert one.status_code == 200
    assert (one.json()["keywords"], one.json()["is_current"]) == (["android", "ios"], False)
    assert client.get(f"{PROJECTS}acme-mobile/configs/9.9.9/").status_code == 404


def test_versions_of_a_project_one_is_not_on_are_hidden(project: Project) -> None:
    client = client_for(UserFactory())
    assert client.get(f"{PROJECTS}acme-mobile/").status_code == 404
    assert client.get(f"{PROJECTS}acme-mobile/configs/").status_code == 404


def test_rollback_through_the_api(project: Project, lead: Any) -> None:
    bump_config(project=project, user=lead, changes={"keywords": ["crash"]})
    client = client_for(lead)

    response = client.post(f"{PROJECTS}acme-mobile/rollback/", {"version": "1.0.0"}, format="json")

    assert response.status_code == 200
    assert response.json()["new_version"] == "1.2.0"
    assert response.json()["current_config"]["keywords"] == ["android", "ios"]
    again = client.post(f"{PROJECTS}acme-mobile/rollback/", {"version": "1.2.0"}, format="json")
    assert (again.status_code, again.json()["code"]) == (400, "no_change")


def test_the_schema_documents_the_projects_api(admin_user: Any) -> None:
    response = client_for(admin_user).get("/api/schema/", {"format": "json"})
    paths = response.json()["paths"]
    assert "/api/v1/projects/{slug}/configs/{version}/" in paths
    assert "patch" in paths["/api/v1/projects/{slug}/"]
    assert "patch" in paths["/api/v1/tasks/{id}/"]


# Tasks


def test_tasks_are_listed_for_the_team_and_filtered(project: Project, member: Any, lead: Any) -> None:
    mine = TaskFactory(project=project, assignee=member, title="Mine")
    TaskFactory(project=project, assignee=lead, title="Alice's", status="done")
    TaskFactory(title="Another project's")
    client = client_for(member)

    every = client.get(TASKS).json()["results"]
    assigned = client.get(TASKS, {"assignee": member.pk}).json()["results"]
    done = client.get(TASKS, {"status": "done", "project": project.pk}).json()["results"]

    assert sorted(t["title"] for t in every) == ["Alice's", "Mine"]
    assert [t["id"] for t in assigned] == [mine.pk]
    assert [t["title"] for t in done] == ["Alice's"]
    assert assigned[0]["project_slug"] == "acme-mobile"


def test_a_team_member_moves_and_assigns_a_task(project: Project, member: Any, lead: Any) -> None:
    task = TaskFactory(project=project)
    client = client_for(member)

    response = client.patch(
        f"{TASKS}{task.pk}/", {"status": "in_progress", "assignee": lead.pk}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert (response.json()["status"], response.json()["assignee"]) == ("in_progress", lead.pk)
    response = client.patch(f"{TASKS}{task.pk}/", {"assignee": None}, format="json")
    task.refresh_from_db()
    assert (task.status, task.assignee) == ("in_progress", None)


def test_a_done_task_must_be_reopened_before_it_is_cancelled(project: Project, member: Any) -> None:
    task = TaskFactory(project=project, status=Task.Status.DONE)
    client = client_for(member)

    refused = client.patch(f"{TASKS}{task.pk}/", {"status": "cancelled"}, format="json")
    reopened = client.patch(f"{TASKS}{task.pk}/", {"status": "open"}, format="json")

    assert (refused.status_code, refused.json()["code"]) == (409, "illegal_transition")
    assert reopened.json()["status"] == "open"


def test_the_assignee_must_be_on_the_team(project: Project, member: Any) -> None:
    task = TaskFactory(project=project)

    response = client_for(member).patch(f"{TASKS}{task.pk}/", {"assignee": UserFactory().pk}, format="json")

    assert response.status_code == 400
    assert "is not on the team" in response.json()["assignee"][0]
    task.refresh_from_db()
    assert task.assignee is None


def test_someone_off_the_team_neither_sees_nor_changes_its_tasks(project: Project) -> None:
    task = TaskFactory(project=project)
    client = client_for(UserFactory())

    assert client.get(TASKS).json()["results"] == []
    assert client.patch(f"{TASKS}{task.pk}/", {"status": "done"}, format="json").status_code == 404
    task.refresh_from_db()
    assert task.status == "open"


def test_staff_change_any_task() -> None:
    task = TaskFactory(project=create_project(name="X", slug="x", user=UserFactory()))
    response = client_for(UserFactory(is_staff=True)).patch(
        f"{TASKS}{task.pk}/", {"status": "done"}, format="json"
    )
    assert response.json()["status"] == "done"
