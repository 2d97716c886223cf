"""The team lead's pages: list, project page, edit form, history with diff, rollback, new project."""

import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from projects.models import Project, ProjectConfig
from projects.services import bump_config, create_project
from tests.factories import (
    AnalysisRunFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    TaskFactory,
    UserFactory,
)
from tests.projects.helpers import form_data

pytestmark = pytest.mark.django_db


def url(name: str, project: Project) -> str:
    return reverse(f"projects:{name}", args=[project.slug])


def field_html(html: str, field_id: str) -> str:
    """The form row of one field: from its input to the next row."""
    start = html.index(f'id="{field_id}"')
    end = html.find('<div class="form-row">', start)
    return html[start : end if end != -1 else None]


@pytest.fixture
def lead_client(client: Client, lead: Any) -> Client:
    client.force_login(lead)
    return client


def edit_page(client: Client, project: Project) -> dict[str, Any]:
    response = client.get(url("project-edit", project))
    assert response.status_code == 200
    return form_data(response)


# The list and the project page


def test_the_list_shows_the_projects_a_user_is_on(client: Client, project: Project, member: Any) -> None:
    other = create_project(name="Back office", slug="back-office", user=UserFactory())
    client.force_login(member)

    html = client.get(reverse("projects:project-list")).content.decode()

    assert "Acme Mobile" in html
    assert other.name not in html
    assert "v1.0.0" in html
    assert url("project-edit", project) not in html  # a member does not edit


def test_staff_see_every_project_and_may_create_one(client: Client, project: Project) -> None:
    create_project(name="Back office", slug="back-office", user=UserFactory())
    client.force_login(UserFactory(is_staff=True))

    html = client.get(reverse("projects:project-list")).content.decode()

    assert "Acme Mobile" in html
    assert "Back office" in html
    assert reverse("projects:project-new") in html
    assert url("project-edit", project) in html


def test_the_list_costs_the_same_queries_for_more_projects(client: Client) -> None:
    staff = UserFactory(is_staff=True)
    client.force_login(staff)

    def make(n: int) -> None:
        for _ in range(n):
            lead = UserFactory()
            project = create_project(name=f"P {lead.pk}", slug=f"p-{lead.pk}", user=lead)
            TaskFactory(project=project, assignee=lead)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("projects:project-list")).status_code == 200
        return len(captured)

    make(1)
    few = queries()
    make(5)
    assert queries() == few


def test_the_project_page_shows_configuration_team_open_tasks_and_runs(
    lead_client: Client, project: Project, member: Any
) -> None:
    TaskFactory(project=project, title="Fix the login crash", assignee=member)
    TaskFactory(project=project, title="Old finished work", status="done")
    run = AnalysisRunFactory(projects=[project])
    run.config_versions.set([project.configs.get()])

    html = lead_client.get(url("project-detail", project)).content.decode()

    assert "v1.0.0" in html
    assert "Release candidate" in html  # the glossary
    assert "Acme Mobile Team" in html  # the chat
    assert "Bob Martin" in html
    assert "default assignee" in html
    assert "Fix the login crash" in html
    assert "Old finished work" not in html
    assert reverse("analysis:run-detail", args=[run.pk]) in html
    assert url("project-edit", project) in html


def test_someone_not_on_the_project_does_not_find_it(client: Client, project: Project) -> None:
    client.force_login(UserFactory())
    assert client.get(url("project-detail", project)).status_code == 404
    assert client.get(url("project-history", project)).status_code == 404


def test_pages_need_a_login(client: Client, project: Project) -> None:
    response = client.get(url("project-edit", project))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


# Editing


def test_a_lead_saves_a_keyword_change_as_a_minor_version(
    lead_client: Client, project: Project, lead: Any
) -> None:
    data = edit_page(lead_client, project)
    data.update(keywords="android, iOS\ncrash, android", summary="Crashes too")

    response = lead_client.post(url("project-edit", project), data, follow=True)

    config = ProjectConfig.objects.get(project=project, is_current=True)
    assert response.redirect_chain[-1][0] == url("project-detail", project)
    assert config.version == "1.1.0"
    assert config.keywords == ["android", "ios", "crash"]
    assert (config.author, config.change_summary) == (lead, "Crashes too")
    assert "Saved as v1.1.0" in response.content.decode()


def test_saving_the_form_unchanged_makes_no_version(lead_client: Client, project: Project) -> None:
    response = lead_client.post(url("project-edit", project), edit_page(lead_client, project), follow=True)

    assert "Nothing changed" in response.content.decode()
    assert project.configs.count() == 1


def test_every_list_survives_an_unchanged_save(lead_client: Client, project: Project) -> None:
    """The formsets give back exactly what they showed: glossary, components, rules, team."""
    bump_config(
        project=project,
        user=project.memberships.get(role="lead").user,
        changes={
            "glossary": [
                {"term": "RC", "meaning": "Release\ncandidate"},
                {"term": "QA", "meaning": "Testing"},
            ],
            "schedule": "0 9 * * 1-5",
            "language": "pt-br",
        },
    )
    lead_client.post(url("project-edit", project), edit_page(lead_client, project))
    assert project.configs.count() == 2


def test_adding_a_member_in_an_empty_row_is_a_major_version(lead_client: Client, project: Project) -> None:
    carol = UserFactory(username="carol")
    data = edit_page(lead_client, project)
    data.update({"team-2-user": str(carol.pk), "team-2-role": "member"})

    lead_client.post(url("project-edit", project), data)

    assert ProjectConfig.objects.get(project=project, is_current=True).version == "2.0.0"
    assert project.memberships.filter(user=carol, role="member").exists()


def test_a_cleared_glossary_row_is_removed_and_a_glossary_entry_added(
    lead_client: Client, project: Project
) -> None:
    data = edit_page(lead_client, project)
    data.update(
        {
            "glossary-0-term": "",
            "glossary-0-meaning": "",
            "glossary-1-term": "QA",
            "glossary-1-meaning": "Tests",
        }
    )

    lead_client.post(url("project-edit", project), data)

    config = ProjectConfig.objects.get(project=project, is_current=True)
    assert (config.version, config.glossary) == ("1.1.0", [{"term": "QA", "meaning": "Tests"}])


@pytest.mark.parametrize(
    ("changes", "field_id", "message"),
    [
        ({"schedule": "at nine"}, "id_schedule", "five-field cron expression"),
        ({"schedule": "0 25 * * *"}, "id_schedule", "not a valid cron expression"),
        ({"language": "English"}, "id_language", "not a language code"),
        ({"batch_time_gap_minutes": "0"}, "id_batch_time_gap_minutes", "greater than or equal to 1"),
        ({"keywords": "x" * 101}, "id_keywords", "longer than 100 characters"),
    ],
)
def test_invalid_fields_show_their_message_next_to_them(
    lead_client: Client, project: Project, changes: dict[str, str], field_id: str, message: str
) -> None:
    data = {**edit_page(lead_client, project), **changes}

    response = lead_client.post(url("project-edit", project), data)

    assert response.status_code == 400
    assert message in field_html(response.content.decode(), field_id)
    assert project.configs.count() == 1


def test_a_default_assignee_off_the_team_is_an_error_on_that_field(
    lead_client: Client, project: Project, member: Any
) -> None:
    data = edit_page(lead_client, project)
    bob_row = next(
        key for key, value in data.items() if re.fullmatch(r"team-\d+-user", key) and value == str(member.pk)
    )
    data[bob_row.replace("-user", "-DELETE")] = "on"

    response = lead_client.post(url("project-edit", project), data)

    assert response.status_code == 400
    assert response.context["form"].errors["default_assignee"] == [
        "The default assignee must be on the team."
    ]
    assert "must be on the team" in field_html(response.content.decode(), "id_default_assignee")
    assert project.memberships.filter(user=member).exists()


def test_a_team_without_a_lead_is_an_error_above_the_team(lead_client: Client, project: Project) -> None:
    data = edit_page(lead_client, project)
    data.update({"team-0-role": "member", "team-1-role": "member"})

    response = lead_client.post(url("project-edit", project), data)

    assert response.status_code == 400
    assert response.context["editor"].team.non_form_errors() == ["The team needs at least one team lead."]
    html = response.content.decode()
    team = html[html.index('id="team"') : html.index("</fieldset>", html.index('id="team"'))]
    assert "at least one team lead" in team
    assert project.configs.count() == 1


def test_a_half_filled_row_asks_for_the_rest(lead_client: Client, project: Project) -> None:
    data = edit_page(lead_client, project)
    data.update({"glossary-1-term": "QA"})

    response = lead_client.post(url("project-edit", project), data)

    assert response.status_code == 400
    assert response.context["editor"].glossary.errors[1] == {"meaning": ["Fill this in, or clear the row."]}


def test_a_form_opened_before_another_save_is_refused(
    lead_client: Client, project: Project, lead: Any
) -> None:
    data = edit_page(lead_client, project)
    bump_config(project=project, user=lead, changes={"description": "Meanwhile."})
    data.update(keywords="crash")

    response = lead_client.post(url("project-edit", project), data)

    assert response.status_code == 400
    assert "Someone saved v1.0.1" in response.content.decode()
    assert ProjectConfig.objects.get(project=project, is_current=True).keywords == ["android", "ios"]


def test_a_project_made_in_the_admin_gets_its_first_version_from_the_form(client: Client) -> None:
    lead = UserFactory()
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=lead, role="lead")
    client.force_login(lead)
    assert "has no configuration yet" in client.get(url("project-detail", project)).content.decode()
    data = edit_page(client, project)
    data.update(keywords="invoice")

    client.post(url("project-edit", project), data)

    config = ProjectConfig.objects.get(project=project, is_current=True)
    assert (config.version, config.keywords) == ("1.0.0", ["invoice"])
    assert config.team == [{"user_id": lead.pk, "role": "lead"}]


def test_a_team_changed_in_the_admin_is_pointed_out_before_saving(
    lead_client: Client, project: Project
) -> None:
    assert "changed outside this page" not in lead_client.get(url("project-edit", project)).content.decode()
    ProjectMembershipFactory(project=project, user=UserFactory(), role="member")

    assert "changed outside this page" in lead_client.get(url("project-detail", project)).content.decode()
    assert "changed outside this page" in lead_client.get(url("project-edit", project)).content.decode()


# Permissions


@pytest.mark.parametrize(("who", "status"), [("member", 403), ("outsider", 404)])
def test_only_leads_and_staff_edit_and_roll_back(
    client: Client, project: Project, member: Any, who: str, status: int
) -> None:
    # A member sees the project and may not change it; to an outsider it does not exist.
    client.force_login(member if who == "member" else UserFactory())

    assert client.get(url("project-edit", project)).status_code == status
    assert client.post(url("project-edit", project), {"keywords": "x"}).status_code == status
    assert client.post(url("project-rollback", project), {"version": "1.0.0"}).status_code == status
    assert project.configs.count() == 1


def test_staff_edit_a_project_they_are_not_on(client: Client, project: Project) -> None:
    staff = UserFactory(is_staff=True)
    client.force_login(staff)
    data = edit_page(client, project)
    data.update(description="Edited by staff.")

    client.post(url("project-edit", project), data)

    config = ProjectConfig.objects.get(project=project, is_current=True)
    assert (config.version, config.author) == ("1.0.1", staff)


def test_a_lead_of_another_project_cannot_edit_this_one(client: Client, project: Project) -> None:
    other_lead = UserFactory()
    create_project(name="Back office", slug="back-office", user=other_lead)
    client.force_login(other_lead)
    # Not on its team: the project does not exist for them.
    assert client.get(url("project-edit", project)).status_code == 404


# History, diff and rollback


def test_history_lists_versions_and_shows_the_last_change_side_by_side(
    lead_client: Client, project: Project, lead: Any
) -> None:
    bump_config(project=project, user=lead, changes={"keywords": ["android", "crash"]}, summary="Crashes")

    response = lead_client.get(url("project-history", project))

    html = response.content.decode()
    assert [v.version for v in response.context["versions"]] == ["1.1.0", "1.0.0"]
    assert "Crashes" in html
    assert "v1.0.0 → v1.1.0" in html
    keywords = next(row for row in response.context["compared"] if row.field == "keywords")
    assert keywords.changed
    assert [(line.text, line.mark) for line in keywords.old] == [("android", ""), ("ios", "removed")]
    assert [(line.text, line.mark) for line in keywords.new] == [("android", ""), ("crash", "added")]
    assert re.search(r'<li class="added">crash</li>', html)
    assert response.context["changed_count"] == 1
    assert "Roll back to v1.0.0" in html


def test_any_two_versions_can_be_compared(
    lead_client: Client, project: Project, lead: Any, member: Any
) -> None:
    bump_config(project=project, user=lead, changes={"keywords": ["crash"]})
    bump_config(project=project, user=lead, changes={"description": "Changed."})

    response = lead_client.get(url("project-history", project), {"a": "one", "b": "1.0.0"})

    assert response.status_code == 400
    assert "is not a version like 1.2.0" in response.content.decode()
    response = lead_client.get(url("project-history", project), {"a": "1.0.0", "b": "1.1.1"})
    changed = {row.field for row in response.context["compared"] if row.changed}
    assert changed == {"keywords", "description"}
    team = next(row for row in response.context["compared"] if row.field == "team")
    assert [line.text for line in team.new] == ["alice (Team lead)", "bob (Member)"]


def test_a_missing_version_in_the_diff_is_a_404_with_a_message(lead_client: Client, project: Project) -> None:
    response = lead_client.get(url("project-history", project), {"a": "1.0.0", "b": "7.0.0"})
    assert response.status_code == 404
    assert "has no version 7.0.0" in response.content.decode()


def test_the_history_costs_the_same_queries_for_more_versions(
    lead_client: Client, project: Project, lead: Any
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = lead_client.get(url("project-history", project), {"a": "1.0.0", "b": "1.1.0"})
            assert response.status_code == 200
        return len(captured)

    bump_config(project=project, user=lead, changes={"keywords": ["a"]})
    few = queries()
    for n in range(6):
        bump_config(project=project, user=UserFactory(is_staff=True), changes={"description": f"Edit {n}"})
    assert queries() == few


def test_a_lead_rolls_back_from_the_history_page(lead_client: Client, project: Project, lead: Any) -> None:
    bump_config(project=project, user=lead, changes={"keywords": ["crash"]})

    response = lead_client.post(url("project-rollback", project), {"version": "1.0.0"}, follow=True)

    config = ProjectConfig.objects.get(project=project, is_current=True)
    assert (config.version, config.keywords) == ("1.2.0", ["android", "ios"])
    assert "Rolled back to v1.0.0: saved as v1.2.0" in response.content.decode()
    assert response.context["config_a"].version == "1.1.0"
    assert response.context["config_b"].version == "1.2.0"


def test_rolling_back_to_the_current_version_says_so(lead_client: Client, project: Project) -> None:
    response = lead_client.post(url("project-rollback", project), {"version": "1.0.0"}, follow=True)
    assert "is the current configuration already" in response.content.decode()
    assert project.configs.count() == 1


# New project


def test_staff_create_a_project_and_lead_it(client: Client) -> None:
    staff = UserFactory(is_staff=True)
    client.force_login(staff)

    response = client.post(
        reverse("projects:project-new"), {"name": "Back office", "slug": "", "description": "Ops"}
    )

    project = Project.objects.get(slug="back-office")
    assert response["Location"] == url("project-edit", project)
    assert project.memberships.get().user == staff
    assert project.configs.get().description == "Ops"


def test_a_taken_slug_is_an_error_on_the_slug(client: Client, project: Project) -> None:
    client.force_login(UserFactory(is_staff=True))

    response = client.post(reverse("projects:project-new"), {"name": "Other", "slug": "acme-mobile"})

    assert response.status_code == 400
    assert response.context["form"].errors["slug"] == ["The slug acme-mobile is taken."]


def test_only_staff_create_projects(client: Client, lead: Any) -> None:
    client.force_login(lead)
    assert client.get(reverse("projects:project-new")).status_code == 403
    assert client.post(reverse("projects:project-new"), {"name": "Mine"}).status_code == 403
    assert not Project.objects.exists()
