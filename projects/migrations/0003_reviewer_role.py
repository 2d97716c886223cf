"""The per-project reviewer role, beside team lead and member (see `projects.access`)."""

from django.db import migrations, models


def demote_reviewers(apps, schema_editor):
    """Going back: the old constraint knows no reviewer, who is a member there."""
    ProjectMembership = apps.get_model("projects", "ProjectMembership")
    ProjectMembership.objects.using(schema_editor.connection.alias).filter(role="reviewer").update(
        role="member"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0002_webhooks"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="projectmembership",
            name="membership_role_valid",
        ),
        migrations.AlterField(
            model_name="projectmembership",
            name="role",
            field=models.CharField(
                choices=[("lead", "Team lead"), ("reviewer", "Reviewer"), ("member", "Member")],
                default="member",
                max_length=16,
            ),
        ),
        migrations.AddConstraint(
            model_name="projectmembership",
            constraint=models.CheckConstraint(
                condition=models.Q(("role__in", ["lead", "reviewer", "member"])),
                name="membership_role_valid",
            ),
        ),
        # Last, so that it runs first when migrating back, before the old constraint returns.
        migrations.RunPython(migrations.RunPython.noop, demote_reviewers),
    ]
