from django.db import models


# The choices of Chat's fields, at module level so that its constraints can name their values.
class ChatType(models.TextChoices):
    PRIVATE = "private", "Private"
    GROUP = "group", "Group"
    SUPERGROUP = "supergroup", "Supergroup"
    CHANNEL = "channel", "Channel"


class Chat(models.Model):
    """A Telegram chat whose messages Tasktracker stores. Switched off, it keeps storing
    messages but no analysis reads them."""

    Type = ChatType

    telegram_id = models.BigIntegerField(unique=True)
    title = models.CharField(max_length=255, blank=True)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.GROUP)
    username = models.CharField(
        max_length=64, blank=True, help_text="Public @username, used for links to messages."
    )
    is_active = models.BooleanField(default=True, help_text="Analysed by runs when on.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(type__in=ChatType.values),
                name="chat_type_valid",
            )
        ]

    def __str__(self) -> str:
        return self.title or str(self.telegram_id)

    def message_link(self, telegram_message_id: int) -> str:
        """A t.me link to a message: public chats by username, supergroups and channels
        by their internal id (members only). Empty where Telegram has no link."""
        if self.username:
            return f"https://t.me/{self.username}/{telegram_message_id}"
        if self.type in (self.Type.SUPERGROUP, self.Type.CHANNEL):
            internal = str(abs(self.telegram_id))
            internal = internal[3:] if internal.startswith("100") else internal
            return f"https://t.me/c/{internal}/{telegram_message_id}"
        return ""


class Message(models.Model):
    """One Telegram message, stored once per (chat, Telegram message id)."""

    # What Telegram says of a message, in the order ingestion writes the columns (COPY) and
    # the admin and the API show them.
    TELEGRAM_FIELDS = (
        "telegram_id",
        "author_id",
        "author_name",
        "text",
        "sent_at",
        "edited_at",
        "reply_to_telegram_id",
        "forwarded_from",
    )

    # No index of its own: the unique (chat, telegram_id) index and the (chat, sent_at) one
    # serve every lookup by chat, and one index less is one insertion less per message.
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="messages", db_index=False)
    telegram_id = models.BigIntegerField()
    author_id = models.BigIntegerField(null=True, blank=True)
    author_name = models.CharField(max_length=255, blank=True)
    text = models.TextField(blank=True, help_text="Text, or the caption of a media message.")
    sent_at = models.DateTimeField()
    edited_at = models.DateTimeField(null=True, blank=True)
    reply_to_telegram_id = models.BigIntegerField(null=True, blank=True)
    forwarded_from = models.CharField(max_length=255, blank=True)
    raw = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sent_at", "telegram_id"]
        constraints = [
            models.UniqueConstraint(fields=["chat", "telegram_id"], name="message_unique_per_chat")
        ]
        indexes = [
            models.Index(fields=["chat", "sent_at"], name="message_chat_sent_idx"),
            models.Index(fields=["sent_at"], name="message_sent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.chat_id}/{self.telegram_id}: {self.text[:50]}"

    @property
    def link(self) -> str:
        return self.chat.message_link(self.telegram_id)


class MessageEdit(models.Model):
    """The text a message had before an edit replaced it."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="edits")
    previous_text = models.TextField(blank=True)
    previous_edited_at = models.DateTimeField(null=True, blank=True)
    edited_at = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["recorded_at"]

    def __str__(self) -> str:
        return f"Edit of {self.message_id} at {self.edited_at}"


class TelegramUpdate(models.Model):
    """A Bot API update id seen once: Telegram retries deliveries for a day."""

    update_id = models.BigIntegerField(unique=True)
    kind = models.CharField(max_length=32, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-update_id"]

    def __str__(self) -> str:
        return f"Update {self.update_id} ({self.kind})"


class PollingState(models.Model):
    """Where long polling of one bot stands, so a restart neither loses nor repeats updates."""

    bot_id = models.BigIntegerField(unique=True)
    last_update_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Bot {self.bot_id} at update {self.last_update_id}"
