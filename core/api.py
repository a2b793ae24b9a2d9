"""API plumbing shared by every app: auth, pagination, error mapping."""

from urllib.parse import urlencode

from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler

from .errors import DomainError


class HeaderLimitOffsetPagination(LimitOffsetPagination):
    """Pages with ``?limit=&offset=`` but keeps the body a plain JSON array.

    The seeds show list endpoints answering ``[...]`` (``jq '.[]'``), so paging
    metadata goes in ``X-Total-Count`` and an RFC 8288 ``Link`` header instead.
    """

    max_limit = 1000

    def get_paginated_response(self, data):
        links = []
        for rel, url in (("next", self.get_next_link()), ("prev", self.get_previous_link())):
            if url:
                links.append(f'<{url}>; rel="{rel}"')
        if self.count and self.limit:
            query = self.request.query_params.copy()
            query["limit"] = self.limit
            query["offset"] = 0
            links.append(f'<{self.request.build_absolute_uri("?" + urlencode(query))}>; rel="first"')
        headers = {"X-Total-Count": str(self.count)}
        if links:
            headers["Link"] = ", ".join(links)
        return Response(data, headers=headers)

    def get_paginated_response_schema(self, schema):
        return schema


def api_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=exc.status)
    response = exception_handler(exc, context)
    if response is not None and response.status_code == status.HTTP_400_BAD_REQUEST:
        response.data = _with_detail(response.data)
    return response


def _with_detail(data):
    """Add a one-line ``detail`` naming the first bad field to DRF's per-field errors."""
    if not isinstance(data, dict) or "detail" in data:
        return data
    path, message = _first_error(data)
    return {**data, "detail": f"{path}: {message}" if path else message}


def _first_error(data, prefix=""):
    if isinstance(data, dict):
        for key, value in data.items():
            name = key if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else key)
            if name == "non_field_errors":
                name = prefix
            return _first_error(value, name)
    if isinstance(data, list) and data:
        if all(not isinstance(item, (dict, list)) for item in data):
            return prefix, str(data[0])
        for index, item in enumerate(data):
            if item:
                return _first_error(item, f"{prefix}[{index}]")
    return prefix, str(data)
