"""ML models: list, deploy, predict, versions (and uploads, with progress), promote, logs, tasks."""

import json
import os
import uuid
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from ..client import CliError
from ..context import api
from ..jobs import read_job_file
from ..output import age, console, emit, new_table, output_format, output_option, status_text
from ..sizes import Size, human_bytes


@click.group()
def models():
    """ML models: train (deploy), serve, predict, and their versions."""


@models.command("list")
@output_option
def list_models():
    """Models, newest first."""
    emit(api().get("/ml/models", limit=1000), _models_table)


def model_id_of(name_or_id: str) -> str:
    """MODEL as the user wrote it: a model's id, or its name (which the API lists by)."""
    try:
        return str(uuid.UUID(name_or_id))
    except ValueError:
        pass
    listed = api().get("/ml/models", name=name_or_id, limit=2)
    found = listed["results"] if isinstance(listed, dict) else listed
    if len(found) != 1:
        raise CliError(f"no model is named {name_or_id!r}" if not found else
                       f"several models are named {name_or_id!r}: give its id (cnet models list)")
    return found[0]["id"]


def _models_table(listed: list[dict]):
    table = new_table("ID", "NAME", "MODEL TYPE", "STATUS", "VERSION", "SERVING", "AGE")
    for model in listed:
        promoted = model.get("promoted_version") or {}
        table.add_row(model["id"], model["name"], model.get("model_type") or "-", status_text(model["status"]),
                      str(promoted.get("number", "-")) if isinstance(promoted, dict) else str(promoted),
                      "yes" if model.get("serving") else "-", age(model.get("created_at")))
    return table


@models.command()
@click.option("-f", "--file", "deploy_file", metavar="FILE", help="the seed's deploy body, as YAML or JSON")
@click.option("--name")
@click.option("--model-type", help="e.g. linear_regression")
@click.option("--model-path", help="where the script writes the artifact (relative)")
@click.option("--script-path")
@click.option("--framework")
@click.option("--working-dir")
@click.option("--env", multiple=True, metavar="KEY=VALUE")
@click.option("--cpu", type=float, help="cores (resources.cpu_limit)")
@click.option("--memory", type=Size(), help="resources.memory_limit, e.g. 512Mi")
@click.option("--node", metavar="ID")
@click.option("--serve", is_flag=True, default=None, help="serve it once trained")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@output_option
def deploy(deploy_file, command, env, cpu, memory, **fields):
    """Train a model with its script as a workload: cnet models deploy --name N --model-path P -- python3 train.py"""
    body = read_job_file(deploy_file)[0] if deploy_file else {}
    body |= {key: value for key, value in fields.items() if value is not None}
    if command:
        body["command"], body["args"] = command[0], list(command[1:])
    if env:
        body.setdefault("env", {}).update(dict(pair.partition("=")[::2] for pair in env))
    resources = {key: value for key, value in (("cpu_limit", cpu), ("memory_limit", memory)) if value is not None}
    if resources:
        body.setdefault("resources", {}).update(resources)
    emit(api().post("/ml/models", body), lambda model: model["id"])


@models.command()
@click.argument("model_id", metavar="MODEL")
@click.argument("input_data", metavar="INPUT")
@click.option("--mode", type=click.Choice(["auto", "sync", "async"]), default="auto", show_default=True)
@output_option
def predict(model_id, input_data, mode):
    """Ask a model (MODEL: its id or name): INPUT is JSON (5.5, [1, 2] or [[1, 2]])."""
    try:
        value = json.loads(input_data)
    except ValueError:
        raise CliError(f"INPUT must be JSON (e.g. 5.5 or [[1, 2]]), not {input_data!r}", exit_code=2) from None
    emit(api().post(f"/ml/models/{model_id_of(model_id)}/predict", {"input_data": value, "mode": mode}),
         lambda answer: json.dumps(answer.get("prediction", answer)))


@models.command()
@click.argument("model_id", metavar="MODEL")
@click.option("--upload", "upload", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="add this artifact as a new version (progress shown)")
@click.option("--metrics", metavar="JSON", help="with --upload: the version's metrics, a JSON object")
@click.option("--framework", help="with --upload")
@click.option("--promote", is_flag=True, help="with --upload: serve this version from now on")
@output_option
def versions(model_id, upload, metrics, framework, promote):
    """A model's versions, newest first; or --upload FILE to add one."""
    model_id = model_id_of(model_id)
    if upload is None:
        emit(api().get(f"/ml/models/{model_id}/versions"), _versions_table)
        return
    fields = {"promote": "true" if promote else "false"}
    if metrics:
        fields["metrics"] = metrics
    if framework:
        fields["framework"] = framework
    path = Path(upload)
    with path.open("rb") as file, _progress() as progress:
        task = progress.add_task(f"uploading {path.name}", total=os.fstat(file.fileno()).st_size)
        reading = _Reporting(file, lambda size: progress.advance(task, size))
        version = api().post(f"/ml/models/{model_id}/versions", None, data=fields,
                             files={"file": (path.name, reading, "application/octet-stream")})
    emit(version, lambda v: f"version {v['number']} ({v['id']}, {human_bytes(v['size_bytes'])})"
                            f"{' promoted' if v.get('promoted') else ''}")


def _progress() -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=console(stderr=True), transient=True)


class _Reporting:
    """A file whose reads are reported (the upload's progress); httpx streams it in chunks and
    learns its length from its descriptor."""

    def __init__(self, file, advance):
        self._file, self._advance = file, advance

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._advance(len(chunk))
        return chunk

    def __getattr__(self, name):
        return getattr(self._file, name)


def _versions_table(listed: list[dict]):
    table = new_table("NUMBER", "ID", "SIZE", "FRAMEWORK", "SOURCE", "METRICS", "PROMOTED", "AGE")
    for version in listed:
        table.add_row(str(version["number"]), version["id"], human_bytes(version.get("size_bytes")),
                      version.get("framework") or "-", version.get("source") or "-",
                      json.dumps(version.get("metrics") or {}), "yes" if version.get("promoted") else "",
                      age(version.get("created_at")))
    return table


@models.command()
@click.argument("model_id", metavar="MODEL")
@click.argument("version_id", metavar="VERSION")
@output_option
def promote(model_id, version_id):
    """Serve VERSION (a version id) of MODEL from now on."""
    emit(api().post(f"/ml/models/{model_id_of(model_id)}/versions/{version_id}/promote"),
         lambda v: f"version {v['number']} of {model_id} promoted")


@models.command("logs")
@click.argument("model_id", metavar="MODEL")
@click.option("--tail", type=int, metavar="N", help="only the last N lines")
@output_option
def model_logs(model_id, tail):
    """The output of MODEL's latest training run (the seed's …/ml/models/ID/logs)."""
    emit(api().get(f"/ml/models/{model_id_of(model_id)}/logs", lines=tail),
         lambda log: "\n".join(log["lines"]) or None)


@models.command()
@click.option("--limit", type=int, default=50, show_default=True)
@output_option
def tasks(limit):
    """Training runs, model servers and predictions, newest first, each with its log file (the seed's /api/tasks)."""
    lines = 0 if output_format() == "table" else None  # a table shows no output: read none
    emit(api().get("/tasks", limit=limit, lines=lines), _tasks_table)


def _tasks_table(listed: list[dict]):
    table = new_table("ID", "KIND", "NAME", "STATUS", "NODE", "LOG FILE")
    for task in listed:
        table.add_row(str(task["id"]), task.get("kind") or "-", task.get("name") or "-",
                      status_text(task.get("status")), task.get("node") or "-", task.get("log_file") or "-")
    return table
