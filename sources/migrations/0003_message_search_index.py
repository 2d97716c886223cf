"""The word index behind message search (`sources.selectors.search_messages`), one per database.

PostgreSQL: a stored generated `tsvector` column, `search_vector`, of the text under the
`simple` configuration (words lower-cased, no stemming, no stop words: a message has no
language of its own, a chat may feed projects of several), and a GIN index on it. The
column is computed by the server on every insert and update, COPY included, so no write
path needs to know of it. Adding it rewrites the table once, under an exclusive lock (writes
wait for as long: plan it on a large table); the index is then built CONCURRENTLY, hence
`atomic = False`.

SQLite: an external-content FTS5 table (unicode61 tokenizer, diacritics kept as PostgreSQL's
`simple` keeps them) kept by triggers on every insert, update of the text and delete, so
the bulk insert of an export and the edits of the upsert keep it right without knowing of it.

Neither is in the models' state: each database has only its own, and the ORM never names
them (the selector's SQL does).
"""

from contextlib import nullcontext

from django.db import migrations, transaction

POSTGRES_INDEX = "message_search_vector_idx"

POSTGRES_FORWARDS = [
    "ALTER TABLE sources_message ADD COLUMN IF NOT EXISTS search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, coalesce(text, ''))) STORED",
    # fastupdate (GIN's default, said here on purpose): a new row's words go to a pending
    # list that is merged into the index in bulk, which keeps ingestion cheap.
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {POSTGRES_INDEX} ON sources_message "
    "USING gin (search_vector) WITH (fastupdate = on)",
]
POSTGRES_BACKWARDS = [
    f"DROP INDEX CONCURRENTLY IF EXISTS {POSTGRES_INDEX}",
    "ALTER TABLE sources_message DROP COLUMN IF EXISTS search_vector",
]

SQLITE_FORWARDS = [
    "CREATE VIRTUAL TABLE sources_message_fts USING fts5("
    "text, content='sources_message', content_rowid='id', tokenize='unicode61 remove_diacritics 0')",
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
