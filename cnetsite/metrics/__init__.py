"""Prometheus metrics: the in-process instruments (this module) and the scrape-time collector.

Two kinds of figures, measured where they can be measured:

- **Computed at scrape time from the database** (``collector.py``): nodes by status,
  capacity / allocated / measured usage per node, heartbeat age, workloads by status and
  type, the pending queue, and dispatch latency (submit → running). The database is the
  record, so any web worker on any control-plane host reports the same fleet-wide values,
  and nothing is lost when a process restarts.
- **Observed in-process** (``core.instruments``): placement latency (around ``place()``, wherever a
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

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.registry import Collector

from core import instruments  # noqa: F401 - registers the histograms before the first scrape


def instruments_source() -> Collector:
    """The in-process histograms: summed over every process in multiprocess mode, else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY  # this process's histograms plus the process_* and python_* figures
