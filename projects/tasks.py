from celery import Task, shared_task

from projects import webhooks

# Attempts of one delivery: the first and five retries, over about five minutes.
MAX_WEBHOOK_ATTEMPTS = 6


@shared_task(bind=True, name="projects.deliver_webhook", max_retries=MAX_WEBHOOK_ATTEMPTS - 1)
def deliver_webhook_task(self: Task, delivery_id: int) -> str:
    """POST a webhook delivery; on failure retry with exponential backoff (10 s, 20 s, 40 s…)."""
    try:
        return webhooks.deliver(delivery_id=delivery_id).status
    except webhooks.DeliveryFailed as exc:
        if self.request.retries >= self.max_retries:
            webhooks.give_up(delivery_id=delivery_id)
            return "failed"
        raise self.retry(exc=exc, countdown=10 * 2**self.request.retries) from exc
