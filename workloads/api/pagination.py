"""Paging /api/workloads: ``?limit=&offset=`` as every list pages, and a cursor beside it.

An offset costs what it skips (``?offset=900000`` reads 900,000 rows) and each such page counts
the whole match for ``X-Total-Count``. ``?cursor=`` pages by position instead, newest first: the
next page starts after the last row of this one, read straight off the ``created_at`` index, and
no page counts anything. Every page announces the cursor that continues after it in its ``Link``
header (``rel="cursor"`` on an offset page, ``rel="next"`` on a cursor page); ``?cursor=`` with no
value starts at the newest.
"""

import base64
import binascii
import uuid
from datetime import datetime
from urllib.parse import urlencode

from django.db.models import Q
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from core.api import HeaderLimitOffsetPagination

from ..selectors import workload_count_matching

CURSOR, ORDERING = "cursor", "ordering"
# Query parameters that do not narrow the list.
NOT_FILTERS = {"limit", "offset", CURSOR, "ordering", "format"}
# A count the trigger-kept counts cannot give stops this many rows past the page.
COUNT_LOOKAHEAD = 1000
# The order a cursor pages in (the list's default), with the id breaking ties of created_at.
CURSOR_ORDER = ("-created_at", "-id")


def cursor_encode(created_at: datetime, pk) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{pk}".encode()).decode().rstrip("=")


def cursor_decode(text: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, pk = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(pk)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise ValidationError({CURSOR: ["not a cursor this API gave out (take it from a Link header)"]}) from error


class WorkloadPagination(HeaderLimitOffsetPagination):
    """``X-Total-Count`` comes from the counts the database triggers keep when the list is
    filtered by status and type at most (exact, a few rows read); other filters count up to
    ``COUNT_LOOKAHEAD`` rows past the page, and a count that reaches it is sent as
    ``X-Total-Count-At-Least`` instead."""

    capped = False

    def get_count(self, queryset) -> int:
        params = self.request.query_params
        filters = set(params) - NOT_FILTERS
        if filters <= {"status", "type"}:
            return workload_count_matching(user=self.request.user, statuses=[s for s in params.getlist("status") if s],
                                           type=params.get("type") or None)
        cap = self.get_offset(self.request) + self.limit + COUNT_LOOKAHEAD
        count = queryset.order_by()[:cap].count()
        self.capped = count == cap
        return count

    def paginate_queryset(self, queryset, request, view=None):
        self.cursor_mode = CURSOR in request.query_params
        # One array's instances are listed by index (the view's ordering), not newest first.
        newest_first = (request.query_params.get(ORDERING) in (None, "", "-created_at")
                        and not request.query_params.get("array"))
        if not self.cursor_mode:
            page = super().paginate_queryset(queryset, request, view)
            more = page and self.offset + self.limit < self.count
            self.after = page[-1] if more and newest_first else None
            return page
        self.request, self.limit = request, self.get_limit(request)
        if request.query_params.get(self.offset_query_param):
            raise ValidationError({CURSOR: ["a cursor pages by position: leave out offset"]})
        if not newest_first:
            raise ValidationError({CURSOR: ["a cursor pages newest first: leave out ordering (and array)"]})
        rows = queryset.order_by(*CURSOR_ORDER)
        if text := request.query_params[CURSOR]:
            created_at, pk = cursor_decode(text)
            # "created_at <= c" first, so that the created_at index ranges over it; the id breaks ties.
            rows = rows.filter(Q(created_at__lt=created_at) | Q(id__lt=pk), created_at__lte=created_at)
        page = list(rows[:self.limit + 1])
        self.after = page[self.limit - 1] if len(page) > self.limit else None
        return page[:self.limit]

    def get_paginated_response(self, data):
        if not self.cursor_mode:
            response = super().get_paginated_response(data)
            if self.capped:
                del response.headers["X-Total-Count"]
                response.headers["X-Total-Count-At-Least"] = str(self.count)
            if self.after is not None:
                links = [response.headers["Link"]] if "Link" in response.headers else []
                response.headers["Link"] = ", ".join([*links, f'<{self._cursor_url()}>; rel="cursor"'])
            return response
        return Response(data, headers={"Link": f'<{self._cursor_url()}>; rel="next"'} if self.after else {})

    def _cursor_url(self) -> str:
        query = self.request.query_params.copy()
        query.pop(self.offset_query_param, None)
        query[CURSOR] = cursor_encode(self.after.created_at, self.after.pk)
        query[self.limit_query_param] = self.limit
        return self.request.build_absolute_uri("?" + urlencode(query, doseq=True))
