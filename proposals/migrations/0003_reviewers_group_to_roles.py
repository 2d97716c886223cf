"""The global Reviewers group becomes per-project reviewer roles, then goes.

Each user of the group gets the reviewer role on every project they are not on, a member
of a project becomes its reviewer, and a lead stays a lead: nobody reviews less than
before. Going back re-creates the group, empty: which reviewer roles came from it is not
kept (the projects migration going back makes reviewers members).
"""

from django.db import migrations

REVIEWER_GROUP = "Reviewers"


def group_to_roles(apps, schema_editor):
    db = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    Project = apps.get_model("projects", "Project")
    ProjectMembership = apps.get_model("projects", "ProjectMembership")
    group = Group.objects.using(db).filter(name=REVIEWER_GROUP).first()
    if group is None:
        return
    project_ids = list(Project.objects.using(db).values_list("pk", flat=True))
    for user in group.user_set.using(db).all():
        memberships = ProjectMembership.objects.using(db).filter(user=user)
        memberships.filter(role="member").update(role="reviewer")
        on = set(memberships.values_list("project_id", flat=True))
        ProjectMembership.objects.using(db).bulk_create(
            [
                ProjectMembership(project_id=project_id, user=user, role="reviewer")
                for project_id in project_ids
                if project_id not in on
            ]
        )
    group.delete()


def recreate_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).get_or_create(name=REVIEWER_GROUP)


class Migration(migrations.Migration):
    dependencies = [
        ("proposals", "0002_reviewers_group"),
        ("projects", "0003_reviewer_role"),
    ]

    operations = [migrations.RunPython(group_to_roles, recreate_group)]
