"""The index behind message search (`sources.selectors.search_messages`), one per database.

PostgreSQL: a pg_trgm GIN index on `upper(text)`, the expression Django's `icontains`
compares, so every substring search of the text uses it as it is written today. It is
built CONCURRENTLY (hence `atomic = False`): on a table of millions of messages a plain
build would hold off ingestion for minutes.

SQLite: an external-content FTS5 table with the trigram tokenizer (substrings, not words,
as `icontains` matches), kept by triggers on every insert, update and delete, so the bulk
insert of an export and the edits of the upsert keep it right without knowing of it.

Neither is in the models' state: each database has only its own, and the ORM never names
them (the selector's SQL does).
"""

from contextlib import nullcontext

from django.db import migrations, transaction

POSTGRES_INDEX = "message_text_trgm_idx"

POSTGRES_FORWARDS = [
    # Left in place on the way back: another app's index may use it. Not Django's
    # `TrigramExtension()`, whose reversal asks `pg_extension` even on SQLite.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {POSTGRES_INDEX} ON sources_message "
    "USING gin (upper(text) gin_trgm_ops)",
]
POSTGRES_BACKWARDS = [f"DROP INDEX CONCURRENTLY IF EXISTS {POSTGRES_INDEX}"]

SQLITE_FORWARDS = [
    "CREATE VIRTUAL TABLE sources_message_fts USING fts5("
    "text, content='sources_message', content_rowid='id', tokenize='trigram')",
    """CREATE TRIGGER sources_message_fts_insert AFTER INSERT ON sources_message BEGIN
        INSERT INTO sources_message_fts(rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER sources_message_fts_delete AFTER DELETE ON sources_message BEGIN
        INSERT INTO sources_message_fts(sources_message_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    """CREATE TRIGGER sources_message_fts_update AFTER UPDATE OF text ON sources_message BEGIN
        INSERT INTO sources_message_fts(sources_message_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO sources_message_fts(rowid, text) VALUES (new.id, new.text);
    END""",
    # The messages stored before this migration.
    "INSERT INTO sources_message_fts(sources_message_fts) VALUES ('rebuild')",
]
SQLITE_BACKWARDS = [
    "DROP TRIGGER IF EXISTS sources_message_fts_update",
    "DROP TRIGGER IF EXISTS sources_message_fts_delete",
    "DROP TRIGGER IF EXISTS sources_message_fts_insert",
    "DROP TABLE IF EXISTS sources_message_fts",
]


def _run(schema_editor, statements_by_vendor):
    connection = schema_editor.connection
    statements = statements_by_vendor.get(connection.vendor, [])
    # SQLite's table and triggers go in together or not at all; PostgreSQL's CONCURRENTLY
    # refuses a transaction.
    in_transaction = connection.vendor == "sqlite"
    with transaction.atomic(using=connection.alias) if in_transaction else nullcontext():
        for statement in statements:
            schema_editor.execute(statement)


def create_search_index(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRES_FORWARDS, "sqlite": SQLITE_FORWARDS})


def drop_search_index(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRES_BACKWARDS, "sqlite": SQLITE_BACKWARDS})


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction (SQLite's part takes one of its own).
    atomic = False

    dependencies = [
        ("sources", "0002_message_chat_no_separate_index"),
    ]

    operations = [
        migrations.RunPython(create_search_index, drop_search_index),
    ]
