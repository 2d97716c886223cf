"""`bump_config`: the versioning rule, no-op saves, validation; `rollback_config`; diffs."""

from typing import Any

import pytest

from projects.models import Project, ProjectConfig, ProjectMembership
from projects.selectors import config_state, diff_configs, get_config_version
from projects.services import bump_config, create_project, rollback_config
from tasktracker.exceptions import DomainError
from tests.factories import (
    ChatFactory,
    ProjectConfigFactory,
    ProjectFactory,
    ProjectMembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def current(project: Project) -> ProjectConfig:
    return ProjectConfig.objects.get(project=project, is_current=True)


def test_create_project_makes_the_creator_lead_and_version_1_0_0(
    project: Project, lead: Any, member: Any
) -> None:
    config = current(project)
    assert config.version == "1.0.0"
    assert config.author == lead
    assert config.team == [
        {"user_id": lead.pk, "role": "lead"},
        {"user_id": member.pk, "role": "member"},
    ]
    assert dict(project.memberships.values_list("user__username", "role")) == {
        "alice": "lead",
        "bob": "member",
    }
    assert project.default_assignee == member
    assert config.default_assignee_id_snapshot == member.pk


def test_the_creator_is_lead_even_when_the_team_given_says_member() -> None:
    creator = UserFactory()
    project = create_project(
        name="Ops", slug="ops", user=creator, changes={"team": [{"user_id": creator.pk, "role": "member"}]}
    )
    assert current(project).team == [{"user_id": creator.pk, "role": "lead"}]


@pytest.mark.parametrize(
    ("changes", "version"),
    [
        ({"description": "New words."}, "1.0.1"),
        ({"language": "de"}, "1.0.1"),
        ({"batch_time_gap_minutes": 30}, "1.0.1"),
        ({"schedule": "0 9 * * 1-5"}, "1.0.1"),
        ({"default_assignee": None}, "1.0.1"),
        ({"keywords": ["android", "ios", "crash"]}, "1.1.0"),
        ({"exclude_keywords": []}, "1.1.0"),
        ({"glossary": []}, "1.1.0"),
        ({"components": [{"name": "iOS app", "keywords": ["ios"]}]}, "1.1.0"),
        ({"priority_rules": []}, "1.1.0"),
        ({"chats": []}, "2.0.0"),
        ({"team": "lead only"}, "2.0.0"),
        ({"keywords": ["crash"], "description": "Both."}, "1.1.0"),
        ({"keywords": ["crash"], "chats": []}, "2.0.0"),
    ],
)
def test_the_version_bump_follows_what_changed(
    project: Project, lead: Any, changes: dict[str, Any], version: str
) -> None:
    if changes.get("team") == "lead only":
        changes = {"team": [{"user_id": lead.pk, "role": "lead"}], "default_assignee": None}

    config = bump_config(project=project, user=lead, changes=changes)

    assert config is not None
    assert config.version == version
    assert config.is_current
    assert ProjectConfig.objects.filter(project=project, is_current=True).get() == config
    assert get_config_version(project, "1.0.0").is_current is False


def test_counting_goes_on_from_the_last_version_and_resets_lower_parts(project: Project, lead: Any) -> None:
    versions = [
        bump_config(project=project, user=lead, changes=changes).version
        for changes in (
            {"description": "a"},
            {"description": "b"},
            {"keywords": ["x"]},
            {"description": "c"},
            {"chats": []},
            {"keywords": ["y"]},
        )
    ]
    assert versions == ["1.0.1", "1.0.2", "1.1.0", "1.1.1", "2.0.0", "2.1.0"]


def test_saving_without_a_change_makes_no_version(
    project: Project, lead: Any, member: Any, chat: Any
) -> None:
    state = config_state(current(project))

    assert bump_config(project=project, user=lead, changes={}) is None
    assert bump_config(project=project, user=lead, changes=dict(state)) is None
    # The same values written differently are the same configuration.
    same = {
        "keywords": [" Android ", "IOS", "android"],
        "description": "The mobile apps.\r\n",
        "chats": [chat],
        "team": [{"user_id": member.pk, "role": "member"}, {"user_id": lead.pk, "role": "lead"}],
        "schedule": "",
    }
    assert bump_config(project=project, user=lead, changes=same) is None
    assert project.configs.count() == 1


def test_a_version_records_author_time_and_summary(project: Project, member: Any) -> None:
    given = bump_config(
        project=project, user=member, changes={"keywords": ["crash"]}, summary="Crashes matter"
    )
    made = bump_config(project=project, user=member, changes={"glossary": [], "language": "de"})

    assert (given.author, given.change_summary) == (member, "Crashes matter")
    assert given.created_at is not None
    assert made.change_summary == "Changed language, glossary."


def test_keywords_are_trimmed_lower_cased_and_deduplicated(project: Project, lead: Any) -> None:
    config = bump_config(
        project=project,
        user=lead,
        changes={
            "keywords": ["  Login ", "LOGIN", "", "app   store", "Crash"],
            "components": [{"name": "iOS", "keywords": ["TestFlight", "testflight "]}],
        },
    )
    assert config.keywords == ["login", "app store", "crash"]
    assert config.components == [{"name": "iOS", "keywords": ["testflight"]}]


def test_team_changes_are_applied_to_the_memberships(project: Project, lead: Any, member: Any) -> None:
    carol = UserFactory(username="carol")

    config = bump_config(
        project=project,
        user=lead,
        changes={
            "team": [{"user_id": lead.pk, "role": "member"}, {"user_id": carol.pk, "role": "lead"}],
            "default_assignee": carol.pk,
        },
    )

    assert config.version == "2.0.0"
    assert dict(project.memberships.values_list("user__username", "role")) == {
        "alice": "member",
        "carol": "lead",
    }
    project.refresh_from_db()
    assert project.default_assignee == carol
    assert config.default_assignee_id_snapshot == carol.pk


@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [
        ({"schedule": "every day"}, "invalid_schedule", "five-field cron expression"),
        ({"schedule": "61 * * * *"}, "invalid_schedule", "not a valid cron expression"),
        ({"language": "English!"}, "invalid_language", "language code"),
        ({"batch_time_gap_minutes": 0}, "invalid_batch_time_gap_minutes", "between 1 and"),
        ({"glossary": [{"term": "RC", "meaning": ""}]}, "invalid_glossary", "term and its meaning"),
        ({"components": [{"name": "A"}, {"name": "a"}]}, "invalid_components", "two components"),
        (
            {"priority_rules": [{"when": "x", "priority": "urgent"}]},
            "invalid_priority_rules",
            "not a priority",
        ),
        ({"chats": [999999]}, "invalid_chats", "no chat 999999"),
        ({"team": [{"user_id": 999999, "role": "lead"}]}, "invalid_team", "no user 999999"),
        ({"team": "members only"}, "invalid_team", "at least one team lead"),
        ({"default_assignee": "outsider"}, "invalid_default_assignee", "must be on the team"),
        ({"colour": "red"}, "unknown_fields", "colour"),
    ],
)
def test_invalid_changes_are_refused_and_write_nothing(
    project: Project, lead: Any, member: Any, changes: dict[str, Any], code: str, message: str
) -> None:
    if changes.get("team") == "members only":
        changes = {"team": [{"user_id": lead.pk, "role": "member"}, {"user_id": member.pk, "role": "member"}]}
    if changes.get("default_assignee") == "outsider":
        changes = {"default_assignee": UserFactory().pk}

    with pytest.raises(DomainError) as error:
        bump_config(project=project, user=lead, changes=changes)

    assert error.value.code == code
    assert message in error.value.message
    assert project.configs.count() == 1
    assert project.memberships.count() == 2


def test_a_save_based_on_an_older_version_is_refused(project: Project, lead: Any) -> None:
    bump_config(project=project, user=lead, changes={"description": "first"}, base_version="1.0.0")

    with pytest.raises(DomainError) as error:
        bump_config(project=project, user=lead, changes={"description": "second"}, base_version="1.0.0")

    assert (error.value.code, error.value.status) == ("stale_version", 409)
    assert current(project).description == "first"


def test_a_team_changed_in_the_admin_is_recorded_by_the_next_save(project: Project, lead: Any) -> None:
    newcomer = UserFactory()
    ProjectMembershipFactory(project=project, user=newcomer, role="member")

    config = bump_config(project=project, user=lead, changes={"description": "Just the text."})

    assert config.version == "2.0.0"
    assert {"user_id": newcomer.pk, "role": "member"} in config.team


def test_a_project_without_any_version_gets_1_0_0() -> None:
    lead = UserFactory()
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=lead, role="lead")

    config = bump_config(project=project, user=lead, changes={"keywords": ["bug"]})

    assert config.version == "1.0.0"
    assert config.team == [{"user_id": lead.pk, "role": "lead"}]


def test_the_next_version_counts_from_the_highest_one() -> None:
    lead = UserFactory()
    project = ProjectFactory()
    ProjectMembershipFactory(project=project, user=lead, role="lead")
    ProjectConfigFactory(project=project, major=3, minor=2, is_current=False)
    ProjectConfigFactory(
        project=project, major=1, is_current=True, team=[{"user_id": lead.pk, "role": "lead"}]
    )

    assert bump_config(project=project, user=lead, changes={"keywords": ["x"]}).version == "3.3.0"


@pytest.mark.parametrize(
    ("name", "slug", "code"),
    [
        ("Acme Mobile", "other", "invalid_name"),
        ("Other", "acme-mobile", "invalid_slug"),
        ("Other", "new", "invalid_slug"),
        ("Other", "Not A Slug", "invalid_slug"),
        ("  ", "", "invalid_name"),
    ],
)
def test_create_project_refuses_taken_or_bad_names(
    project: Project, lead: Any, name: str, slug: str, code: str
) -> None:
    with pytest.raises(DomainError) as error:
        create_project(name=name, slug=slug, user=lead)
    assert error.value.code == code
    assert Project.objects.count() == 1


# Rollback


def test_rollback_makes_a_new_version_equal_to_the_old_one(project: Project, lead: Any, member: Any) -> None:
    original = config_state(current(project))
    bump_config(project=project, user=lead, changes={"keywords": ["crash"], "description": "Changed."})
    bump_config(
        project=project,
        user=lead,
        changes={"team": [{"user_id": lead.pk, "role": "lead"}], "default_assignee": None},
    )
    assert current(project).version == "2.0.0"

    config = rollback_config(project=project, version="1.0.0", user=lead)

    assert config.version == "3.0.0"  # the team comes back: a major change from 2.0.0
    assert config_state(config) == original
    assert config.change_summary == "Rolled back to v1.0.0."
    assert get_config_version(project, "1.0.0").keywords == ["android", "ios"]  # the old one is untouched
    assert project.configs.count() == 4
    assert project.memberships.filter(user=member, role="member").exists()
    project.refresh_from_db()
    assert project.default_assignee == member


def test_rollback_of_a_keyword_change_is_a_minor_version(project: Project, lead: Any) -> None:
    bump_config(project=project, user=lead, changes={"keywords": ["crash"]})

    assert rollback_config(project=project, version="1.0.0", user=lead).version == "1.2.0"
    assert current(project).keywords == ["android", "ios"]


def test_rollback_to_the_current_configuration_is_refused(project: Project, lead: Any) -> None:
    with pytest.raises(DomainError) as error:
        rollback_config(project=project, version="1.0.0", user=lead)
    assert error.value.code == "no_change"
    assert project.configs.count() == 1


def test_rollback_to_a_missing_version_is_not_found(project: Project, lead: Any) -> None:
    with pytest.raises(DomainError) as error:
        rollback_config(project=project, version="9.9.9", user=lead)
    assert error.value.status == 404


def test_rollback_leaves_out_users_deleted_since(project: Project, lead: Any, member: Any) -> None:
    bump_config(
        project=project,
        user=lead,
        changes={"team": [{"user_id": lead.pk, "role": "lead"}], "default_assignee": None, "keywords": []},
    )
    member_id = member.pk
    member.delete()

    config = rollback_config(project=project, version="1.0.0", user=lead)

    assert config.version == "2.1.0"
    assert config.keywords == ["android", "ios"]
    assert config.team == [{"user_id": lead.pk, "role": "lead"}]
    assert f"Deleted users left out: {member_id}" in config.change_summary


# Diff


def test_diff_configs_lists_the_fields_that_differ(project: Project, lead: Any, chat: Any) -> None:
    other_chat = ChatFactory()
    old = current(project)
    new = bump_config(
        project=project,
        user=lead,
        changes={"keywords": ["android", "crash"], "chats": [chat.pk, other_chat.pk]},
    )

    changes = diff_configs(old, new)

    assert changes == [
        ("keywords", ["android", "ios"], ["android", "crash"]),
        ("chats", [chat.pk], sorted([chat.pk, other_chat.pk])),
    ]
    assert diff_configs(new, new) == []
    assert [c.field for c in diff_configs(new, old)] == ["keywords", "chats"]


def test_memberships_of_other_projects_are_untouched(project: Project, lead: Any, member: Any) -> None:
    other = ProjectMembershipFactory(user=member, role=ProjectMembership.Role.LEAD)

    bump_config(
        project=project,
        user=lead,
        changes={"team": [{"user_id": lead.pk, "role": "lead"}], "default_assignee": None},
    )

    assert ProjectMembership.objects.filter(pk=other.pk).exists()
