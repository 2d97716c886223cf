"""How the messages API searches and pages a table of millions of messages: `?search=` by
the word index (`sources.selectors.search_messages`), and page numbers whose count stops
at `COUNT_CAP` rows instead of counting every message that matches on every page."""

from collections.abc import Sequence
from functools import partial
from typing import Any, cast

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.utils.functional import cached_property
from rest_framework.filters import SearchFilter
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from sources.selectors import search_messages
from tasktracker.api import MAX_ID, DescribedPageNumberPagination

# How many rows a page counts at least (more for a page beyond them). Counting every match
# of a common word (30,000 of a million messages) took most of a search's second; its
# first 1,000 take a few milliseconds (10,000: 20 to 50 ms, most of the 50 ms a search may
# take, bench/search.py) and still tell a reader "many": twenty pages of 50.
COUNT_CAP = 1_000

SEARCH_DESCRIPTION = (
    "Words the text holds, any case, each matched from its start: `deploy` finds "
    '"Deployed" but `ploy` does not find "redeploy". Every word must be there; quote '
    'several (`"login page"`) to find them one after the other. Punctuation separates words '
    "and is not searched: a search of punctuation alone finds nothing. Words are not stemmed "
    "or dropped in any language (PostgreSQL's `simple` configuration): a chat can feed "
    "projects of several languages and a message has none of its own."
)


class MessageSearchFilter(SearchFilter):
    """DRF's `?search=` (its splitting of terms: spaces and commas, quotes keep a phrase),
    answered by the word index of the messages instead of `icontains` on each term."""

    search_description = SEARCH_DESCRIPTION

    def filter_queryset(
        self, request: Request, queryset: QuerySet[Any, Any], view: APIView
    ) -> QuerySet[Any, Any]:
        terms = self.get_search_terms(request)
        return search_messages(queryset, terms=terms) if terms else queryset


class CappedCountPaginator(Paginator):
    """Django's paginator, counting at most `count_limit` + 1 rows (a `LIMIT`): the one past
    the limit tells whether there are more, and keeps the next page link of the last counted
    page.

    Within `COUNT_CAP` rows the count reads the ids of those rows in the list's order, and a
    page is then read by primary key among them: a search's matches are looked up in the
    word index once per request, not once to count them and again for the page (which, for
    two common words, doubled the time). A page further on counts with a `LIMIT` subquery
    and reads its rows at an offset, as Django's paginator does, so as not to carry the ids
    of every page before it.
    """

    def __init__(self, object_list: QuerySet[Any], per_page: int, *, count_limit: int) -> None:
        super().__init__(object_list, per_page)
        self.rows = object_list
        self.count_limit = count_limit

    @cached_property
    def _ids(self) -> list[int] | None:
        if self.count_limit > COUNT_CAP:
            return None
        return list(self.rows.values_list("pk", flat=True)[: self.count_limit + 1])

    @cached_property
    def count(self) -> int:
        if self._ids is not None:
            return len(self._ids)
        # Unordered: the order of rows being counted is wasted work.
        return self.rows.order_by()[: self.count_limit + 1].count()

    def page(self, number: int | str) -> Page:
        if self._ids is None:
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        rows = self.rows.filter(pk__in=self._ids[bottom : bottom + self.per_page])
        return Page(list(rows), number, self)

    @property
    def is_capped(self) -> bool:
        return self.count > self.count_limit

    @property
    def shown_count(self) -> int:
        return min(self.count, self.count_limit)


class CappedCountPagination(DescribedPageNumberPagination):
    """Page numbers (`?page=N`, `?page=last`) as everywhere, with `count` exact up to
    `COUNT_CAP` rows (or the end of the page asked for, if further) and `count_is_capped`
    saying whether more rows match."""

    def paginate_queryset(
        self, queryset: QuerySet[Any, Any] | Sequence[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        page_size = self.get_page_size(request)
        try:
            page_end = int(request.query_params.get(self.page_query_param) or 1) * (page_size or 0)
        except ValueError:  # `last`, or a bad number the paginator answers with a 404
            page_end = 0
        # A deep page is counted to its end, so that it exists; never past what a LIMIT holds.
        count_limit = min(max(COUNT_CAP, page_end), MAX_ID - 1)
        # DRF builds its paginator from (rows, page size) alone.
        self.django_paginator_class = cast(
            "type[Paginator]", partial(CappedCountPaginator, count_limit=count_limit)
        )
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        assert self.page is not None  # DRF answers only a paginated page with this
        paginator = cast(CappedCountPaginator, self.page.paginator)
        return Response(
            {
                "count": paginator.shown_count,
                "count_is_capped": paginator.is_capped,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        page = super().get_paginated_response_schema(schema)
        page["properties"]["count"]["description"] = (
            f"How many items all the pages hold together, counted up to {COUNT_CAP:,} (or to the end "
            "of the page asked for, if further): when `count_is_capped` is true there are more."
        )
        page["properties"] = {
            "count": page["properties"]["count"],
            "count_is_capped": {
                "type": "boolean",
                "description": f"True when more items match than `count` says: counting stops at "
                f"{COUNT_CAP:,} (or at the end of the page asked for) on a list this long. `next` is "
                "still right; `?page=last` is the last page counted.",
            },
            **{name: spec for name, spec in page["properties"].items() if name != "count"},
        }
        page["required"] = [*page["required"], "count_is_capped"]
        return page
