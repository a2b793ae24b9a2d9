"""What commands print: a rich table on a terminal (colour only there), or the API's data as
JSON or YAML for scripts (``--output``)."""

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import click
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "yaml")
# Where output goes to a pipe or file, a row stays one line (for grep and awk), however long.
PIPE_WIDTH = 1000
STATUS_STYLES = {
    "pending": "yellow", "scheduled": "cyan", "running": "blue", "succeeded": "green", "failed": "red",
    "stopped": "magenta", "lost": "red", "ready": "green", "unhealthy": "yellow", "offline": "red",
    "draining": "yellow", "placed": "green", "waits": "yellow", "never": "red",
}


def console(*, stderr: bool = False) -> Console:
    """Colour and a terminal's width only on a terminal; elsewhere plain text, lines not cut short."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(file=stream, width=None if terminal else PIPE_WIDTH, color_system="auto" if terminal else None,
                   highlight=False, soft_wrap=not terminal)


def output_option(command):
    return click.option("-o", "--output", "output", type=click.Choice(FORMATS), default=None,
                        help="table (default), json or yaml", expose_value=False, callback=_remember_output,
                        is_eager=True)(command)


def _remember_output(ctx: click.Context, _param, value):
    if value:
        ctx.ensure_object(dict)["output"] = value
        ctx.find_root().ensure_object(dict)["output"] = value


def output_format() -> str:
    ctx = click.get_current_context()
    return ctx.find_root().ensure_object(dict).get("output") or "table"


def emit(data, table: Callable[[object], object] | None = None) -> None:
    """``data`` as the chosen format; ``table(data)`` makes what a terminal user sees."""
    chosen = output_format()
    if chosen == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif chosen == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
    elif table is not None:
        shown = table(data)
        if shown is not None:
            console().print(shown)
    else:
        click.echo(data)


def status_text(status: str | None) -> Text:
    return Text(status or "-", style=STATUS_STYLES.get(status or "", ""))


def new_table(*columns: str, title: str | None = None) -> Table:
    return Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)


def bar(used: float, total: float, *, width: int = 12) -> Text:
    """A capacity bar: filled share of ``total`` taken."""
    share = 0.0 if not total else min(max(used / total, 0.0), 1.0)
    filled = round(share * width)
    style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def age(stamp: str | None) -> str:
    """How long ago an ISO time was: "5s", "3m", "2h", "4d"."""
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return _span((datetime.now(UTC) - then).total_seconds())


def until(stamp: str) -> str:
    """How long until an ISO time: "5s", "3m", "2h", "4d" (0s once it has passed)."""
    return _span((datetime.fromisoformat(stamp.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds())


def _span(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
