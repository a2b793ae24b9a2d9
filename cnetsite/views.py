"""Views that span apps (the composition root): cluster stats and health."""

import logging

from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from nodes.selectors import cluster_stats
from workloads.selectors import workload_counts_by_status

from .celery import app as celery_app

logger = logging.getLogger(__name__)


@extend_schema(responses=dict)
@api_view(["GET"])
def resources_stats(request):
    """Cluster totals: capacity, allocated, free, measured usage, nodes and workloads by status."""
    return Response(cluster_stats() | {"workloads": workload_counts_by_status(user=request.user)})


@extend_schema(responses=dict)
@api_view(["GET"])
def health(request):
    """200 when the database and the broker answer; 503 naming the part that does not. What went
    wrong goes to the server's log, not into the answer (it may hold hosts, users, paths)."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    failing = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "ok" if not failing else "unhealthy", "checks": checks}
    if failing:
        body["detail"] = "unreachable: " + ", ".join(failing)
    return Response(body, status=503 if failing else 200)


@extend_schema(responses=dict, auth=[])
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
@throttle_classes([])
def health_live(request):
    """For load balancers, unauthenticated: 200 while this web process answers and reaches the
    database, else 503; it says nothing more."""
    if _check_database() != "ok":
        return Response({"status": "unavailable"}, status=503)
    return Response({"status": "ok"})


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        logger.exception("health: database check failed")
        return "unreachable"
    return "ok"


def _check_broker() -> str:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.close()  # opening a channel makes the filesystem transport check its folders
    except Exception:
        logger.exception("health: broker check failed")
        return "unreachable"
    return "ok"
