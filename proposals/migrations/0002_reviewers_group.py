from django.db import migrations

REVIEWER_GROUP = "Reviewers"


def create_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).get_or_create(name=REVIEWER_GROUP)


class Migration(migrations.Migration):
    dependencies = [("proposals", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [migrations.RunPython(create_group, migrations.RunPython.noop)]
