import asyncio
import logging
import signal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from telegram import Bot
from telegram.error import InvalidToken, NetworkError, TelegramError

from sources.services import ingest_polled_update, polling_offset
from sources.telegram import MESSAGE_KINDS, make_bot

logger = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 60


class Command(BaseCommand):
    help = "Read the bot's updates by long polling (getUpdates) and store their messages."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=int, default=30, help="Long-poll seconds per request.")
        parser.add_argument("--once", action="store_true", help="Read one round of updates, then stop.")

    def handle(self, *args: Any, timeout: int, once: bool, **options: Any) -> None:
        if not settings.TELEGRAM_BOT_TOKEN:
            raise CommandError("TELEGRAM_BOT_TOKEN is not set: polling needs the bot's token.")
        try:
            stored = asyncio.run(self.poll(make_bot(), timeout=timeout, once=once))
        except InvalidToken as exc:
            raise CommandError(f"Telegram refused the bot token: {exc}.") from exc
        self.stdout.write(f"Stopped after storing {stored} update(s).")

    async def poll(self, bot: Bot, *, timeout: int, once: bool) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stored = 0
        backoff = 1.0
        async with bot:
            self.stdout.write(f"Polling as @{bot.username} (Ctrl-C stops).")
            while not stop.is_set():
                offset = await sync_to_async(polling_offset)(bot_id=bot.id)
                request = asyncio.ensure_future(
                    bot.get_updates(
                        offset=offset, timeout=0 if once else timeout, allowed_updates=MESSAGE_KINDS
                    )
                )
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({request, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    # Updates of an unfinished request are not confirmed: the next run reads them.
                    request.cancel()
                    break
                try:
                    updates = request.result()
                except InvalidToken:
                    raise
                except (NetworkError, TelegramError) as exc:
                    logger.warning("getUpdates failed (%s); retrying in %.0f s", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                backoff = 1.0
                for update in updates:
                    # Each update is stored with the new offset in one transaction.
                    await sync_to_async(ingest_polled_update)(bot_id=bot.id, data=update.to_dict())
                    stored += 1
                if once:
                    break
        # A long-lived process: give the database connection of asgiref's thread back.
        await sync_to_async(connections.close_all)()
        return stored
