"""In-process Prometheus instruments, observed where the work happens; ``cnetsite.metrics`` serves them."""

from prometheus_client import Counter, Histogram

# Placement is one indexed query plus one conditional UPDATE: milliseconds, more on lost races.
PLACEMENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PLACEMENT_SECONDS = Histogram(
    "cnet_placement_duration_seconds",
    "Time to choose a node for one pending workload and claim its resources (place()).",
    ["strategy", "outcome"],
    buckets=PLACEMENT_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "cnet_http_request_duration_seconds",
    "Time to answer one HTTP request, by method, URL route pattern and status code.",
    ["method", "route", "status"],
    buckets=REQUEST_BUCKETS,
)


HEARTBEATS = Counter(
    "cnet_node_heartbeats",
    "Heartbeats the control plane recorded, by outcome (recorded, or refused: an unknown node or a stale epoch).",
    ["outcome"],
)


def observe_placement(*, seconds: float, strategy: str, placed: bool) -> None:
    PLACEMENT_SECONDS.labels(strategy=strategy, outcome="placed" if placed else "unplaced").observe(seconds)
