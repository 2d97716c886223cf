"""Shared API pieces: one error format for every endpoint, id filters and fields that
answer 400, not 500, for a number no database column can hold, and what the schema says of
the fields and pages every endpoint shares."""

from typing import Any

from django_filters import rest_framework as filters
from rest_framework import pagination, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tasktracker.exceptions import DomainError

# The largest primary key PostgreSQL's bigint and SQLite's INTEGER hold. A larger number in a
# query would raise OverflowError (SQLite) or DataError (PostgreSQL) in the database driver.
MAX_ID = 2**63 - 1


class IdFilter(filters.NumberFilter):
    """Filters on a row's id: a whole number from 1 to `MAX_ID`, else a 400 naming the field."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        kwargs.setdefault("decimal_places", 0)
        super().__init__(*args, **kwargs)


class IdField(serializers.IntegerField):
    """A row's id in a request body: a whole number from 1 to `MAX_ID`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(**kwargs)


# The fields most models share, described once for every serializer that lists them.
COMMON_HELP_TEXTS = {
    "id": "Tasktracker's id of the object.",
    "created_at": "When Tasktracker stored the object (ISO 8601 with offset).",
    "updated_at": "When the object last changed in Tasktracker (ISO 8601 with offset).",
}


def help_texts(**texts: str) -> dict[str, dict[str, str]]:
    """A ModelSerializer's `extra_kwargs` that describes its model fields in the schema:
    `COMMON_HELP_TEXTS`, then `texts` (which win). Fields the serializer declares itself
    take no `extra_kwargs`: give them `help_text=` where they are declared."""
    return {name: {"help_text": text} for name, text in {**COMMON_HELP_TEXTS, **texts}.items()}


class DescribedPageNumberPagination(pagination.PageNumberPagination):
    """DRF's page numbers (`?page=2`), with the fields of a page described in the schema."""

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        page = super().get_paginated_response_schema(schema)
        descriptions = {
            "count": "How many items all the pages hold together.",
            "next": "URL of the next page; null on the last page.",
            "previous": "URL of the previous page; null on the first page.",
            "results": f"This page's items, at most {self.page_size}.",
        }
        for name, description in descriptions.items():
            page["properties"][name]["description"] = description
        return page


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response({"detail": exc.message, "code": exc.code}, status=exc.status)
    return drf_exception_handler(exc, context)
