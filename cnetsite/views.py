"""Views that span apps (the composition root): cluster stats and health."""

import logging

from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
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
    """200 when the database and the broker answer; 503 naming the part that does not."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    failing = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "ok" if not failing else "unhealthy", "checks": checks}
    if failing:
        body["detail"] = "unreachable: " + ", ".join(failing)
    return Response(body, status=503 if failing else 200)


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        logger.warning("health: database check failed: %s", error)
        return f"error: {error}"
    return "ok"


def _check_broker() -> str:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.close()  # opening a channel makes the filesystem transport check its folders
    except Exception as error:
        logger.warning("health: broker check failed: %s", error)
        return f"error: {error}"
    return "ok"
