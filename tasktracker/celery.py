"""The Celery application. Its configuration is the CELERY_* part of settings."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasktracker.settings")

app = Celery("tasktracker")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="tasktracker.ping")
def ping() -> str:
    """Answer "pong": used by /healthz and the tests to prove a worker is consuming."""
    return "pong"
