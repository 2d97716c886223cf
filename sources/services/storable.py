"""Strings as both databases store them alike.

PostgreSQL refuses a NUL character in text and in jsonb, and a lone UTF-16 surrogate
anywhere; SQLite keeps both. So every ingestion path drops NULs from a message's text and
names and from its raw copy (`upsert_messages` and `get_or_create_chat` do it, which the
export import, the webhook, polling and the API all end in), and a message reads the same
on either database.

Lone surrogates come only from Python's json module, which reads `"\\ud800"` into one:
yajl, which reads exports, replaces them with "?", and DRF refuses them. So only the Bot
API path, which reads updates with Python's json, replaces them (`clean_json`, in
`ingest_update`), and the export import's hot path pays for a NUL search alone.
"""

from typing import Any

import orjson

_NUL = "\x00"
# How orjson writes a NUL character; it writes no other character this way.
_DUMPED_NUL = b"\\u0000"


def strip_nul(text: str) -> str:
    return text.replace(_NUL, "") if _NUL in text else text


def clean_text(text: str) -> str:
    """`text` without NULs, its lone surrogates replaced by U+FFFD (a pair of them joined
    into the character they encode)."""
    text = strip_nul(text)
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_json(value: Any) -> Any:
    """A copy of JSON-like `value` with `clean_text` applied to every string, keys
    included. Other values are kept as they are."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    return value


def storable_json(value: Any) -> Any:
    """`value` itself when it holds no NUL (the common case, told by one orjson pass),
    else `clean_json(value)`. For what orjson refuses (a lone surrogate, an int beyond 64
    bits) the copy is made too."""
    try:
        dumped = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return clean_json(value)
    return clean_json(value) if has_dumped_nul(dumped) else value


def has_dumped_nul(dumped: bytes) -> bool:
    """Whether orjson's JSON `dumped` holds a NUL character."""
    # `find`, not `in`: half the time on bytes (CPython 3.11), and this runs per message.
    return dumped.find(_DUMPED_NUL) >= 0
