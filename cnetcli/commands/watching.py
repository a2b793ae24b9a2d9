"""Views that keep themselves current (``ps --watch``, ``top``)."""

import time

from rich.live import Live

from ..output import console, emit, output_format

REFRESH_SECONDS = 2.0


def watch(fetch, render, *, every: float = REFRESH_SECONDS) -> None:
    """Fetch and show again every ``every`` seconds until Ctrl-C: redrawn in place on a terminal,
    one frame after another elsewhere (and as JSON or YAML documents when asked)."""
    out = console()
    if output_format() != "table" or not out.is_terminal:
        while True:
            emit(fetch(), render)
            time.sleep(every)
    with Live(render(fetch()), console=out, auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(every)
            live.update(render(fetch()), refresh=True)
