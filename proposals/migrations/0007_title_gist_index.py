"""GiST indexes for the duplicate check's nearest titles (`proposals.services.creation
.title_candidates`): per project, proposals' and tasks' titles by trigram distance.

PostgreSQL only. The GIN trigram indexes of 0004 and projects' 0005 answer `%` (similarity
above a threshold) and `icontains`, but a new title shares trigrams with much of a project's
history, so the check computed the similarity of a large share of the project's live
proposals for every title: a batch went from 37 ms to 540 ms over a 100,000-message run
(bench/duplicates.py). A GiST index on (project_id, UPPER(title) gist_trgm_ops) finds the
project's rows and orders them by distance (`<->`) inside the index, stopping after the
few nearest. `btree_gist` lets the index hold the integer column; like pg_trgm it is a
trusted extension (a database owner may create it from PostgreSQL 13). The tasks' index is
made here too, as the check that reads it is this app's.

SQLite keeps its FTS5 tables (0004)."""

from django.db import migrations

POSTGRES = [
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    "CREATE INDEX IF NOT EXISTS proposal_title_gist_idx ON proposals_taskproposal "
    "USING gist (project_id, UPPER(title) gist_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS task_title_gist_idx ON projects_task "
    "USING gist (project_id, UPPER(title) gist_trgm_ops)",
]
# The extension stays: dropping it could break an index someone else made with it.
POSTGRES_BACK = ["DROP INDEX IF EXISTS task_title_gist_idx", "DROP INDEX IF EXISTS proposal_title_gist_idx"]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            for statement in statements:
                schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("proposals", "0006_review_event_auto_approve"),
        ("projects", "0007_config_auto_approval"),
    ]

    operations = [migrations.RunPython(_run(POSTGRES), _run(POSTGRES_BACK))]
