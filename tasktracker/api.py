"""Shared API pieces: one error format for every endpoint, and id filters and fields that
answer 400, not 500, for a number no database column can hold."""

from typing import Any

from django_filters import rest_framework as filters
from rest_framework import serializers
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


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response({"detail": exc.message, "code": exc.code}, status=exc.status)
    return drf_exception_handler(exc, context)
