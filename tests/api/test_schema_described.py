"""The served OpenAPI schema describes every operation and every field, so that an
integrator reading /api/docs/ never meets a bare name."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HTTP_METHODS = {"get", "put", "patch", "post", "delete", "head", "options", "trace"}


@pytest.fixture
def schema() -> dict[str, Any]:
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    response = client.get(reverse("api-schema"), {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _own_text(description: str | None) -> str:
    # drf-spectacular appends an enum's choices ("\n\n* `a` - A") to a field's description;
    # the choices alone do not say what the field means.
    return (description or "").split("\n\n* `", 1)[0].strip()


def _properties(name: str, node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of a schema, nested objects and array items included, by dotted path."""
    if isinstance(node, dict):
        for field, spec in (node.get("properties") or {}).items():
            yield f"{name}.{field}", spec
            yield from _properties(f"{name}.{field}", spec)
        for key in ("items", "additionalProperties"):
            yield from _properties(f"{name}[]", node.get(key))
        for key in ("allOf", "oneOf", "anyOf"):
            for part in node.get(key) or []:
                yield from _properties(name, part)


def test_every_field_of_every_component_is_described(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    undescribed = [
        path
        for name, component in components.items()
        for path, spec in _properties(name, component)
        if not _own_text(spec.get("description"))
    ]

    assert len(components) > 40
    assert undescribed == [], f"{len(undescribed)} fields have no description: {undescribed}"


def test_every_operation_is_described(schema: dict[str, Any]) -> None:
    operations = [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]
    undescribed = [
        f"{method} {path}"
        for method, path, operation in operations
        if not (operation.get("summary") or "").strip() or not _own_text(operation.get("description"))
    ]

    assert len(operations) > 40
    assert undescribed == [], f"{len(undescribed)} operations lack a summary or a description: {undescribed}"
