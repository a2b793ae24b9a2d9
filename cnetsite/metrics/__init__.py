"""Prometheus metrics: the in-process instruments (this module) and the scrape-time collector.

Two kinds of figures, measured where they can be measured:

- **Computed at scrape time from the database** (``collector.py``): nodes by status,
  capacity / allocated / measured usage per node, heartbeat age, workloads by status and
  type, the pending queue, and dispatch latency (submit → running). The database is the
  record, so any web worker on any control-plane host reports the same fleet-wide values,
  and nothing is lost when a process restarts.
- **Observed in-process** (here): placement latency (around ``place()``, wherever a
  placement runs: the web process on submit, the control worker for the pending queue)
  and API request latency (``middleware.py``, in the web process).

In-process histograms live in the memory of the process that observed them. Gunicorn runs
several workers and Celery runs the control worker in another process, so a scrape that
reaches one web worker would see only that worker's share. With ``PROMETHEUS_MULTIPROC_DIR``
set (to an empty folder, writable by and shared between the web and control services on one
host, emptied when they all stop; see deploy/README.md) prometheus_client keeps each
process's values in a file there and ``/metrics`` sums them all. prometheus_client reads the
variable when it is first imported, so it must be in the environment of the process from its
start, not set later. Without it (the embedded default, tests) values are per process.
"""

import os

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, multiprocess
from prometheus_client.registry import Collector

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


def observe_placement(*, seconds: float, strategy: str, placed: bool) -> None:
    PLACEMENT_SECONDS.labels(strategy=strategy, outcome="placed" if placed else "unplaced").observe(seconds)


def instruments_source() -> Collector:
    """The in-process histograms: summed over every process in multiprocess mode, else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY  # this process's histograms plus the process_* and python_* figures
