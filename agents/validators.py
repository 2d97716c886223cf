"""Field validators shared by the admin's forms and the API's serializers."""

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError


def validate_llm_base_url(value: str) -> None:
    """An http(s) URL whose host is in LLM_ALLOWED_HOSTS, so the server cannot be aimed
    at internal services by whoever edits a provider."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("The base URL must be an http:// or https:// URL.", code="scheme")
    host = parts.hostname.lower()
    allowed = [h.lower().strip("[]") for h in settings.LLM_ALLOWED_HOSTS]
    if "*" not in allowed and host not in allowed:
        raise ValidationError(
            f"The host {host} is not in LLM_ALLOWED_HOSTS ({', '.join(settings.LLM_ALLOWED_HOSTS)}).",
            code="host_not_allowed",
        )


def validate_json_schema(value: Any) -> None:
    """A JSON Schema (Draft 2020-12) describing an object answer."""
    if not isinstance(value, dict):
        raise ValidationError("The schema must be a JSON object.", code="schema_type")
    # jsonschema where a schema is checked, not in every process that loads the models.
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the schema"
        raise ValidationError(
            f"Not a valid JSON Schema at {where}: {exc.message}", code="invalid_schema"
        ) from exc
    if value.get("type") != "object":
        raise ValidationError('The answer schema must have "type": "object".', code="schema_not_object")
