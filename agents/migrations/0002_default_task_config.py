from django.db import migrations

# The constants are read from agents.defaults rather than copied here, so a fresh
# database starts with the current default; existing rows are never overwritten.
from agents.defaults import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_RESPONSE_SCHEMA,
    DEFAULT_TASK_CONFIG_DESCRIPTION,
    DEFAULT_TASK_CONFIG_NAME,
)


def create_default_task_config(apps, schema_editor):
    TaskConfig = apps.get_model("agents", "TaskConfig")
    TaskConfig.objects.using(schema_editor.connection.alias).get_or_create(
        name=DEFAULT_TASK_CONFIG_NAME,
        defaults={
            "description": DEFAULT_TASK_CONFIG_DESCRIPTION,
            "instructions": DEFAULT_INSTRUCTIONS,
            "response_schema": DEFAULT_RESPONSE_SCHEMA,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]

    operations = [migrations.RunPython(create_default_task_config, migrations.RunPython.noop)]
