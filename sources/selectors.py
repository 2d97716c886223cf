"""Reads of the `sources` app: querysets with what their callers show already joined, so a
page of them costs the same few queries however long it is."""

from collections.abc import Iterable

from django.db import connections
from django.db.models import QuerySet
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
    the id breaks ties between messages of one second."""
    return Message.objects.select_related("chat").order_by("sent_at", "id")


def message_detail() -> QuerySet[Message]:
    """Messages for a lookup by id, with their chat and edit history.

    Unordered: with `Message.Meta.ordering` the planner may walk the (chat, sent_at) index
    of a large chat instead of going straight to the primary key.
    """
    return Message.objects.select_related("chat").prefetch_related("edits").order_by()


# The trigram tokenizer indexes runs of three characters: a shorter term matches nothing
# in the FTS5 table, so it is looked for by `icontains` alone.
_FTS_MIN_TERM_LENGTH = 3


def search_messages(messages: QuerySet[Message], *, terms: Iterable[str]) -> QuerySet[Message]:
    """`messages` whose text contains every one of `terms`, ignoring case: the substring
    match (`icontains`) the API's `?search=` has always made, kept exactly, but indexed.

    Substrings, not words, so a search for "deploy" still finds "deployment" and "redeploy",
    and one for "log" finds "login": a full-text (word) index would have changed what
    every existing search finds. So the indexes are of trigrams (migration 0003):

    - PostgreSQL: a pg_trgm GIN index on `upper(text)`, the very expression `icontains`
      compares, so the filter below uses it as it is; the planner reads the posting lists
      of a term's trigrams and rechecks the few rows they share. Unlike a `SearchVector`
      it needs no language either: a chat may feed projects of several languages.
    - SQLite: an FTS5 table with the trigram tokenizer, kept by triggers. Its match is
      asked first for each term of three characters or more; `icontains` then keeps
      exactly what it always kept (FTS5 folds the case of every letter, SQLite's LIKE
      only of ASCII ones, so the index may offer more rows, never fewer).
    """
    use_fts = connections[messages.db].vendor == "sqlite"
    for term in terms:
        if use_fts and len(term) >= _FTS_MIN_TERM_LENGTH:
            messages = messages.filter(pk__in=_fts_matches(term))
        messages = messages.filter(text__icontains=term)
    return messages


def _fts_matches(term: str) -> RawSQL:
    """The ids of the messages whose text holds `term`, by SQLite's FTS5 trigram table: a
    quoted phrase, so the term's own quotes and operators are taken as text."""
    phrase = '"' + term.replace('"', '""') + '"'
    return RawSQL("SELECT rowid FROM sources_message_fts WHERE sources_message_fts MATCH %s", (phrase,))
