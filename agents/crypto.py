"""Encryption of provider API keys at rest (Fernet from `cryptography`).

FIELD_ENCRYPTION_KEY may list several comma-separated keys: the first encrypts, all
decrypt, so keys can be rotated. Unset, a key is derived from SECRET_KEY.

`cryptography` is imported on the first encryption or decryption, not with the models that
use this module: its Rust bindings are a tenth of Django's start-up, paid by every command
and worker, most of which never read a key (the export import, the webhook, the pipeline
until it calls a provider).
"""

import base64
import hashlib
from functools import cache
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet


@cache
def _fernet() -> "MultiFernet":
    from cryptography.fernet import Fernet, MultiFernet

    raw = [k.strip() for k in settings.FIELD_ENCRYPTION_KEY.split(",") if k.strip()]
    if not raw:
        derived = hashlib.sha256(f"tasktracker-keys:{settings.SECRET_KEY}".encode()).digest()
        raw = [base64.urlsafe_b64encode(derived).decode()]
    try:
        return MultiFernet([Fernet(k) for k in raw])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must be Fernet keys (urlsafe base64 of 32 bytes)."
        ) from exc


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    fernet = _fernet()
    from cryptography.fernet import InvalidToken  # imported by `_fernet` already

    try:
        return fernet.decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored API key cannot be decrypted: FIELD_ENCRYPTION_KEY changed without rotation."
        ) from exc
