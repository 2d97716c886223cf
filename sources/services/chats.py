"""Chats: created on first sight by every ingestion path, renamed or switched off."""

from django.db import transaction

from sources.models import Chat
from sources.services.storable import strip_nul


@transaction.atomic
def get_or_create_chat(*, telegram_id: int, title: str, type: str, username: str = "") -> Chat:
    """The chat with this Bot API id, created if new. A changed title, type or username is
    written over the stored one (chats get renamed); an empty one never erases it. NULs
    are dropped from the title and username, as from messages (`sources.services.storable`)."""
    title, username = strip_nul(title), strip_nul(username)
    chat, created = Chat.objects.select_for_update().get_or_create(
        telegram_id=telegram_id,
        defaults={"title": title[:255], "type": type, "username": username[:64]},
    )
    if created:
        return chat
    changes = {"title": title[:255], "type": type, "username": username[:64]}
    changed = [name for name, value in changes.items() if value and getattr(chat, name) != value]
    for name in changed:
        setattr(chat, name, changes[name])
    if changed:
        chat.save(update_fields=[*changed, "updated_at"])
    return chat


@transaction.atomic
def update_chat(*, chat: Chat, title: str | None = None, is_active: bool | None = None) -> Chat:
    """Rename a chat or switch it on or off (`None` leaves a field as it is). A chat
    switched off keeps storing its messages; runs skip it. A title set here lasts until
    Telegram reports a new one (`get_or_create_chat` writes renames over it)."""
    changes = {"title": title, "is_active": is_active}
    changed = [name for name, value in changes.items() if value is not None and getattr(chat, name) != value]
    for name in changed:
        setattr(chat, name, changes[name])
    if changed:
        chat.save(update_fields=[*changed, "updated_at"])
    return chat
