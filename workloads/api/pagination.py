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

CURSOR, ORDERING = "cursor", "ordering"
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
    def paginate_queryset(self, queryset, request, view=None):
        self.cursor_mode = CURSOR in request.query_params
        newest_first = request.query_params.get(ORDERING) in (None, "", "-created_at")
        if not self.cursor_mode:
            page = super().paginate_queryset(queryset, request, view)
            more = page and self.offset + self.limit < self.count
            self.after = page[-1] if more and newest_first else None
            return page
        self.request, self.limit = request, self.get_limit(request)
        if request.query_params.get(self.offset_query_param):
            raise ValidationError({CURSOR: ["a cursor pages by position: leave out offset"]})
        if not newest_first:
            raise ValidationError({CURSOR: ["a cursor pages newest first: leave out ordering"]})
        rows = queryset.order_by(*CURSOR_ORDER)
        if text := request.query_params[CURSOR]:
            created_at, pk = cursor_decode(text)
            rows = rows.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=pk))
        page = list(rows[:self.limit + 1])
        self.after = page[self.limit - 1] if len(page) > self.limit else None
        return page[:self.limit]

    def get_paginated_response(self, data):
        if not self.cursor_mode:
            response = super().get_paginated_response(data)
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
