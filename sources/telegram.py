"""Reading Bot API updates with python-telegram-bot, and the bot client itself.

Updates are untrusted JSON: whoever holds the webhook's secret can send anything. What is
read from them is checked here (types, 64-bit ids, dates), so that a malformed update is
refused as such (`ValueError`) and never reaches the database as a value it cannot store.

python-telegram-bot is imported where an update is parsed or the bot is made, not with this
module: commands that never meet an update (an export's import) start without it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings

from sources.models import Chat

if TYPE_CHECKING:
    from telegram import Bot, Update
    from telegram import Chat as TelegramChat
    from telegram import Message as TelegramMessage

    # Only for annotations: `sources.services` imports this module.
    from sources.services.upsert import ChatData, MessageData

# The update kinds that carry a chat message; any other kind is acknowledged and skipped.
MESSAGE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")
# Telegram's ids fit in a signed 64-bit integer, as do the columns that keep them.
ID_RANGE = range(-(2**63), 2**63)
# An update nests a dozen levels at most (the update, its message, the message it replies
# to, that one's entities, their users, a keyboard's rows and buttons); far deeper is no update.
MAX_UPDATE_DEPTH = 32
# How the Bot API names update kinds; another key is stored as "unknown" (and must fit
# `TelegramUpdate.kind`).
_KIND_NAME = re.compile(r"[a-z_]{1,32}")


def make_bot(token: str | None = None) -> Bot:
    """A Bot API client on the configured base URL (a fake one on loopback in tests)."""
    from telegram import Bot

    token = token or settings.TELEGRAM_BOT_TOKEN
    return Bot(token, base_url=settings.TELEGRAM_API_BASE_URL)


def load_update(body: bytes) -> Any:
    """The JSON of a webhook's body. Raises ValueError for what Telegram does not write:
    no JSON, NaN or Infinity (which Python's json reads), or nesting deeper than
    `MAX_UPDATE_DEPTH` (deep enough to exhaust the parser's stack is a RecursionError)."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError("The JSON nests too deeply.") from exc
    if _nests_deeper(data, MAX_UPDATE_DEPTH):
        raise ValueError(f"The JSON nests deeper than {MAX_UPDATE_DEPTH} levels.")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON.")


def _nests_deeper(value: Any, limit: int) -> bool:
    # Iterative: the check must not itself run out of stack.
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth == limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_update(data: dict[str, Any]) -> Update:
    """Parse Update JSON as Telegram sends it. Raises ValueError on a payload that is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        raise ValueError("An update must be a JSON object with an integer update_id.")
    from telegram import Update

    try:
        return Update.de_json(data, None)
    # python-telegram-bot is no validator: on a shape it does not expect it fails with
    # whatever its code meets (AttributeError for a message that is a string, OverflowError
    # for a date past any calendar...).
    except Exception as exc:
        raise ValueError(f"Not a Telegram update: {type(exc).__name__}: {str(exc)[:200]}") from exc


def update_kind(data: dict[str, Any]) -> str:
    """The kind of a raw update: the key beside update_id (a message kind first), or
    "unknown" when there is none or it is not named as the Bot API names kinds."""
    for kind in MESSAGE_KINDS:
        if kind in data:
            return kind
    others = [key for key in data if key != "update_id"]
    return others[0] if others and _KIND_NAME.fullmatch(others[0]) else "unknown"


def read_message(data: dict[str, Any]) -> tuple[ChatData, MessageData] | None:
    """The chat and the message of an update of a `MESSAGE_KINDS` kind, as
    `get_or_create_chat` and `upsert_messages` take them (None for a null message).
    Raises ValueError for an update that is not one."""
    message = parse_update(data).effective_message
    if message is None:
        return None
    return chat_fields(message.chat), message_fields(message, raw=data)


def chat_fields(chat: TelegramChat | None) -> ChatData:
    """A Bot API chat as `get_or_create_chat` takes it. Raises ValueError for a missing
    chat, an id that is no 64-bit integer or a name that is no string."""
    if chat is None:
        raise ValueError("The message names no chat.")
    _check_names(chat, "chat")
    chat_type = chat.type if chat.type in Chat.Type.values else Chat.Type.GROUP
    return {
        "telegram_id": _id(chat.id, "chat id"),
        "title": chat.title or chat.effective_name or "",
        "type": chat_type,
        "username": chat.username or "",
    }


def message_fields(message: TelegramMessage, raw: dict[str, Any]) -> MessageData:
    """A Bot API message as `sources.services.MessageData`: text or caption, author, times.
    Raises ValueError for a field of the wrong type or an id beyond 64 bits."""
    author = message.from_user
    if author is not None:
        _check_names(author, "author")
        author_id, author_name = _optional_id(author.id, "author id"), author.full_name
    elif message.sender_chat is not None:  # channel posts and anonymous admins
        _check_names(message.sender_chat, "sender chat")
        author_id = _id(message.sender_chat.id, "sender chat id")
        author_name = message.sender_chat.effective_name or ""
    else:
        author_id, author_name = None, _optional_text(message.author_signature, "author signature") or ""
    reply_to = message.reply_to_message
    return {
        "telegram_id": _id(message.message_id, "message id"),
        "sent_at": _date(message.date, "date"),
        "text": _optional_text(message.text, "text") or _optional_text(message.caption, "caption") or "",
        "author_id": author_id,
        "author_name": author_name or "",
        "edited_at": None if message.edit_date is None else _date(message.edit_date, "edit date"),
        "reply_to_telegram_id": _id(reply_to.message_id, "replied message id") if reply_to else None,
        "forwarded_from": _forwarded_from(message),
        "raw": raw,
    }


def _forwarded_from(message: TelegramMessage) -> str:
    origin = message.forward_origin
    if origin is None:
        return ""
    for name in ("sender_user", "sender_chat", "chat"):
        if getattr(origin, name, None) is not None:
            _check_names(getattr(origin, name), "forward origin")
    for name in ("sender_user_name", "author_signature"):
        _optional_text(getattr(origin, name, None), f"forward origin's {name}")
    sender = getattr(origin, "sender_user", None) or getattr(origin, "sender_chat", None)
    return (
        getattr(sender, "full_name", None)
        or getattr(sender, "effective_name", None)
        or getattr(origin, "sender_user_name", None)
        or getattr(getattr(origin, "chat", None), "effective_name", None)
        or ""
    )


def _id(value: Any, what: str) -> int:
    # `type() is int`: JSON's true and false are ints to isinstance.
    if type(value) is not int or value not in ID_RANGE:
        raise ValueError(f"The {what} is not an integer of 64 bits: {value!r:.40}.")
    return value


def _optional_id(value: Any, what: str) -> int | None:
    return None if value is None else _id(value, what)


def _optional_text(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"The {what} is not a string: {value!r:.40}.")
    return value


def _check_names(user_or_chat: Any, what: str) -> None:
    """Names are joined into strings (`full_name`) whatever their type: checked first."""
    for name in ("title", "first_name", "last_name", "username"):
        _optional_text(getattr(user_or_chat, name, None), f"{what}'s {name}")


def _date(value: Any, what: str) -> datetime:
    # python-telegram-bot turns a Unix time into a datetime and leaves a missing one None.
    if not isinstance(value, datetime):
        raise ValueError(f"The {what} is missing or no Unix time.")
    return value
