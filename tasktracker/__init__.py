"""The project package. Its Celery app is loaded on first use, not on import.

Every process imports this package first (its settings live here), and Celery with kombu is a
tenth of a second of imports: a management command that queues nothing (the export import)
should not pay it. Nothing is lost: the worker and beat find the app through `-A tasktracker`
(Celery looks for `tasktracker.celery.app` when the package has no `app`), and every place
that queues work imports `tasktracker.celery` itself (the services' `send_task`, the tests),
which makes the app the current one before any `shared_task` proxy resolves.
"""

from typing import Any

__all__ = ("celery_app",)


def __getattr__(name: str) -> Any:
    # PEP 562: `from tasktracker import celery_app` keeps working, and imports the app then.
    if name == "celery_app":
        from .celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
