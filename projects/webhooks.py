"""Outgoing webhooks: signed JSON POSTs to integrations when a proposal is approved or a
task changes status, and the endpoints that receive them.

Endpoints are written by `create_webhook_endpoint`, `update_webhook_endpoint` and
`delete_webhook_endpoint`, from the API and the admin alike (`check_webhook_endpoint` is
their rule). Deliveries are rows, each sent by the Celery task `projects.deliver_webhook`
after commit. Every attempt of a delivery is numbered and claimed before anything is sent
(`claim_delivery`), so a duplicate of a task sends nothing; a failed attempt is retried by
Celery with backoff (`projects.tasks`), and each row keeps the outcome of its last attempt.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from projects import access
from projects.models import Project, WebhookDelivery, WebhookEndpoint
from tasktracker.celery import app as celery_app
from tasktracker.exceptions import DomainError

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Tasktracker-Signature"
TIMEOUT_SECONDS = 10.0
ALLOWED_HOSTS_HINT = "Webhooks go to public addresses only, or to hosts in WEBHOOK_ALLOWED_HOSTS."
# DNS64 writes an IPv4 address into this prefix; the NAT64 gateway then reaches that address.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
# The delivery task, queued by its name: `projects.tasks` imports this module.
DELIVER_TASK = "projects.deliver_webhook"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Status = WebhookDelivery.Status


# Endpoints


def clean_webhook_events(value: Any) -> list[str]:
    """The events an endpoint asks for, once each, in the order of `WebhookEndpoint.Event`
    (an empty list asks for all); `DomainError` with code `invalid_events` for anything else."""
    known = WebhookEndpoint.Event.values
    if not isinstance(value, list | tuple) or not all(isinstance(event, str) for event in value):
        raise DomainError("Events must be a list of event names.", code="invalid_events")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise DomainError(
            f"Not events: {', '.join(unknown)}. The events are {', '.join(known)}.", code="invalid_events"
        )
    return [event for event in known if event in value]


def _clean_secret(value: Any) -> str:
    max_length = WebhookEndpoint._meta.get_field("secret").max_length
    secret = value.strip() if isinstance(value, str) else ""
    if not secret or (max_length is not None and len(secret) > max_length):
        raise DomainError(f"The secret is 1 to {max_length} characters.", code="invalid_secret")
    return secret


def _forbidden() -> DomainError:
    return DomainError(
        "Only the project's leads and staff can change its webhooks.", code="forbidden", status=403
    )


def check_webhook_endpoint(
    *,
    user: User,
    project: Project,
    url: str,
    events: Any,
    endpoint: WebhookEndpoint | None = None,
) -> list[str]:
    """Check an endpoint about to be saved, a new one or `endpoint` changed, and return its
    events as they are stored (`clean_webhook_events`). Writes nothing.

    Raises `DomainError`: `forbidden` (403) unless the user leads the project (and the one the
    endpoint moves from) or is staff; `invalid_events`; `invalid_url` (`check_webhook_url`),
    asked of a new or changed URL only, and only once the user was let through, so that no
    one else can ask the server's DNS what an internal name points at. The services below
    apply it; the admin's form asks it to show its errors next to their fields."""
    if not access.can(user, project, access.Action.CONFIGURE) or (
        endpoint is not None and not access.can(user, endpoint.project_id, access.Action.CONFIGURE)
    ):
        raise _forbidden()
    cleaned = clean_webhook_events(events)
    if endpoint is None or url != endpoint.url:
        check_webhook_url(url)
    return cleaned


@transaction.atomic
def create_webhook_endpoint(
    *,
    user: User,
    project: Project,
    url: str,
    events: Sequence[str] = (),
    is_active: bool = True,
    secret: str | None = None,
) -> WebhookEndpoint:
    """Register an endpoint of `project` (`check_webhook_endpoint`); its secret is made up
    unless given."""
    endpoint = WebhookEndpoint(
        project=project,
        url=url,
        events=check_webhook_endpoint(user=user, project=project, url=url, events=events),
        is_active=is_active,
    )
    if secret is not None:
        endpoint.secret = _clean_secret(secret)
    endpoint.save()
    logger.info("%s added webhook %s of %s: %s", user, endpoint.pk, project, url)
    return endpoint


@transaction.atomic
def update_webhook_endpoint(
    *,
    endpoint: WebhookEndpoint,
    user: User,
    project: Project | None = None,
    url: str | None = None,
    events: Sequence[str] | None = None,
    is_active: bool | None = None,
    secret: str | None = None,
) -> WebhookEndpoint:
    """Change an endpoint (`check_webhook_endpoint`); a field given as None keeps its value.
    Locks the endpoint's row. Deliveries queued before keep going to the endpoint as it is
    when each attempt is made."""
    stored = (
        WebhookEndpoint.objects.select_for_update(of=("self",)).select_related("project").get(pk=endpoint.pk)
    )
    changes: dict[str, Any] = {
        "project": project if project is not None else stored.project,
        "url": url if url is not None else stored.url,
    }
    changes["events"] = check_webhook_endpoint(
        user=user,
        project=changes["project"],
        url=changes["url"],
        events=events if events is not None else stored.events,
        endpoint=stored,
    )
    changes["is_active"] = is_active if is_active is not None else stored.is_active
    changes["secret"] = _clean_secret(secret) if secret is not None else stored.secret
    changed = [name for name, value in changes.items() if getattr(stored, name) != value]
    for name in changed:
        setattr(stored, name, changes[name])
    if changed:
        stored.save(update_fields=changed)
        logger.info("%s changed %s of webhook %s", user, ", ".join(changed), stored.pk)
    return stored


@transaction.atomic
def delete_webhook_endpoint(*, endpoint: WebhookEndpoint, user: User) -> None:
    """Delete an endpoint and its deliveries: no event is sent to it any more, and an attempt
    not yet claimed finds its delivery gone and sends nothing."""
    if not access.can(user, endpoint.project_id, access.Action.CONFIGURE):
        raise _forbidden()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()
    logger.info("%s deleted webhook %s: %s", user, endpoint.pk, endpoint.url)


# Deliveries

# The moves of a delivery's status, made by `_move` alone: a pending delivery is delivered,
# or fails (at once, or when its task gives up); a delivered or failed one is sent again.
TRANSITIONS: dict[str, frozenset[str]] = {
    Status.PENDING: frozenset({Status.DELIVERED, Status.FAILED}),
    Status.DELIVERED: frozenset({Status.PENDING}),
    Status.FAILED: frozenset({Status.PENDING}),
}


def _move(deliveries: QuerySet[WebhookDelivery], to: str, **fields: Any) -> int:
    """Move those of `deliveries` whose status may become `to`; return how many moved."""
    sources = [status for status, targets in TRANSITIONS.items() if to in targets]
    return deliveries.filter(status__in=sources).update(status=to, **fields)


def _queue(delivery_id: int, attempt: int) -> None:
    """Queue attempt `attempt` of a delivery (and, through Celery's retries, the next ones)
    once the transaction commits."""
    transaction.on_commit(lambda: celery_app.send_task(DELIVER_TASK, args=[delivery_id, attempt]))


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
        _queue(delivery.pk, 1)
    return deliveries


def claim_delivery(*, delivery_id: int, attempt: int) -> WebhookDelivery | None:
    """Take attempt number `attempt` (1 for the first) of a pending delivery; None when it is
    not this attempt's to make: the delivery is delivered, failed or gone, or the attempt was
    claimed already, by a duplicate of the same task (a message delivered twice, a delivery
    sent again while the task queued first still waited).

    The claim is one conditional UPDATE that counts the attempt only when the row has made
    `attempt - 1`, and tests the row's own columns only: of two deliveries of one attempt,
    however close, the database lets one through (PostgreSQL re-checks the WHERE on the row's
    newest version), and only that one sends. Whoever queues the task names the attempt it
    makes (`emit_webhook` the first, `redeliver` the next), and each Celery retry the one
    after."""
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=Status.PENDING, attempts=attempt - 1
    ).update(attempts=attempt)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()


def _held(delivery: WebhookDelivery) -> QuerySet[WebhookDelivery]:
    """The delivery's row while the attempt claimed (`delivery.attempts`) is its last."""
    return WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING, attempts=delivery.attempts)


def deliver(*, delivery_id: int, attempt: int) -> WebhookDelivery | None:
    """Make attempt number `attempt` of a delivery: claim it (`claim_delivery`; a claim that
    fails sends nothing), then POST it to the address its endpoint's host resolves to now,
    when the rule lets it. Returns the delivery as it is after, None once it is deleted.

    Raises `DeliveryFailed` when the attempt should be retried (an error answer, a timeout, a
    connection or DNS failure): the task's Celery retry makes attempt `attempt + 1`. A refused
    URL or a redirect fails the delivery at once: trying again would get the same answer; it
    can be sent again once the URL is fixed (`redeliver`)."""
    delivery = claim_delivery(delivery_id=delivery_id, attempt=attempt)
    if delivery is None:
        return WebhookDelivery.objects.filter(pk=delivery_id).first()
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
        _move(
            _held(delivery), Status.DELIVERED, response_status=status, delivered_at=timezone.now(), error=""
        )
    elif 300 <= status < 400:
        return _fail(delivery, status, f"HTTP {status}: redirects are not followed.")
    else:
        _failed_attempt(delivery, status, f"HTTP {status}")
        raise DeliveryFailed(f"{delivery.endpoint.url} answered {status}")
    return WebhookDelivery.objects.filter(pk=delivery_id).first()


def give_up(*, delivery_id: int, attempt: int) -> None:
    """Fail a pending delivery whose task gave up at attempt `attempt` (its retries spent, or
    an error no retry covers); it keeps the reason of its last attempt and can be sent again
    (`redeliver`). A delivery that a later attempt holds is left to it."""
    _move(WebhookDelivery.objects.filter(pk=delivery_id, attempts__lte=attempt), Status.FAILED)


def _failed_attempt(delivery: WebhookDelivery, status: int | None, error: str) -> None:
    logger.warning("Webhook delivery %s to %s failed: %s", delivery.pk, delivery.endpoint.url, error)
    _held(delivery).update(response_status=status, error=error)


def _fail(delivery: WebhookDelivery, status: int | None, error: str) -> WebhookDelivery | None:
    """Fail a delivery at once, with no retry."""
    logger.warning("Webhook delivery %s to %s failed: %s", delivery.pk, delivery.endpoint.url, error)
    _move(_held(delivery), Status.FAILED, response_status=status, error=error)
    return WebhookDelivery.objects.filter(pk=delivery.pk).first()


class DeliveryFailed(Exception):
    """An attempt failed in a way the next one may not (an error answer, a timeout, no
    connection): the delivery task retries it (Celery's `autoretry_for`)."""


@transaction.atomic
def redeliver(*, delivery_ids: Iterable[int]) -> int:
    """Send deliveries again (after a receiver was fixed) and return how many were queued:
    each delivered or failed one becomes pending, and one still pending that was never
    attempted (its task may have been lost) is queued again. Locks their rows.

    A pending delivery that was attempted is left to its task, which is sending it or will
    retry it: another task could send it at the same time. The task queued here makes the
    delivery's next attempt, so of it and any task queued before for that attempt (a never
    attempted delivery sent again) only the first to claim it sends."""
    resendable = ~Q(status=Status.PENDING) | Q(attempts=0)
    rows = list(
        WebhookDelivery.objects.select_for_update()
        .filter(resendable, pk__in=list(delivery_ids))
        .values_list("pk", "attempts")
    )
    _move(WebhookDelivery.objects.filter(pk__in=[pk for pk, _ in rows]), Status.PENDING)
    for pk, attempts in rows:
        _queue(pk, attempts + 1)
    return len(rows)


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
