"""What the console's workload pages draw beyond one workload: an array's progress (a bar of its
instances by status), a dependency graph laid out in layers as server-rendered SVG, and a
schedule's coming and past runs. Reads only, through the selectors; the ModelAdmins serve them."""

from dataclasses import dataclass, field
from datetime import datetime

from .models import TERMINAL, Workload, WorkloadArray, WorkloadStatus
from .plan import UNKNOWN, workload_queues
from .selectors import array_status, dependency_graph, workload_array_counts

# The bar's segments, in the order they are drawn (ended first, so the bar fills from the left).
PROGRESS_ORDER = (WorkloadStatus.SUCCEEDED, WorkloadStatus.FAILED, WorkloadStatus.LOST, WorkloadStatus.STOPPED,
                  WorkloadStatus.RUNNING, WorkloadStatus.SCHEDULED, WorkloadStatus.PENDING)


@dataclass(frozen=True)
class Progress:
    """An array's instances by status, as a bar: one segment per status that has any."""

    counts: dict

    @property
    def status(self) -> str:
        return array_status(self.counts)

    @property
    def ended(self) -> int:
        return self.counts["ended"]

    @property
    def total(self) -> int:
        return self.counts["total"]

    @property
    def percent(self) -> int:
        return int(100 * self.ended / self.total) if self.total else 100

    @property
    def segments(self) -> list[dict]:
        total = self.total or 1
        return [{"status": status, "count": self.counts[status], "width": f"{100 * self.counts[status] / total:.2f}%"}
                for status in PROGRESS_ORDER if self.counts[status]]

    @property
    def summary(self) -> str:
        parts = [f"{self.counts[status]} {status}" for status in PROGRESS_ORDER if self.counts[status]]
        return f"{self.ended} of {self.total} ended · " + ", ".join(parts) if parts else "no instances"


def array_progress(*, array_ids: list) -> dict:
    """Each array's ``Progress``, by id, in one query."""
    return {pk: Progress(counts) for pk, counts in workload_array_counts(array_ids=array_ids).items()}


def workload_queue_facts(*, workload: Workload) -> dict | None:
    """A pending workload's queue place and expected start as the API answers them (None when
    it is not pending), the start as a time for the template (None: unknown)."""
    queue = workload_queues(workloads=[workload])[workload.pk]
    if queue is None:
        return None
    known = queue["estimated_start"] != UNKNOWN
    return queue | {"estimated_start": datetime.fromisoformat(queue["estimated_start"]) if known else None}


# --- the dependency graph --------------------------------------------------------------------
NODE_WIDTH, NODE_HEIGHT, COLUMN_GAP, ROW_GAP, MARGIN = 190, 50, 80, 22, 16
NAME_SHOWN = 24  # characters of a name drawn in a box


@dataclass
class GraphNode:
    key: tuple  # ("w" | "a", pk)
    name: str
    status: str
    kind: str  # "workload" | "array"
    detail: str  # "[100] 37 of 100 ended" for an array, the type for a workload
    start: bool
    layer: int = 0
    row: int = 0

    @property
    def id(self) -> str:
        return str(self.key[1])

    @property
    def x(self) -> int:
        return MARGIN + self.layer * (NODE_WIDTH + COLUMN_GAP)

    @property
    def y(self) -> int:
        return MARGIN + self.row * (NODE_HEIGHT + ROW_GAP)

    @property
    def label(self) -> str:
        return self.name if len(self.name) <= NAME_SHOWN else self.name[:NAME_SHOWN - 1] + "…"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class GraphEdge:
    """From what is waited on (left) to what waits (right)."""

    source: GraphNode
    target: GraphNode
    condition: str
    state: str
    path: str = field(default="")
    label_x: int = 0
    label_y: int = 0


def graph_layout(nodes: list[GraphNode], edges: list[tuple[GraphNode, GraphNode]]) -> None:
    """Layers by longest path: what waits on nothing is layer 0, a node one layer right of the
    furthest it waits on (the graph has no cycle: submissions refuse them). Within a layer, rows
    follow the average row of what each waits on (one barycentre pass keeps crossings down)."""
    waits_on: dict[tuple, list[GraphNode]] = {node.key: [] for node in nodes}
    for source, target in edges:
        waits_on[target.key].append(source)
    layer: dict[tuple, int] = {}

    def depth(node: GraphNode) -> int:
        if node.key not in layer:
            layer[node.key] = 1 + max((depth(before) for before in waits_on[node.key]), default=-1)
        return layer[node.key]

    for node in nodes:
        node.layer = depth(node)
    by_layer: dict[int, list[GraphNode]] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        by_layer.setdefault(node.layer, []).append(node)
    for number in sorted(by_layer):
        column = by_layer[number]
        if number:
            column.sort(key=lambda n: sum(b.row for b in waits_on[n.key]) / max(len(waits_on[n.key]), 1))
        for row, node in enumerate(column):
            node.row = row


def dependency_graph_drawing(*, workload_id=None, array_id=None) -> dict:
    """The graph around one workload or array, laid out: ``{"nodes", "edges", "width", "height"}``."""
    graph = dependency_graph(workload_id=workload_id, array_id=array_id)
    start = ("a", array_id) if array_id else ("w", workload_id)
    progress = array_progress(array_ids=[pk for kind, pk in graph["nodes"] if kind == "a"])
    nodes: dict[tuple, GraphNode] = {}
    for key, obj in graph["nodes"].items():
        if isinstance(obj, WorkloadArray):
            bar = progress[obj.pk]
            nodes[key] = GraphNode(key=key, name=obj.name, status=bar.status, kind="array", start=key == start,
                                   detail=f"[{obj.count}] {bar.ended} of {bar.total} ended")
        else:
            nodes[key] = GraphNode(key=key, name=obj.name, status=obj.status, kind="workload", start=key == start,
                                   detail=obj.type)
    edges = [GraphEdge(source=nodes[target], target=nodes[waiting], condition=dependency.condition,
                       state=dependency.state)
             for waiting, target, dependency in graph["edges"]]
    graph_layout(list(nodes.values()), [(edge.source, edge.target) for edge in edges])
    for edge in edges:
        x1, y1 = edge.source.x + NODE_WIDTH, edge.source.y + NODE_HEIGHT // 2
        x2, y2 = edge.target.x, edge.target.y + NODE_HEIGHT // 2
        bend = (x2 - x1) // 2
        edge.path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
        edge.label_x, edge.label_y = (x1 + x2) // 2, (y1 + y2) // 2 - 4
    width = max((node.x for node in nodes.values()), default=0) + NODE_WIDTH + MARGIN
    height = max((node.y for node in nodes.values()), default=0) + NODE_HEIGHT + MARGIN
    return {"nodes": sorted(nodes.values(), key=lambda n: (n.layer, n.row)), "edges": edges,
            "width": width, "height": height, "node_width": NODE_WIDTH, "node_height": NODE_HEIGHT}
