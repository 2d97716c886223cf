"""Bot API updates in the shape Telegram sends them."""

from typing import Any

CHAT = {"id": -1001876543210, "title": "Acme Mobile Team", "type": "supergroup"}
ALICE = {"id": 111, "is_bot": False, "first_name": "Alice", "last_name": "Ng", "username": "alice"}


def message_update(update_id: int, message_id: int, text: str, date: int = 1795000000, **extra: Any) -> dict:
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": ALICE,
            "chat": CHAT,
            "date": date,
            "text": text,
            **extra,
        },
    }


def edited_update(update_id: int, message_id: int, text: str, edit_date: int = 1795000600) -> dict:
    return {
        "update_id": update_id,
        "edited_message": {
            "message_id": message_id,
            "from": ALICE,
            "chat": CHAT,
            "date": 1795000000,
            "edit_date": edit_date,
            "text": text,
        },
    }


def photo_update(update_id: int, message_id: int, caption: str) -> dict:
    photo = [{"file_id": "AgAD", "file_unique_id": "AQAD", "width": 90, "height": 60, "file_size": 1200}]
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": ALICE,
            "chat": CHAT,
            "date": 1795000100,
            "photo": photo,
            "caption": caption,
        },
    }


def channel_post_update(update_id: int, message_id: int, text: str) -> dict:
    channel = {
        "id": -1002000000001,
        "title": "Acme Announcements",
        "type": "channel",
        "username": "acme_news",
    }
    return {
        "update_id": update_id,
        "channel_post": {
            "message_id": message_id,
            "sender_chat": channel,
            "chat": channel,
            "date": 1795000200,
            "text": text,
        },
    }


def reply_update(update_id: int, message_id: int, text: str, parent_id: int) -> dict:
    parent = {"message_id": parent_id, "from": ALICE, "chat": CHAT, "date": 1795000000, "text": "parent"}
    return message_update(update_id, message_id, text, reply_to_message=parent)


def poll_answer_update(update_id: int) -> dict:
    return {
        "update_id": update_id,
        "poll_answer": {"poll_id": "5", "user": ALICE, "option_ids": [0], "option_persistent_ids": ["a"]},
    }
