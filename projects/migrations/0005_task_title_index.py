"""An index on tasks' titles for the duplicate check (`proposals.services.creation`), which
looks for a close title among all of a project's tasks, however many there are.

PostgreSQL: the `pg_trgm` extension, and a GIN trigram index on UPPER(title), the expression
`icontains` filters on (so it serves title searches too) and the duplicate check's `%`
operator uses. Creating the extension takes a superuser or, from PostgreSQL 13, a database
owner (pg_trgm is a trusted extension); the local and docker-compose `postgres` users are
superusers.

SQLite: an FTS5 table with the trigram tokenizer (SQLite 3.34+) over the task table
(external content: it stores the index only), kept in step by triggers, so every write of a
title, through any path, updates it in the same transaction."""

from django.db import migrations

POSTGRES = [
    # Not `TrigramExtension()`: its reversal asks `pg_extension` even on SQLite, and would
    # drop the extension other apps' indexes (sources' message search) depend on.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS task_title_trgm_idx ON projects_task USING gin (UPPER(title) gin_trgm_ops)",
]
POSTGRES_BACK = ["DROP INDEX IF EXISTS task_title_trgm_idx"]

SQLITE = [
    "CREATE VIRTUAL TABLE projects_task_fts USING fts5("
    "title, content='projects_task', content_rowid='id', tokenize='trigram')",
    "CREATE VIRTUAL TABLE projects_task_fts_vocab USING fts5vocab('projects_task_fts', 'row')",
    "CREATE TRIGGER projects_task_fts_ai AFTER INSERT ON projects_task BEGIN "
    "INSERT INTO projects_task_fts(rowid, title) VALUES (new.id, new.title); END",
    "CREATE TRIGGER projects_task_fts_ad AFTER DELETE ON projects_task BEGIN "
    "INSERT INTO projects_task_fts(projects_task_fts, rowid, title) VALUES ('delete', old.id, old.title); END",
    "CREATE TRIGGER projects_task_fts_au AFTER UPDATE OF title ON projects_task BEGIN "
    "INSERT INTO projects_task_fts(projects_task_fts, rowid, title) VALUES ('delete', old.id, old.title); "
    "INSERT INTO projects_task_fts(rowid, title) VALUES (new.id, new.title); END",
    "INSERT INTO projects_task_fts(projects_task_fts) VALUES ('rebuild')",
]
SQLITE_BACK = [
    "DROP TRIGGER IF EXISTS projects_task_fts_au",
    "DROP TRIGGER IF EXISTS projects_task_fts_ad",
    "DROP TRIGGER IF EXISTS projects_task_fts_ai",
    "DROP TABLE IF EXISTS projects_task_fts_vocab",
    "DROP TABLE IF EXISTS projects_task_fts",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0004_webhook_delivery_reasons"),
    ]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRES_BACK, "sqlite": SQLITE_BACK}),
        ),
    ]
