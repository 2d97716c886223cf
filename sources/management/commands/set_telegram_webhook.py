import asyncio
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from telegram.error import TelegramError

from sources.telegram import MESSAGE_KINDS, make_bot


class Command(BaseCommand):
    help = "Register this server's webhook URL with Telegram, with the configured secret token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="Public HTTPS URL of /telegram/webhook/.")

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        if not settings.TELEGRAM_BOT_TOKEN:
            raise CommandError("TELEGRAM_BOT_TOKEN is not set.")
        if not settings.TELEGRAM_WEBHOOK_SECRET:
            raise CommandError(
                "TELEGRAM_WEBHOOK_SECRET is not set: a webhook without a secret accepts anyone."
            )
        if not url.startswith("https://"):
            raise CommandError("Telegram only calls HTTPS webhook URLs.")
        try:
            asyncio.run(self.set_webhook(url))
        except TelegramError as exc:
            raise CommandError(f"Telegram refused the webhook: {exc}.") from exc
        self.stdout.write(f"Webhook set to {url}.")

    async def set_webhook(self, url: str) -> None:
        async with make_bot() as bot:
            await bot.set_webhook(
                url, secret_token=settings.TELEGRAM_WEBHOOK_SECRET, allowed_updates=list(MESSAGE_KINDS)
            )
