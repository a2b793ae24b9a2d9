"""What one invocation of ``cnet`` shares between its commands: the settings and the API client."""

import click

from .client import Api


def api() -> Api:
    """The API client of this invocation, made on first use and closed at its end."""
    root = click.get_current_context().find_root()
    if "api" not in root.obj:
        root.obj["api"] = Api(root.obj["settings"])
        root.call_on_close(root.obj["api"].close)
    return root.obj["api"]
