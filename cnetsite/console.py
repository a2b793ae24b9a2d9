"""The console's composition root: what the dashboard and the node pages show.

Reads only, through the apps' selectors; turns rows into bars (allocated / capacity, plus the
usage the agent measured) that the templates draw. Writes happen in the ModelAdmins, which
call services.
"""

from dataclasses import dataclass

from django.db.models import Count
from django.template.response import TemplateResponse

from nodes.models import Node, NodeStatus
from nodes.resources import MILLICORES_PER_CORE, human_bytes
from nodes.selectors import cluster_totals, node_busiest
from nodes.usage import usage_measured, usage_percent
from workloads.models import WorkloadStatus
from workloads.selectors import (
    workload_active_counts_by_node,
    workload_counts_by_status,
    workload_events_recent,
)

# The dashboard draws at most this many nodes (the busiest) and this many needing attention;
# the node list pages through all of them.
DASHBOARD_NODES = 40
DASHBOARD_ATTENTION = 10
RESOURCE_LABELS = {"cpu": "CPU", "memory": "Memory", "gpu": "GPU", "storage": "Storage"}


def _amount(name: str, value: float) -> str:
    if name == "cpu":
        return f"{value:g}"
    if name == "gpu":
        return f"{int(value)}"
    return human_bytes(value)


@dataclass(frozen=True)
class Bar:
    """One resource: what is allocated of the capacity, and what the machine measured as used."""

    name: str
    allocated: float
    capacity: float
    measured_pct: float | None = None

    @property
    def label(self) -> str:
        return RESOURCE_LABELS[self.name]

    @property
    def pct(self) -> float | None:
        return usage_percent(self.allocated, self.capacity)

    @property
    def width(self) -> str:
        """CSS width, with '.' as the decimal mark whatever the locale."""
        return f"{self.pct or 0:.1f}%"

    @property
    def measured_width(self) -> str:
        return f"{self.measured_pct or 0:.1f}%"

    @property
    def level(self) -> str:
        pct = self.pct or 0
        return "crit" if pct >= 90 else "warn" if pct >= 70 else "ok"

    @property
    def text(self) -> str:
        if not self.capacity:
            return "none"
        unit = " cores" if self.name == "cpu" else ""
        return f"{_amount(self.name, self.allocated)} / {_amount(self.name, self.capacity)}{unit}"

    @property
    def pct_text(self) -> str:
        return "–" if self.pct is None else f"{self.pct:.0f}%"


def node_bars(node: Node) -> list[Bar]:
    measured = usage_measured(node.usage or {})
    return [
        Bar("cpu", node.cpu_allocated_millicores / MILLICORES_PER_CORE, node.cpu_millicores / MILLICORES_PER_CORE,
            _measured_percent(measured, "cpu")),
        Bar("memory", node.memory_allocated_bytes, node.memory_bytes, _measured_percent(measured, "memory")),
        Bar("gpu", node.gpu_allocated, node.gpu_count),
        Bar("storage", node.storage_allocated_bytes, node.storage_bytes, _measured_percent(measured, "storage")),
    ]


def cluster_bars() -> list[Bar]:
    """Totals over live (not offline) nodes; measured usage weighs each machine by its size.

    One aggregate query (``cluster_totals``), whatever the size of the fleet."""
    totals = cluster_totals()
    capacity, allocated = totals["capacity"].to_api(), totals["allocated"].to_api()
    measured = totals["measured"]
    return [
        Bar(name, allocated[name], capacity[name], _measured_percent(measured, name))
        for name in ("cpu", "memory", "gpu", "storage")
    ]


def _measured_percent(measured: dict[str, tuple[float, float]], name: str) -> float | None:
    return usage_percent(*measured[name]) if name in measured else None


def node_rows(nodes, *, user) -> list[dict]:
    running = workload_active_counts_by_node(user=user)
    return [{"node": node, "bars": node_bars(node), "running": running.get(node.pk, 0)} for node in nodes]


def dashboard_context(*, user) -> dict:
    """A summary however many nodes there are: counts by health, totals, the busiest few nodes and
    the first few that need attention: a bounded number of queries, and the sums and the sort are
    the database's, so no more than those few rows reach Python."""
    health = dict(Node.objects.order_by().values("status").annotate(n=Count("pk")).values_list("status", "n"))
    node_total = sum(health.values())
    attention = list(Node.objects.exclude(status=NodeStatus.READY).order_by("status", "node_id")[:DASHBOARD_ATTENTION])
    counts = workload_counts_by_status(user=user)
    return {
        "cluster_bars": cluster_bars(),
        "node_rows": node_rows(node_busiest(limit=DASHBOARD_NODES), user=user),
        "node_total": node_total,
        "node_health": [(status, label, health.get(status, 0)) for status, label in NodeStatus.choices],
        "nodes_attention": attention,
        "nodes_attention_more": node_total - health.get(NodeStatus.READY, 0) - len(attention),
        "workload_counts": [(status, label, counts[status]) for status, label in WorkloadStatus.choices],
        "workload_total": counts["total"],
        "events": workload_events_recent(user=user, limit=15),
    }


def dashboard_live(request):
    """The dashboard's live part alone: the page fetches it every few seconds and swaps it in."""
    return TemplateResponse(request, "admin/console/_dashboard.html", dashboard_context(user=request.user))
