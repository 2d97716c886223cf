"""Outgoing webhooks: signed JSON POSTs to integrations when a proposal is approved or a
task changes status. Deliveries are rows, sent by a Celery task after commit, retried with
exponential backoff, and logged with their outcome.

The body is signed with HMAC-SHA256 of the endpoint's secret over the raw body:
`X-Tasktracker-Signature: sha256=<hex>`; receivers compare it in constant time.

Whoever leads a project chooses where the server sends requests, so an endpoint must be an
http(s) URL whose host resolves to public addresses only, unless the host is in
WEBHOOK_ALLOWED_HOSTS (a receiver on the internal network): otherwise a lead could aim the
server at itself, its network or a cloud metadata service. The rule is asked when an endpoint
is saved, to say so early, and again at every attempt, on the addresses resolved then, one of
which the attempt connects to: a name that resolved to a public address when saved and to
127.0.0.1 since (DNS rebinding) is refused, and the name is never resolved a second time
between the check and the connection. Redirects are not followed, and the log keeps a short
reason ("HTTP 500", "Timed out", "Refused: ..."), never what the receiver answered.
"""

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from projects import tasks
from projects.models import Project, WebhookDelivery
from tasktracker.exceptions import DomainError

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Tasktracker-Signature"
TIMEOUT_SECONDS = 10.0
ALLOWED_HOSTS_HINT = "Webhooks go to public addresses only, or to hosts in WEBHOOK_ALLOWED_HOSTS."
# DNS64 writes an IPv4 address into this prefix; the NAT64 gateway then reaches that address.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    """POST one delivery to the address its endpoint's host resolves to now, when the rule
    lets it. Raises `DeliveryFailed` when it should be retried (an error answer, a timeout, a
    connection or DNS failure). A refused URL or a redirect fails the delivery at once:
    trying again would get the same answer; it can be sent again once the URL is fixed."""
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
        target = resolve_target(delivery.endpoint.url)
    except DomainError as exc:
        return _fail(delivery, None, f"Refused: {exc.message}")
    except Unresolvable as exc:
        _failed_attempt(delivery, None, f"Could not resolve {exc}.")
        raise DeliveryFailed(f"Could not resolve {exc}") from exc
    try:
        status = _post(target, body, headers)
    except httpx.TimeoutException as exc:
        _failed_attempt(delivery, None, "Timed out")
        raise DeliveryFailed("Timed out") from exc
    except httpx.ConnectError as exc:
        # The system's words (refused, unreachable, a certificate that does not verify).
        _failed_attempt(delivery, None, f"Could not connect: {exc}"[:200])
        raise DeliveryFailed(str(exc)) from exc
    except httpx.HTTPError as exc:
        # Not its message: a protocol error may quote what the receiver sent.
        _failed_attempt(delivery, None, f"Failed: {exc.__class__.__name__}")
        raise DeliveryFailed(exc.__class__.__name__) from exc
    if 200 <= status < 300:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.DELIVERED,
            response_status=status,
            delivered_at=timezone.now(),
            error="",
        )
    elif 300 <= status < 400:
        return _fail(delivery, status, f"HTTP {status}: redirects are not followed.")
    else:
        _failed_attempt(delivery, status, f"HTTP {status}")
        raise DeliveryFailed(f"{delivery.endpoint.url} answered {status}")
    delivery.refresh_from_db()
    return delivery


def give_up(*, delivery_id: int) -> None:
    WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING).update(
        status=WebhookDelivery.Status.FAILED
    )


def _failed_attempt(delivery: WebhookDelivery, status: int | None, error: str) -> None:
    logger.warning("Webhook delivery %s to %s failed: %s", delivery.pk, delivery.endpoint.url, error)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(response_status=status, error=error)


def _fail(delivery: WebhookDelivery, status: int | None, error: str) -> WebhookDelivery:
    """Fail a delivery at once, with no retry."""
    logger.warning("Webhook delivery %s to %s failed: %s", delivery.pk, delivery.endpoint.url, error)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.FAILED, response_status=status, error=error
    )
    delivery.refresh_from_db()
    return delivery


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


# Where deliveries may go


class Unresolvable(Exception):
    """The host has no address now. Not a refusal: DNS may answer later."""


@dataclass(frozen=True)
class Target:
    """An endpoint's URL and its host's addresses as resolved once, every one checked."""

    url: httpx.URL
    addresses: list[Address]


def check_webhook_url(url: str) -> None:
    """Refuse (`DomainError`, code `invalid_url`) a URL that deliveries would refuse, when an
    endpoint is saved. A name that does not resolve now is let through: every delivery
    checks again, and a DNS failure should not refuse a good URL."""
    try:
        resolve_target(url)
    except Unresolvable:
        return
    except DomainError as exc:
        raise DomainError(f"{exc.message} {ALLOWED_HOSTS_HINT}", code=exc.code) from exc


def resolve_target(url: str) -> Target:
    """Resolve the URL's host once and check every address it has. Raises `DomainError` when
    it must not be posted to, `Unresolvable` when the host has no address now.

    A refusal of a name does not say which address it resolved to: the log and the field
    error would otherwise answer DNS questions about the internal network."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise DomainError("Not a valid URL.", code="invalid_url") from exc
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise DomainError("Only http:// and https:// URLs can receive webhooks.", code="invalid_url")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    allowed = host in _allowed_hosts()
    # Names under localhost are loopback whatever a resolver says (RFC 6761).
    if not allowed and (host == "localhost" or host.endswith(".localhost")):
        raise DomainError(f"{host} is not a public address.", code="invalid_url")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise Unresolvable(host) from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise Unresolvable(host)
    refused = [address for address in addresses if not allowed and not is_public(address)]
    if refused:
        if _is_ip_literal(host):
            raise DomainError(f"{refused[0]} is not a public address.", code="invalid_url")
        raise DomainError(f"{host} resolves to a non-public address.", code="invalid_url")
    return Target(url=parsed, addresses=addresses)


def is_public(address: Address) -> bool:
    """A globally reachable unicast address. `is_global` alone is not enough: it is true of
    multicast and of some reserved IPv6 ranges, and an IPv6 address may carry an IPv4 one
    that the network then reaches (NAT64, 6to4)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_PREFIX:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        embedded = address.ipv4_mapped or address.sixtofour
        if address.is_site_local or (embedded is not None and not is_public(embedded)):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def _allowed_hosts() -> set[str]:
    return {host.strip().lower().strip("[]").rstrip(".") for host in settings.WEBHOOK_ALLOWED_HOSTS}


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _post(target: Target, body: bytes, headers: dict[str, str]) -> int:
    """POST to the first checked address, never to what the name resolves to by then, with
    the name in the Host header and in TLS (SNI and the certificate check). The status of
    the answer is all that is kept: its body is not even read.

    No proxy from the environment: a proxy would resolve the name again itself."""
    url = target.url
    with (
        httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client,
        client.stream(
            "POST",
            url.copy_with(host=str(target.addresses[0])),
            content=body,
            headers={**headers, "Host": url.netloc.decode("ascii")},
            extensions={"sni_hostname": url.raw_host.decode("ascii")},
        ) as response,
    ):
        return response.status_code
