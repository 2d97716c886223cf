"""Tasks have a home: a project's task list, where its team moves and assigns them through
`update_task`, and the admin's task page, which goes through the same service."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from projects.models import Task, WebhookDelivery
from tests.factories import (
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    UserFactory,
    WebhookEndpointFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def team() -> dict:
    project = ProjectFactory(slug="acme")
    member, carol = UserFactory(username="member"), UserFactory(username="carol")
    ProjectMembershipFactory(project=project, user=member, role="member")
    ProjectMembershipFactory(project=project, user=carol, role="member")
    WebhookEndpointFactory(project=project)  # every event
    return {"project": project, "member": member, "carol": carol}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def listed(html: str) -> list[str]:
    return re.findall(r"<strong>(.*?)</strong>", html)


def test_a_member_sees_the_projects_tasks_filtered_by_status_and_assignee(team: dict) -> None:
    project, carol = team["project"], team["carol"]
    TaskFactory(project=project, title="Fix login", assignee=carol)
    TaskFactory(project=project, title="Write docs", status="done")
    TaskFactory(title="Another project's task")
    client = signed_in(team["member"])
    url = reverse("projects:project-tasks", args=["acme"])

    assert sorted(listed(client.get(url).content.decode())) == ["Fix login", "Write docs"]
    assert listed(client.get(url, {"status": "done"}).content.decode()) == ["Write docs"]
    assert listed(client.get(url, {"assignee": carol.pk}).content.decode()) == ["Fix login"]


def test_a_member_moves_a_task_and_assigns_it_from_the_list(team: dict) -> None:
    task = TaskFactory(project=team["project"], title="Fix login")
    client = signed_in(team["member"])

    response = client.post(
        reverse("projects:task-update", args=[task.pk]),
        {f"t{task.pk}-status": "in_progress", f"t{task.pk}-assignee": team["carol"].pk},
        follow=True,
    )

    task.refresh_from_db()
    assert (task.status, task.assignee) == ("in_progress", team["carol"])
    assert "Task “Fix login” is in progress." in response.content.decode()
    assert WebhookDelivery.objects.filter(event="task.status_changed").count() == 1


def test_an_illegal_move_is_refused_with_the_reason_and_changes_nothing(team: dict) -> None:
    task = TaskFactory(project=team["project"], status="done")
    client = signed_in(team["member"])

    response = client.post(
        reverse("projects:task-update", args=[task.pk]), {f"t{task.pk}-status": "in_progress"}, follow=True
    )

    task.refresh_from_db()
    assert task.status == "done"
    assert "A done task cannot become in_progress; reopen it first." in response.content.decode()
    assert not WebhookDelivery.objects.exists()


def test_a_done_task_offers_only_reopening(team: dict) -> None:
    task = TaskFactory(project=team["project"], status="done")

    html = signed_in(team["member"]).get(reverse("projects:project-tasks", args=["acme"])).content.decode()

    row = re.search(rf'<tr id="task-{task.pk}".*?</tr>', html, re.S).group(0)
    assert re.findall(r'<option value="(\w+)"', row.split("assignee")[0]) == ["open", "done"]


def test_someone_off_the_team_cannot_be_assigned(team: dict) -> None:
    task = TaskFactory(project=team["project"])
    outsider = UserFactory()
    client = signed_in(team["member"])

    client.post(
        reverse("projects:task-update", args=[task.pk]),
        {f"t{task.pk}-status": "open", f"t{task.pk}-assignee": outsider.pk},
    )

    task.refresh_from_db()
    assert task.assignee is None


def test_the_admin_moves_a_task_through_update_task(admin_client: Client, team: dict) -> None:
    task = TaskFactory(project=team["project"], title="Fix login", status="done")
    url = reverse("admin:projects_task_change", args=[task.pk])
    page = admin_client.get(url)
    form = {
        key: value
        for key, value in page.context["adminform"].form.initial.items()
        if value is not None and key not in ("created_by",)
    }
    form.update(project=task.project.pk, tags="[]", assignee="")

    refused = admin_client.post(url, {**form, "status": "in_progress"})
    task.refresh_from_db()
    assert refused.status_code == 200
    assert "A done task cannot become in_progress; reopen it first." in refused.content.decode()
    assert task.status == "done"

    moved = admin_client.post(url, {**form, "status": "open", "title": "Fix the login"})
    task.refresh_from_db()
    assert moved.status_code == 302
    assert (task.status, task.title) == ("open", "Fix the login")
    assert WebhookDelivery.objects.filter(event="task.status_changed").count() == 1
    assert Task.objects.count() == 1
