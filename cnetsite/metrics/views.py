"""``/metrics``: Prometheus exposition, staff-only unless the operator makes it public."""

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.views import APIView

from . import instruments_source
from .collector import DatabaseCollector


class _Chain(Collector):
    """Several collectors as one, so one exposition (and one OpenMetrics ``# EOF``) holds them all."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


class _PlainNegotiation(BaseContentNegotiation):
    """Leaves the Accept header to prometheus_client (text or OpenMetrics); errors stay JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def metrics_source() -> Collector:
    """Everything /metrics shows: the in-process instruments, then the database's gauges."""
    return _Chain(instruments_source(), DatabaseCollector())


class MetricsView(APIView):
    """Authenticated as the API is (token or session), and staff only: the figures cover every
    user's workloads and name every node. ``CNET_METRICS_PUBLIC=true`` drops the check, for a
    deployment that binds the endpoint to a private network instead (deploy/README.md)."""

    content_negotiation_class = _PlainNegotiation

    def get_permissions(self):
        if settings.CNET_METRICS_PUBLIC:
            return [AllowAny()]
        return [IsAdminUser()]

    @extend_schema(exclude=True)
    def get(self, request):
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return HttpResponse(encoder(metrics_source()), content_type=content_type)
