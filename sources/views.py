import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sources.services import ingest_update
from sources.telegram import load_update
from tasktracker.exceptions import DomainError

logger = logging.getLogger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
# Telegram's updates are small; a larger body is not one of them.
MAX_UPDATE_BYTES = 1024 * 1024


@csrf_exempt
@require_POST
def telegram_webhook(request: HttpRequest) -> JsonResponse:
    """The Bot API webhook. Answers fast: 200 once the update is stored (or was before, or
    is of a kind that is skipped), so Telegram stops retrying; 403 without the right
    secret; 400, logged as a warning with the reason, for any body that is no update
    (Telegram shows the last one in getWebhookInfo). Never a 5xx for what a body holds."""
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    given = request.headers.get(SECRET_HEADER, "")
    # Constant-time comparison; without a configured secret no caller is trusted.
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return JsonResponse({"detail": "Wrong or missing secret token."}, status=403)
    if len(request.body) > MAX_UPDATE_BYTES:
        return _refused(f"The body is over {MAX_UPDATE_BYTES} bytes.", code="too_large")
    try:
        data = load_update(request.body)
    except ValueError as exc:
        return _refused(f"The body is no update's JSON: {exc}", code="invalid_json")
    try:
        outcome = ingest_update(data=data)
    except DomainError as exc:
        return _refused(exc.message, code=exc.code)
    logger.info("Telegram update %s: %s", outcome.kind, outcome.result)
    return JsonResponse({"ok": True, "result": outcome.result, "kind": outcome.kind})


def _refused(detail: str, *, code: str) -> JsonResponse:
    logger.warning("Telegram update refused (%s): %s", code, detail)
    return JsonResponse({"detail": detail, "code": code}, status=400)
