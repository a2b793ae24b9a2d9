"""``cnet``: the entry point (``[project.scripts]`` in pyproject.toml). Each command is a thin
layer over one or two REST calls; failures print one line and exit non-zero, never a traceback."""

import click
from click.shell_completion import get_completion_class

from . import config
from .client import Api, CliError
from .commands import cluster, models, workloads
from .output import output_option


class Cnet(click.Group):
    """Turns a ``CliError`` (the API's message, an unreachable server, a bad file) into one line on
    stderr and its exit code; Ctrl-C ends quietly."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CliError as error:
            click.echo(click.style("error: ", fg="red", bold=True) + str(error), err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(cls=Cnet, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--server", metavar="URL", help="the control plane (default: CNET_SERVER, then `cnet login`'s)")
@click.option("--token", metavar="TOKEN", help="an API token (default: CNET_TOKEN, then `cnet login`'s)")
@output_option
@click.pass_context
def app(ctx: click.Context, server: str | None, token: str | None):
    """CNET Agent from the terminal: submit and follow work, see where it would go and why."""
    ctx.ensure_object(dict)
    ctx.obj["settings"] = config.load(server=server, token=token)


@app.command()
@click.option("--server", "login_server", metavar="URL", help=f"default: {config.DEFAULT_SERVER}")
@click.option("--token", "login_token", metavar="TOKEN", help="the API token (make run prints it); asked if not given")
@click.pass_context
def login(ctx: click.Context, login_server: str | None, login_token: str | None):
    """Check a server and token, and keep them (mode 0600) for the next commands."""
    settings = ctx.find_root().obj["settings"]
    server = (login_server or settings.server).rstrip("/")
    token = login_token or click.prompt("API token", hide_input=True)
    checked = Api(config.Settings(server=server, token=token))
    try:
        checked.get("/workloads", limit=1)  # any user may list their own: checks the token alone
    finally:
        checked.close()
    path = config.store(server=server, token=token)
    click.echo(f"logged in to {server} (kept in {path})")


@app.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str):
    """Print the shell completion script: eval "$(cnet completion bash)"."""
    click.echo(get_completion_class(shell)(app, {}, "cnet", "_CNET_COMPLETE").source())


for command in (*workloads.COMMANDS, *cluster.COMMANDS, models.models):
    app.add_command(command)
