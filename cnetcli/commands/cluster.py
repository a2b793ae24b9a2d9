"""The cluster: nodes (capacity, health, parent), top (a live view) and the control plane's health."""

import click
from rich.console import Group
from rich.text import Text

from ..context import api
from ..output import age, bar, emit, new_table, output_option, status_text
from ..sizes import human_bytes
from .watching import watch


@click.command()
@output_option
def nodes():
    """Nodes with capacity bars (allocated of capacity), health and parent."""
    emit(api().get("/nodes", limit=1000), _nodes_table)


def _nodes_table(listed: list[dict]):
    table = new_table("NODE", "STATUS", "PARENT", "CPU", "", "MEMORY", "", "GPU", "PEERS", "HEARTBEAT")
    for node in listed:
        capacity, allocated = node["capacity"], node["allocated"]
        table.add_row(
            node["node_id"], status_text(node["status"]), node.get("parent") or "-",
            bar(allocated["cpu"], capacity["cpu"]), f"{allocated['cpu']:g}/{capacity['cpu']:g}",
            bar(allocated["memory"], capacity["memory"]),
            f"{human_bytes(allocated['memory'])}/{human_bytes(capacity['memory'])}",
            f"{allocated['gpu']}/{capacity['gpu']}", ", ".join(node.get("peers") or []) or "-",
            age(node.get("last_heartbeat")),
        )
    return table


@click.command()
@click.option("--once", is_flag=True, help="one view, then exit (the default where stdout is no terminal)")
@output_option
def top(once):
    """A live view of the cluster: capacity, queue depth, running work."""
    if once or not click.get_text_stream("stdout").isatty():
        emit(_cluster(), _top_view)
    else:
        watch(_cluster, _top_view)


def _cluster() -> dict:
    pending = api().request("GET", "/workloads", params={"status": "pending", "limit": 1})
    return {
        "stats": api().get("/resources/stats"),
        "pending": int(pending.headers.get("X-Total-Count", len(pending.json()))),
        "running": api().get("/workloads", status=["running"], limit=20, ordering="-started_at"),
        "nodes": api().get("/nodes", limit=20, ordering="node_id"),
    }


def _top_view(cluster: dict):
    stats = cluster["stats"]
    capacity, allocated = stats["capacity"], stats["allocated"]
    counts = stats["nodes"]
    summary = new_table("", "", "")
    summary.add_row(Text("cpu", style="bold"), bar(allocated["cpu"], capacity["cpu"], width=30),
                    f"{allocated['cpu']:g} of {capacity['cpu']:g} cores allocated")
    summary.add_row(Text("memory", style="bold"), bar(allocated["memory"], capacity["memory"], width=30),
                    f"{human_bytes(allocated['memory'])} of {human_bytes(capacity['memory'])} allocated")
    summary.add_row(Text("gpu", style="bold"), bar(allocated["gpu"], capacity["gpu"], width=30),
                    f"{allocated['gpu']} of {capacity['gpu']} allocated")
    headline = Text.assemble(
        ("nodes ", "bold"), f"{counts.get('total', 0)} ({counts.get('ready', 0)} ready, ",
        f"{counts.get('unhealthy', 0)} unhealthy, {counts.get('offline', 0)} offline)   ",
        ("queue ", "bold"), f"{cluster['pending']} pending   ", ("running ", "bold"), f"{len(cluster['running'])}",
        "+" if len(cluster["running"]) == 20 else "",
    )
    running = new_table("RUNNING", "NAME", "NODE", "CPU", "MEMORY", "FOR")
    for workload in cluster["running"]:
        requirements = workload.get("requirements") or {}
        running.add_row(workload["id"], workload["name"], workload.get("node") or "-",
                        f"{requirements.get('cpu', 0):g}", human_bytes(requirements.get("memory")),
                        age(workload.get("started_at")))
    return Group(headline, summary, Text(""), _nodes_table(cluster["nodes"]), Text(""), running)


@click.command()
@output_option
def health():
    """Whether the control plane's database and broker answer (exit 1, naming the part, when not)."""
    emit(api().get("/health"), lambda answer: ", ".join(f"{part} {state}" for part, state in answer["checks"].items()))


COMMANDS = (nodes, top, health)
