"""A proposal's band, stored when it is saved (analysis.calibration); older ones get the fixed
bands they were shown in.

On SQLite, adding a NOT NULL column remakes the table, which drops the triggers that keep
0004's FTS5 index of titles and descriptions in step: they are made again, and the index
rebuilt."""

import importlib

from django.db import migrations, models
from django.db.models import Case, Value, When

TITLE_INDEX = importlib.import_module("proposals.migrations.0004_title_index")
TRIGGERS = [s for s in TITLE_INDEX.SQLITE if s.startswith(("CREATE TRIGGER", "INSERT INTO"))]
DROP_TRIGGERS = [s for s in TITLE_INDEX.SQLITE_BACK if s.startswith("DROP TRIGGER")]


def restore_fts_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in [*DROP_TRIGGERS, *TRIGGERS]:
            schema_editor.execute(statement)


def fixed_bands(apps, schema_editor):
    """Proposals saved before bands were stored get the fixed bands they were shown in."""
    TaskProposal = apps.get_model("proposals", "TaskProposal")
    TaskProposal.objects.update(
        band=Case(
            When(confidence__gt=0.9, then=Value("high")),
            When(confidence__gte=0.7, then=Value("medium")),
            default=Value("low"),
        )
    )


class Migration(migrations.Migration):
    dependencies = [
        ("proposals", "0004_title_index"),
    ]

    operations = [
        # Backwards, removing the column remakes the table too: the triggers again, after it.
        migrations.RunPython(migrations.RunPython.noop, restore_fts_triggers),
        migrations.AddField(
            model_name="taskproposal",
            name="band",
            field=models.CharField(
                blank=True,
                choices=[("high", "High"), ("medium", "Medium"), ("low", "Low")],
                db_default="",
                db_index=True,
                max_length=8,
            ),
        ),
        migrations.RunPython(restore_fts_triggers, restore_fts_triggers),
        migrations.RunPython(fixed_bands, migrations.RunPython.noop),
    ]
