"""Workloads: run (and follow), plan, ps, show, logs, stop, rm."""

import time
from datetime import datetime

import click
from rich.console import Group
from rich.text import Text

from ..client import CliError
from ..context import api
from ..jobs import bodies, dependency
from ..output import STATUS_STYLES, age, emit, new_table, output_format, output_option, status_text, until
from ..sizes import Size, human_bytes
from .watching import watch

ENDED = ("succeeded", "failed", "stopped", "lost")
POLL_SECONDS = 0.25
# Nomad's convention for a dry run: 0 placed now, 2 would wait, 1 could never be placed.
PLAN_EXIT = {"placed": 0, "waits": 2, "never": 1}


def workload_options(command):
    """What ``run`` and ``plan`` both take: the request, from options, a job file, or both."""
    options = [
        click.option("-f", "--file", "job_file", metavar="FILE", help="a job file: the API's fields, YAML or JSON"),
        click.option("--name", help="default: the command's name"),
        click.option("--type", "type_", metavar="TYPE", help="process (default), container, mlmodel"),
        click.option("--cpu", type=float, help="cores, e.g. 0.5"),
        click.option("--memory", type=Size(), help="bytes or 512Mi, 2Gi (binary), 2G (decimal)"),
        click.option("--gpu", type=int),
        click.option("--storage", type=Size()),
        click.option("--count", type=int, help="an array of N instances"),
        click.option("--after", multiple=True, metavar="ID[:COND]",
                     callback=lambda _ctx, _param, given: [dependency(text) for text in given],
                     help="start after workload ID succeeded (or :failed, :ended); repeatable"),
        click.option("--schedule", metavar="CRON", help="run on a cron schedule"),
        click.option("--max-runtime", type=int, metavar="SECONDS", help="a time limit: stopped, failed, past it"),
        click.option("--node", metavar="ID", help="the node it is submitted at"),
        click.option("--strategy", metavar="NAME", help="default or best_fit"),
        click.option("--priority", type=int),
        click.option("--restart", type=click.Choice(["never", "on_failure", "always"]), help="restart policy"),
        click.option("--env", multiple=True, metavar="KEY=VALUE", help="repeatable"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
        output_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(context_settings={"allow_interspersed_args": False})
@workload_options
@click.option("--follow", is_flag=True, help="stream its output until it ends; exit with its exit code")
def run(job_file, command, follow, **options):
    """Submit work: cnet run [OPTIONS] -- CMD ARGS…, or cnet run -f job.yaml. Prints the new id
    (an array's id for --count; one per workload of a file, in its order)."""
    submitted = _submit(bodies(job_file, command, options))
    if output_format() == "table":
        for answer in submitted:
            click.echo(answer["id"])
    else:
        emit(submitted[0] if len(submitted) == 1 else submitted)
    if follow:
        codes = [follow_array(answer["id"]) if _is_array(answer) else follow_logs(answer["id"], printed=0)
                 for answer in submitted]
        raise SystemExit(next((code for code in reversed(codes) if code), 0))


def _submit(requested: list[dict]) -> list[dict]:
    """One request either way: a body of its own, or several as the API's ``{"workloads": [...]}``,
    whose items may depend on each other by ``key``."""
    if len(requested) == 1:
        return [api().post("/workloads", requested[0])]
    return api().post("/workloads", {"workloads": requested})["workloads"]


def _is_array(answer: dict) -> bool:
    return answer.get("kind") == "array" or "counts" in answer


@click.command(context_settings={"allow_interspersed_args": False})
@workload_options
def plan(job_file, command, **options):
    """Where a submission would go now, and why (nothing is submitted). Exit 0: it would be placed
    now; 2: it would wait; 1: no node could ever hold it."""
    # Each on its own: ``key`` only names an item for the others of a file.
    plans = [api().post("/workloads/plan", {k: v for k, v in body.items() if k != "key"})
             for body in bodies(job_file, command, options)]
    emit(plans[0] if len(plans) == 1 else plans, lambda _data: Group(*(_plan_view(p) for p in plans)))
    outcomes = {p["outcome"] for p in plans}
    raise SystemExit(1 if "never" in outcomes else 2 if "waits" in outcomes else 0)


def _plan_view(plan: dict):
    lines = [Text(_plan_headline(plan), style=STATUS_STYLES[plan["outcome"]])]
    table = new_table("NODE", "FITS", "REASON")
    for reason in plan["reasons"]:
        chosen = reason["node"] == plan["node"]
        table.add_row(Text(reason["node"], style="bold green" if chosen else ""),
                      Text("yes" if reason["fits"] else "no", style="green" if reason["fits"] else "red"),
                      reason["reason"])
    return Group(*lines, table) if plan["reasons"] else Group(*lines)


def _plan_headline(plan: dict) -> str:
    if plan["outcome"] == "placed":
        return f"would be placed on {plan['node']} now ({plan['strategy']}, submitted at {plan['submitted_node']})"
    if plan["outcome"] == "never":
        short = plan["never_fits"]
        if not short["node"]:
            return "no node could ever hold it: no node is registered yet"
        return (f"no node could ever hold it: the largest, {short['node']}, has {short.get('capacity_human')}"
                f" ({'; '.join(short['short'])})")
    queue = plan["queue"]
    if queue is None:  # it waits for its dependencies, not for room
        return f"would wait: {plan['summary']}"
    return f"would wait: {_place(queue)}; estimated start: {plan['estimated_start']}"


def follow_logs(workload_id: str, *, printed: int) -> int:
    """Print output past the first ``printed`` lines as it arrives, until the workload ends;
    return the exit code to leave with (its own, or 1 when it ended without one)."""
    while True:
        logs = api().get(f"/workloads/{workload_id}/logs")
        for line in logs["lines"][printed:]:
            click.echo(line)
        printed = len(logs["lines"])
        if logs["status"] in ENDED:
            break
        time.sleep(POLL_SECONDS)
    workload = api().get(f"/workloads/{workload_id}")
    if workload["status"] != "succeeded":
        click.echo(f"{workload_id} {workload['status']}: {workload.get('reason') or ''}".rstrip(": "), err=True)
    if workload.get("exit_code") is not None:
        return workload["exit_code"]
    return 0 if workload["status"] == "succeeded" else 1


def follow_array(array_id: str) -> int:
    """Wait for every instance of an array to end, saying how many have; 0 when all succeeded."""
    ended = None
    while True:
        array = api().get(f"/arrays/{array_id}")
        counts = array["counts"]
        if counts["ended"] != ended:
            ended = counts["ended"]
            click.echo(f"array {array_id}: {ended} of {counts['total']} ended", err=True)
        if ended >= counts["total"]:
            return 0 if array["status"] == "succeeded" else 1
        time.sleep(POLL_SECONDS)


@click.command()
@click.option("--status", multiple=True, metavar="STATUS", help="pending, scheduled, running, …; repeatable")
@click.option("--type", "type_", metavar="TYPE")
@click.option("--node", metavar="ID")
@click.option("--name", help="part of the name")
@click.option("--array", metavar="ID", help="the instances of one array")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--watch", "-w", "watching", is_flag=True, help="refresh every 2 s until Ctrl-C")
@output_option
def ps(status, type_, node, name, array, limit, watching):
    """List workloads, newest first."""
    def listed():
        return api().get("/workloads", status=list(status), type=type_, node=node, name=name, array=array,
                        limit=limit)

    watch(listed, _ps_table) if watching else emit(listed(), _ps_table)


def _ps_table(workloads: list[dict]):
    table = new_table("ID", "NAME", "TYPE", "STATUS", "NODE", "CPU", "MEMORY", "AGE", "QUEUE", "REASON")
    for workload in workloads:
        requirements = workload.get("requirements") or {}
        table.add_row(workload["id"], workload["name"], workload["type"], status_text(workload["status"]),
                      workload.get("node") or "-", f"{requirements.get('cpu', 0):g}",
                      human_bytes(requirements.get("memory")), age(workload.get("created_at")),
                      _queue_cell(workload.get("queue")), _why(workload))
    return table


def _queue_cell(queue: dict | None) -> str:
    """``#3 · ~14:05`` (its place among its priority, and when it is expected to start)."""
    if not queue:
        return "-"
    if queue["position"] is None:
        return "after deps"
    return f"#{queue['position']} · {_when(queue['estimated_start'], short=True)}"


def _when(estimate: str | None, *, short: bool = False) -> str:
    """An estimated start in the reader's time zone: ``~14:05`` today, with the date otherwise."""
    if not estimate or estimate == "unknown":
        return "unknown"
    then = datetime.fromisoformat(estimate).astimezone()
    if short:
        return f"~{then:%H:%M}" if then.date() == datetime.now().astimezone().date() else f"~{then:%b %d %H:%M}"
    return f"{then:%Y-%m-%d %H:%M:%S %Z} (in {until(estimate)})"


def _why(workload: dict) -> str:
    reason = workload.get("reason") or ""
    return reason if len(reason) <= 120 else reason[:119] + "…"


def _queue_facts(queue: dict | None) -> tuple:
    """What ``show`` says of a pending workload's place and start."""
    if not queue:
        return ()
    if queue["position"] is None:
        return (("queue", "not queued yet: it waits for its dependencies"),)
    start = _when(queue["estimated_start"])
    if start == "unknown":
        start = "unknown (work in its way has no time limit)"
    return (("queue", _place(queue)), ("estimated start", start))


def _place(queue: dict) -> str:
    return (f"#{queue['position']} of {queue['of']} pending at priority {queue['priority']}"
            f" ({queue['ahead']} placed before it)")


@click.command()
@click.argument("workload_id", metavar="ID")
@output_option
def show(workload_id):
    """A workload and its event timeline, with every node's reason for each placement."""
    shown = {"workload": api().get(f"/workloads/{workload_id}"),
             "events": api().get(f"/workloads/{workload_id}/events")}
    emit(shown, _show_view)


def _show_view(shown: dict):
    workload = shown["workload"]
    facts = new_table("", "")
    requirements = workload.get("requirements") or {}
    for label, value in (
        ("id", workload["id"]), ("name", workload["name"]), ("type", workload["type"]),
        ("status", status_text(workload["status"])), ("node", workload.get("node") or "-"),
        ("submitted at", workload.get("submitted_node") or "-"),
        ("requests", f"{requirements.get('cpu', 0):g} CPU, {human_bytes(requirements.get('memory'))} memory, "
                     f"{requirements.get('gpu', 0)} GPU"),
        ("strategy", workload.get("strategy")), ("priority", str(workload.get("priority"))),
        ("exit code", "-" if workload.get("exit_code") is None else str(workload["exit_code"])),
        *_queue_facts(workload.get("queue")),
        ("reason", _why(workload) or "-"), ("created", workload.get("created_at")),
    ):
        facts.add_row(Text(label, style="bold"), value if isinstance(value, Text) else str(value or "-"))
    timeline = new_table("TIME", "EVENT", "NODE", "REASON", title="events")
    for event in shown["events"]:
        moved = f"{event['from_status'] or '∅'} → {event['to_status']}" if event.get("to_status") else event["kind"]
        timeline.add_row(event["created_at"], moved, event.get("node_id") or "", event.get("reason") or "")
        for reason in event.get("details") or []:
            if isinstance(reason, dict) and "node" in reason:
                timeline.add_row("", "", Text(f"  {reason['node']}", style="green" if reason.get("fits") else "red"),
                                 reason.get("reason", ""))
    return Group(facts, Text(""), timeline)


@click.command()
@click.argument("workload_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="keep printing until it ends")
@click.option("--tail", type=int, metavar="N", help="only the last N lines")
@output_option
def logs(workload_id, follow, tail):
    """A workload's output (it lives in the database, so it outlives the node)."""
    if not follow:
        emit(api().get(f"/workloads/{workload_id}/logs", lines=tail), lambda data: "\n".join(data["lines"]) or None)
        return
    lines = api().get(f"/workloads/{workload_id}/logs")["lines"]
    shown = lines if tail is None else lines[-tail:] if tail else []
    for line in shown:
        click.echo(line)
    raise SystemExit(follow_logs(workload_id, printed=len(lines)))


def _each(ids, act, done: str):
    """``act(id)`` for every id; one that fails is reported and the rest still go. A table says
    ``ID done`` per line; json/yaml give one entry per id, ``done`` or ``error``."""
    failed, results = 0, []
    for workload_id in ids:
        try:
            act(workload_id)
            results.append({"id": workload_id, "done": done})
        except CliError as error:
            failed += 1
            results.append({"id": workload_id, "error": str(error)})
            click.echo(click.style("error: ", fg="red", bold=True) + f"{workload_id}: {error}", err=True)
    emit(results, lambda listed: "\n".join(f"{r['id']} {done}" for r in listed if "done" in r) or None)
    if failed:
        raise SystemExit(1)


@click.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID…")
@output_option
def stop(ids):
    """Stop workloads (SIGTERM, SIGKILL after the grace period)."""
    _each(ids, lambda workload_id: api().post(f"/workloads/{workload_id}/stop"), "stopping")


@click.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID…")
@output_option
def rm(ids):
    """Delete workloads (a running one is stopped first)."""
    _each(ids, lambda workload_id: api().delete(f"/workloads/{workload_id}"), "deleted")


COMMANDS = (run, plan, ps, show, logs, stop, rm)
