"""Celery tasks of the projects app: webhook deliveries, thin over `projects.webhooks`."""

from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task, shared_task
from django.conf import settings

from projects import webhooks


class WebhookDeliveryTask(Task):
    """The delivery task's class: it fails the delivery when the task fails for good."""

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Celery gave up: the retries are spent (it raises the last `DeliveryFailed` once
        `max_retries` is reached), or an error no retry covers was raised. The delivery is
        failed, with the reason of its last attempt, unless a later attempt holds it."""
        delivery_id, first_attempt = _arguments(*args, **kwargs)
        webhooks.give_up(delivery_id=delivery_id, attempt=first_attempt + self.request.retries)


def _arguments(delivery_id: int, first_attempt: int = 1) -> tuple[int, int]:
    return delivery_id, first_attempt


@shared_task(
    bind=True,
    base=WebhookDeliveryTask,
    name=webhooks.DELIVER_TASK,
    autoretry_for=(webhooks.DeliveryFailed,),
    # Expected: logged without a traceback when the last attempt fails.
    throws=(webhooks.DeliveryFailed,),
    max_retries=settings.WEBHOOK_MAX_ATTEMPTS - 1,
    retry_backoff=settings.WEBHOOK_RETRY_BACKOFF_SECONDS,
    retry_backoff_max=600,
    retry_jitter=True,
)
def deliver_webhook_task(self: Task, delivery_id: int, first_attempt: int = 1) -> str:
    """POST a webhook delivery: attempt `first_attempt` of it, then, as long as an attempt
    raises `DeliveryFailed`, one more on each Celery retry, after a random wait of up to
    WEBHOOK_RETRY_BACKOFF_SECONDS, twice that, and so on (at most 10 minutes), up to
    WEBHOOK_MAX_ATTEMPTS attempts by this task. Each attempt is claimed before it is sent
    (`webhooks.claim_delivery`): a duplicate of the task, or a stale one, sends nothing."""
    delivery = webhooks.deliver(delivery_id=delivery_id, attempt=first_attempt + self.request.retries)
    return delivery.status if delivery is not None else "deleted"
