import hmac
import json
import logging

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sources.services import ingest_update
from tasktracker.exceptions import DomainError

logger = logging.getLogger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
# Telegram's updates are small; a larger body is not one of them.
MAX_UPDATE_BYTES = 1024 * 1024


@csrf_exempt
@require_POST
def telegram_webhook(request: HttpRequest) -> JsonResponse:
    """The Bot API webhook. Answers fast: 200 once the update is stored (or was before),
    so Telegram stops retrying; 403 without the right secret; 400 for what is no update."""
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    given = request.headers.get(SECRET_HEADER, "")
    # Constant-time comparison; without a configured secret no caller is trusted.
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return JsonResponse({"detail": "Wrong or missing secret token."}, status=403)
    if len(request.body) > MAX_UPDATE_BYTES:
        return JsonResponse({"detail": "The update is too large."}, status=413)
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return JsonResponse({"detail": "The body is not JSON."}, status=400)
    try:
        outcome = ingest_update(data=data)
    except DomainError as exc:
        return JsonResponse({"detail": exc.message, "code": exc.code}, status=400)
    logger.info("Telegram update %s: %s", outcome.kind, outcome.result)
    return JsonResponse({"ok": True, "result": outcome.result, "kind": outcome.kind})
