#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import gc
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasktracker.settings")
    # The cyclic garbage collector is off while Django is imported and set up, which builds
    # tens of thousands of objects that live as long as the process (modules, models, URL
    # patterns): run every 700 allocations, the collector walked them again and again for
    # nothing, a tenth of a command's start-up. Then they are frozen (never walked again,
    # as the gc module's documentation advises for long-lived objects) and the collector
    # is on for the command itself.
    gc.disable()
    from django.core.management import BaseCommand, ManagementUtility

    class Utility(ManagementUtility):
        def fetch_command(self, subcommand: str) -> BaseCommand:
            # Called once the set-up is done (or failed), before the command runs.
            gc.freeze()
            gc.enable()
            return super().fetch_command(subcommand)

    try:
        Utility(sys.argv).execute()
    finally:
        # The process ends here. Without this, the interpreter's shutdown runs the collector
        # over every object Django made at start-up (models, URL patterns, the connection's
        # wrappers), only to free memory the system takes back anyway: a sixth of a
        # 10,000-message import's CPU (bench/ingest.py --end-to-end). Frozen, they are left
        # alone; atexit handlers still run, standard streams are still flushed, and what no
        # cycle holds is still freed as the modules are cleared.
        gc.freeze()


if __name__ == "__main__":
    main()
