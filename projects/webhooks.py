"""Outgoing webhooks: signed JSON POSTs to integrations when a proposal is approved or a
task changes status. Deliveries are rows, sent by a Celery task after commit, retried with
exponential backoff, and logged with their outcome.

The body is signed with HMAC-SHA256 of the endpoint's secret over the raw body:
`X-Tasktracker-Signature: sha256=<hex>`; receivers compare it in constant time.
"""

import hashlib
import hmac
import json
import logging
from typing import Any

import httpx
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from projects import tasks
from projects.models import Project, WebhookDelivery

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Tasktracker-Signature"
TIMEOUT_SECONDS = 10.0


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(delivery: WebhookDelivery) -> bytes:
    envelope = {
        "id": delivery.pk,
        "event": delivery.event,
        "created_at": delivery.created_at,
        "data": delivery.payload,
    }
    return json.dumps(envelope, cls=DjangoJSONEncoder, separators=(",", ":")).encode()


def emit_webhook(*, project: Project, event: str, payload: dict[str, Any]) -> list[WebhookDelivery]:
    """Queue `event` for every active endpoint of the project that wants it; sent after commit."""
    deliveries = [
        WebhookDelivery.objects.create(endpoint=endpoint, event=event, payload=payload)
        for endpoint in project.webhooks.filter(is_active=True)
        if endpoint.wants(event)
    ]
    for delivery in deliveries:
        transaction.on_commit(lambda pk=delivery.pk: tasks.deliver_webhook_task.delay(pk))
    return deliveries


def deliver(*, delivery_id: int) -> WebhookDelivery:
    """POST one delivery. Raises `DeliveryFailed` when it should be retried."""
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    if delivery.status != WebhookDelivery.Status.PENDING:
        return delivery
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=F("attempts") + 1)
    body = body_of(delivery)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(delivery.endpoint.secret, body),
        "X-Tasktracker-Event": delivery.event,
        "X-Tasktracker-Delivery": str(delivery.pk),
    }
    try:
        response = httpx.post(delivery.endpoint.url, content=body, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        _failed_attempt(delivery, None, f"{exc.__class__.__name__}: {exc}")
        raise DeliveryFailed(str(exc)) from exc
    if 200 <= response.status_code < 300:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.DELIVERED,
            response_status=response.status_code,
            delivered_at=timezone.now(),
            error="",
        )
    else:
        _failed_attempt(delivery, response.status_code, response.text[:500])
        raise DeliveryFailed(f"{delivery.endpoint.url} answered {response.status_code}")
    delivery.refresh_from_db()
    return delivery


def give_up(*, delivery_id: int) -> None:
    WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING).update(
        status=WebhookDelivery.Status.FAILED
    )


def _failed_attempt(delivery: WebhookDelivery, status: int | None, error: str) -> None:
    logger.warning("Webhook delivery %s to %s failed: %s", delivery.pk, delivery.endpoint.url, error)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(response_status=status, error=error)


class DeliveryFailed(Exception):
    pass


def redeliver(*, delivery_ids: list[int]) -> int:
    """Send deliveries again (after a receiver was fixed): pending again, queued after commit."""
    with transaction.atomic():
        count = WebhookDelivery.objects.filter(pk__in=delivery_ids).update(
            status=WebhookDelivery.Status.PENDING
        )
        for pk in delivery_ids:
            transaction.on_commit(lambda pk=pk: tasks.deliver_webhook_task.delay(pk))
    return count
