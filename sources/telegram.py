"""Reading Bot API updates with python-telegram-bot, and the bot client itself."""

from typing import Any

from django.conf import settings
from telegram import Bot, Update
from telegram import Chat as TelegramChat
from telegram import Message as TelegramMessage

from sources.models import Chat

# The update kinds that carry a chat message; any other kind is acknowledged and skipped.
MESSAGE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")


def make_bot(token: str | None = None) -> Bot:
    """A Bot API client on the configured base URL (a fake one on loopback in tests)."""
    token = token or settings.TELEGRAM_BOT_TOKEN
    return Bot(token, base_url=settings.TELEGRAM_API_BASE_URL)


def parse_update(data: dict[str, Any]) -> Update:
    """Parse Update JSON as Telegram sends it. Raises ValueError on a payload that is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        raise ValueError("An update must be a JSON object with an integer update_id.")
    try:
        return Update.de_json(data, None)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Not a Telegram update: {exc}") from exc


def update_kind(data: dict[str, Any]) -> str:
    """The kind of a raw update: the key beside update_id (a message kind first)."""
    for kind in MESSAGE_KINDS:
        if kind in data:
            return kind
    others = [key for key in data if key != "update_id"]
    return others[0] if others else "unknown"


def chat_fields(chat: TelegramChat) -> dict[str, Any]:
    chat_type = chat.type if chat.type in Chat.Type.values else Chat.Type.GROUP
    return {
        "telegram_id": chat.id,
        "title": chat.title or chat.effective_name or "",
        "type": chat_type,
        "username": chat.username or "",
    }


def message_fields(message: TelegramMessage, raw: dict[str, Any]) -> dict[str, Any]:
    """A Bot API message as `sources.services.MessageData`: text or caption, author, times."""
    author = message.from_user
    if author is not None:
        author_id, author_name = author.id, author.full_name
    elif message.sender_chat is not None:  # channel posts and anonymous admins
        author_id, author_name = message.sender_chat.id, message.sender_chat.effective_name or ""
    else:
        author_id, author_name = None, message.author_signature or ""
    origin = message.forward_origin
    forwarded_from = ""
    if origin is not None:
        sender = getattr(origin, "sender_user", None) or getattr(origin, "sender_chat", None)
        forwarded_from = (
            getattr(sender, "full_name", None)
            or getattr(sender, "effective_name", None)
            or getattr(origin, "sender_user_name", None)
            or getattr(getattr(origin, "chat", None), "effective_name", None)
            or ""
        )
    return {
        "telegram_id": message.message_id,
        "sent_at": message.date,
        "text": message.text or message.caption or "",
        "author_id": author_id,
        "author_name": author_name or "",
        "edited_at": message.edit_date,
        "reply_to_telegram_id": message.reply_to_message.message_id if message.reply_to_message else None,
        "forwarded_from": forwarded_from,
        "raw": raw,
    }
