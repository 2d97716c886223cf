"""Reads of the `sources` app: querysets with what their callers show already joined, so a
page of them costs the same few queries however long it is."""

import re
from collections.abc import Iterable

from django.db import connections
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL

from sources.models import Chat, Message


def chat_list() -> QuerySet[Chat]:
    """Every chat by title; the id breaks ties so pages never repeat or skip one."""
    return Chat.objects.order_by("title", "id")


def chat_detail() -> QuerySet[Chat]:
    """Chats for a lookup by id: unordered, as ordering one row is wasted work."""
    return Chat.objects.order_by()


def message_list() -> QuerySet[Message]:
    """Messages of every chat with their chat (each one's link reads it), oldest first;
    the id breaks ties between messages of one second. Without the raw update, which a
    list does not show and which weighs more than the rest of a message."""
    return Message.objects.select_related("chat").defer("raw").order_by("sent_at", "id")


def message_detail() -> QuerySet[Message]:
    """Messages for a lookup by id, with their chat and edit history.

    Unordered: with `Message.Meta.ordering` the planner may walk the (chat, sent_at) index
    of a large chat instead of going straight to the primary key.
    """
    return Message.objects.select_related("chat").prefetch_related("edits").order_by()


# A term is looked for only if it holds a letter or a digit: the word indexes hold nothing
# else (punctuation and underscores part words), and FTS5 answers a phrase of no word with
# no rows where PostgreSQL would drop it from the query.
_HAS_WORD = re.compile(r"[^\W_]")
# Inside a quoted operand of a tsquery only a quote and a backslash mean something; to
# PostgreSQL's parser both part words as a space does.
_TSQUERY_QUOTED_SPECIALS = re.compile(r"['\\]")


def search_messages(messages: QuerySet[Message], *, terms: Iterable[str]) -> QuerySet[Message]:
    """`messages` whose text has, for every one of `terms`, words starting with it: any
    case, so "deploy" finds "Deployed" but "ploy" does not find "redeploy". A term of
    several words ("login page", "deploy-ready", from a quoted phrase) needs them one after
    the other. Terms with no letter or digit are ignored; when every term is such, nothing
    matches. No terms at all: `messages` as they are.

    By the word index of migration 0003, never a scan of the text:

    - PostgreSQL: `search_vector @@ to_tsquery('simple', "'term1':* & 'term2':*")`, the
      stored `tsvector` column under its GIN index. Each term goes in quoted, with the two
      characters that mean something inside quotes taken out, so `&|!():*<->` typed by a
      user are text to PostgreSQL's parser (which splits words on them), never operators.
    - SQLite: the ids the FTS5 table matches for `"term1"* AND "term2"*`, each term a
      quoted string (its own quotes doubled), so FTS5's operators are text there too.
    """
    terms = list(terms)
    if not terms:
        return messages
    words = [term for term in terms if _HAS_WORD.search(term)]
    if not words:
        return messages.none()
    if connections[messages.db].vendor == "postgresql":
        query = " & ".join(f"'{_TSQUERY_QUOTED_SPECIALS.sub(' ', term)}':*" for term in words)
        # Not a column of the model: SQLite has no such column (its index is a table).
        # Unqualified, so it is found under whatever alias the query gives the table.
        matches = RawSQL(
            "search_vector @@ to_tsquery('simple'::regconfig, %s)", (query,), output_field=BooleanField()
        )
        return messages.filter(matches)
    query = " AND ".join('"' + term.replace('"', '""') + '"*' for term in words)
    return messages.filter(
        pk__in=RawSQL("SELECT rowid FROM sources_message_fts WHERE sources_message_fts MATCH %s", (query,))
    )
