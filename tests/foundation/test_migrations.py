import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db


def test_every_migration_is_applied_to_the_test_database() -> None:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    assert plan == []
    applied = {app for app, _ in executor.loader.applied_migrations}
    assert {"sources", "projects", "agents", "analysis", "proposals"} <= applied


def test_models_and_migrations_agree() -> None:
    # Exits non-zero (SystemExit) when a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_the_reviewers_group_becomes_reviewer_roles_on_every_project() -> None:
    """Each user of the old global Reviewers group reviews every project they were not on,
    a member becomes a reviewer, a lead stays a lead; then the group is gone."""
    before = [("projects", "0002_webhooks"), ("proposals", "0002_reviewers_group")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user_model, group_model = old.get_model("auth", "User"), old.get_model("auth", "Group")
    project_model = old.get_model("projects", "Project")
    membership_model = old.get_model("projects", "ProjectMembership")
    rita, lena, bob = (user_model.objects.create(username=name) for name in ("rita", "lena", "bob"))
    alpha, bravo = (project_model.objects.create(name=name, slug=name.lower()) for name in ("Alpha", "Bravo"))
    membership_model.objects.create(project=alpha, user=rita, role="member")
    membership_model.objects.create(project=alpha, user=lena, role="lead")
    membership_model.objects.create(project=bravo, user=bob, role="member")
    group_model.objects.get(name="Reviewers").user_set.add(rita, lena)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    new = executor.loader.project_state(executor.loader.graph.leaf_nodes()).apps
    roles = set(
        new.get_model("projects", "ProjectMembership").objects.values_list(
            "user__username", "project__slug", "role"
        )
    )
    assert roles == {
        ("rita", "alpha", "reviewer"),
        ("rita", "bravo", "reviewer"),
        ("lena", "alpha", "lead"),
        ("lena", "bravo", "reviewer"),
        ("bob", "bravo", "member"),
    }
    assert not new.get_model("auth", "Group").objects.filter(name="Reviewers").exists()
