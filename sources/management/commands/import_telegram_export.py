from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sources.services import ImportResult, import_telegram_export
from tasktracker.exceptions import DomainError


def describe_import(result: ImportResult) -> str:
    """The one-line summary of an import, e.g. for the command and the admin."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(result.skipped.items()))
    skipped = f"skipped {result.skipped_total}" + (f" ({reasons})" if reasons else "")
    return (
        f"Imported {result.created} new, updated {result.updated}, unchanged {result.unchanged}, "
        f"{skipped} from {result.chats} chat(s)."
    )


class Command(BaseCommand):
    help = "Import a Telegram Desktop JSON export (result.json), one chat or a whole account, idempotently."
    # No system checks: they import every URL's views (the API, its schema) for a command
    # that reads a file into one table; `manage.py check` and the servers run them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="The export's result.json.")
        parser.add_argument(
            "--chat-id",
            type=int,
            default=None,
            help="Import only this chat of a full-account export (its id as exported or in Bot API form).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        if not path.is_file():
            raise CommandError(f"No export file at {path}.")

        def report(result: ImportResult) -> None:
            self.stderr.write(
                f"{result.messages_read} messages read: {result.created} new, {result.updated} updated, "
                f"{result.unchanged} unchanged, {result.skipped_total} skipped"
            )

        try:
            result = import_telegram_export(
                path_or_file=path, chat_telegram_id=options["chat_id"], progress=report
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(describe_import(result))
