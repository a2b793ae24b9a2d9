"""Fleet gauges computed from the database at scrape time: four aggregate queries per scrape.

The queries do not grow with the number of rows they summarize (no N+1): one read of the
node table, one GROUP BY over workloads, one MIN over the pending queue (its partial index)
and one conditional COUNT over recently started workloads.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.utils import timezone
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from nodes.resources import MILLICORES_PER_CORE
from nodes.usage import usage_measured

# Our resource names → (Prometheus unit label, factor from the stored unit).
# CPU is stored in millicores and exported in cores, as node exporters do.
UNITS = {"cpu": ("core", 1 / MILLICORES_PER_CORE), "memory": ("byte", 1), "gpu": ("device", 1), "storage": ("byte", 1)}

# Submit → running: a busy queue and a container image start are seconds; a full queue is hours.
DISPATCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class DatabaseCollector(Collector):
    """Yields the fleet's gauges, read fresh from the database on every scrape."""

    def describe(self):
        # Registering must not touch the database (it may not exist yet at import time).
        return []

    def collect(self):
        now = timezone.now()
        yield from self._nodes(now)
        yield from self._workloads(now)
        yield self._dispatch_latency(now)

    def _nodes(self, now):
        from nodes.models import RESOURCES, Node, NodeStatus

        by_status = GaugeMetricFamily("cnet_nodes", "Registered nodes by status.", labels=["status"])
        status = GaugeMetricFamily(
            "cnet_node_status", "1 for each node's current status.", labels=["node", "status"]
        )
        labels = ["node", "resource", "unit"]
        capacity = GaugeMetricFamily("cnet_node_capacity", "What a node offers, per resource.", labels=labels)
        allocated = GaugeMetricFamily(
            "cnet_node_allocated", "What placed workloads hold on a node, per resource.", labels=labels
        )
        usage = GaugeMetricFamily(
            "cnet_node_usage", "What the node's agent last measured in use (whole machine).", labels=labels
        )
        heartbeat_age = GaugeMetricFamily(
            "cnet_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat.", labels=["node"]
        )
        heartbeat_at = GaugeMetricFamily(
            "cnet_node_last_heartbeat_timestamp_seconds", "Unix time of the node's last heartbeat.",
            labels=["node"],
        )
        columns = [column for pair in RESOURCES.values() for column in pair]
        counts = dict.fromkeys(NodeStatus.values, 0)
        for row in Node.objects.order_by().values("node_id", "status", "usage", "last_heartbeat", *columns):
            node = row["node_id"]
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            status.add_metric([node, row["status"]], 1)
            for name, (capacity_column, allocated_column) in RESOURCES.items():
                unit, factor = UNITS[name]
                capacity.add_metric([node, name, unit], row[capacity_column] * factor)
                allocated.add_metric([node, name, unit], row[allocated_column] * factor)
            for name, (amount, _total) in usage_measured(row["usage"] or {}).items():
                usage.add_metric([node, name, UNITS[name][0]], amount)
            if row["last_heartbeat"] is not None:
                heartbeat_age.add_metric([node], max(0.0, (now - row["last_heartbeat"]).total_seconds()))
                heartbeat_at.add_metric([node], row["last_heartbeat"].timestamp())
        for name, count in counts.items():
            by_status.add_metric([name], count)
        yield from (by_status, status, capacity, allocated, usage, heartbeat_age, heartbeat_at)

    def _workloads(self, now):
        from workloads.kinds import kinds
        from workloads.models import Workload, WorkloadStatus
        from workloads.selectors import workload_counts

        counts = {(s, kind.name): 0 for s in WorkloadStatus.values for kind in kinds()}
        counts |= workload_counts()  # kept by triggers: no count over the workload table
        family = GaugeMetricFamily(
            "cnet_workloads", "Workloads by status and type.", labels=["status", "type"]
        )
        for (status, type_), n in sorted(counts.items()):
            family.add_metric([status, type_], n)
        yield family

        pending = sum(n for (status, _t), n in counts.items() if status == WorkloadStatus.PENDING)
        yield GaugeMetricFamily(
            "cnet_workloads_pending", "Depth of the pending queue (workloads waiting for a node).",
            value=pending,
        )
        oldest = (
            Workload.objects.filter(status=WorkloadStatus.PENDING)
            .aggregate(oldest=Min("created_at"))["oldest"]
        )
        age = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily(
            "cnet_workloads_pending_oldest_age_seconds",
            "Seconds the oldest pending workload has waited since submission (0 when none waits).",
            value=age,
        )

    def _dispatch_latency(self, now):
        """Submit → running for workloads that first started in the last window.

        Computed here from the database rather than observed in-process because the
        transition to running happens in the agent, on another machine, whose process
        serves no /metrics (multiprocess mode shares files on one host only). The figure is
        a *gauge* histogram over a sliding window (CNET_METRICS_DISPATCH_WINDOW_SECONDS):
        ``histogram_quantile(0.95, cnet_dispatch_latency_seconds_bucket)`` needs no rate().
        Restarted workloads are left out: their created_at is the first submission, so
        started_at - created_at would include the earlier run.
        """
        from workloads.models import Workload

        window = float(getattr(settings, "CNET_METRICS_DISPATCH_WINDOW_SECONDS", 300.0))
        latency = ExpressionWrapper(F("started_at") - F("created_at"), output_field=DurationField())
        within = {
            f"le_{i}": Count("pk", filter=Q(started_at__lte=F("created_at") + timedelta(seconds=bound)))
            for i, bound in enumerate(DISPATCH_BUCKETS)
        }
        totals = Workload.objects.filter(
            started_at__gte=now - timedelta(seconds=window), restart_count=0
        ).aggregate(n=Count("pk"), total=Sum(latency), **within)
        buckets = [(floatToGoString(bound), totals[f"le_{i}"]) for i, bound in enumerate(DISPATCH_BUCKETS)]
        buckets.append(("+Inf", totals["n"]))
        total = totals["total"]
        return GaugeHistogramMetricFamily(
            "cnet_dispatch_latency_seconds",
            f"Submit to running, for workloads first started in the last {window:g} s "
            "(a gauge histogram over that window, from database timestamps).",
            buckets=buckets,
            gsum_value=total.total_seconds() if total is not None else 0.0,
        )
