"""Indexes on proposals' titles and descriptions, for the duplicate check
(`proposals.services.creation`: a close title among all of a project's live proposals) and
for searches (every word in the title or the description).

PostgreSQL: GIN trigram indexes (`pg_trgm`, created by projects' 0005) on UPPER(title) and
UPPER(description), the expressions `icontains` filters on; the duplicate check's `%`
operator uses the title's.

SQLite: an FTS5 table with the trigram tokenizer over the proposal table (external content:
it stores the index only), kept in step by triggers, so every write of a title or a
description, through any path, updates it in the same transaction."""

from django.db import migrations

POSTGRES = [
    "CREATE INDEX IF NOT EXISTS proposal_title_trgm_idx ON proposals_taskproposal "
    "USING gin (UPPER(title) gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS proposal_description_trgm_idx ON proposals_taskproposal "
    "USING gin (UPPER(description) gin_trgm_ops)",
]
POSTGRES_BACK = [
    "DROP INDEX IF EXISTS proposal_description_trgm_idx",
    "DROP INDEX IF EXISTS proposal_title_trgm_idx",
]

SQLITE = [
    "CREATE VIRTUAL TABLE proposals_taskproposal_fts USING fts5("
    "title, description, content='proposals_taskproposal', content_rowid='id', tokenize='trigram')",
    "CREATE VIRTUAL TABLE proposals_taskproposal_fts_vocab USING fts5vocab('proposals_taskproposal_fts', 'col')",
    "CREATE TRIGGER proposals_taskproposal_fts_ai AFTER INSERT ON proposals_taskproposal BEGIN "
    "INSERT INTO proposals_taskproposal_fts(rowid, title, description) "
    "VALUES (new.id, new.title, new.description); END",
    "CREATE TRIGGER proposals_taskproposal_fts_ad AFTER DELETE ON proposals_taskproposal BEGIN "
    "INSERT INTO proposals_taskproposal_fts(proposals_taskproposal_fts, rowid, title, description) "
    "VALUES ('delete', old.id, old.title, old.description); END",
    "CREATE TRIGGER proposals_taskproposal_fts_au AFTER UPDATE OF title, description "
    "ON proposals_taskproposal BEGIN "
    "INSERT INTO proposals_taskproposal_fts(proposals_taskproposal_fts, rowid, title, description) "
    "VALUES ('delete', old.id, old.title, old.description); "
    "INSERT INTO proposals_taskproposal_fts(rowid, title, description) "
    "VALUES (new.id, new.title, new.description); END",
    "INSERT INTO proposals_taskproposal_fts(proposals_taskproposal_fts) VALUES ('rebuild')",
]
SQLITE_BACK = [
    "DROP TRIGGER IF EXISTS proposals_taskproposal_fts_au",
    "DROP TRIGGER IF EXISTS proposals_taskproposal_fts_ad",
    "DROP TRIGGER IF EXISTS proposals_taskproposal_fts_ai",
    "DROP TABLE IF EXISTS proposals_taskproposal_fts_vocab",
    "DROP TABLE IF EXISTS proposals_taskproposal_fts",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("proposals", "0003_reviewers_group_to_roles"),
        ("projects", "0005_task_title_index"),
    ]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRES_BACK, "sqlite": SQLITE_BACK}),
        ),
    ]
