"""Writes of the `sources` app: chats and messages, whatever path they arrive by.

Every ingestion path (Telegram Desktop export, webhook, polling, API) ends in
`upsert_messages`, which is idempotent on (chat, Telegram message id): a message seen
again is left alone, or updated with its previous text kept in `MessageEdit` when it
was edited since.
"""

from sources.services.chats import get_or_create_chat, update_chat
from sources.services.export_import import (
    IMPORT_CHUNK_SIZE,
    ImportResult,
    bot_api_chat_id,
    chat_type_from_export,
    export_text,
    import_telegram_export,
    message_from_export,
)
from sources.services.updates import UpdateOutcome, ingest_polled_update, ingest_update, polling_offset
from sources.services.upsert import (
    BULK_MAX_MESSAGES,
    ChatData,
    MessageData,
    UpsertCounts,
    ingest_messages,
    upsert_messages,
)

__all__ = [
    "BULK_MAX_MESSAGES",
    "IMPORT_CHUNK_SIZE",
    "ChatData",
    "ImportResult",
    "MessageData",
    "UpdateOutcome",
    "UpsertCounts",
    "bot_api_chat_id",
    "chat_type_from_export",
    "export_text",
    "get_or_create_chat",
    "import_telegram_export",
    "ingest_messages",
    "ingest_polled_update",
    "ingest_update",
    "message_from_export",
    "polling_offset",
    "update_chat",
    "upsert_messages",
]
