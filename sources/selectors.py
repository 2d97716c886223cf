"""Reads of the `sources` app: querysets with what their callers show already joined, so a
page of them costs the same few queries however long it is."""

from django.db.models import QuerySet

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
