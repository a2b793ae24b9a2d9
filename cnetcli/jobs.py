"""Submit bodies from ``cnet run`` / ``cnet plan`` options and job files.

A job file holds the API's own fields (``POST /api/workloads``), as YAML or JSON: one workload
(a mapping), or several (a list, YAML documents separated by ``---``, or the API's
``{"workloads": [...]}``), which may name each other in ``depends_on`` by their ``key``."""

import json
from pathlib import Path

import click
import yaml

from .client import CliError

CONDITIONS = ("succeeded", "failed", "ended")


def read_job_file(path: str) -> list[dict]:
    try:
        text = click.open_file(path).read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        documents = [json.loads(text)] if path.endswith(".json") else [d for d in yaml.safe_load_all(text)
                                                                       if d is not None]
    except (ValueError, yaml.YAMLError) as error:
        raise CliError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}") from None
    workloads = []
    for document in documents:
        if isinstance(document, dict) and isinstance(document.get("workloads"), list):
            document = document["workloads"]  # the API's own body for several: {"workloads": [...]}
        workloads.extend(document if isinstance(document, list) else [document])
    if not workloads or not all(isinstance(workload, dict) for workload in workloads):
        raise CliError(f"{path}: expected a workload (a mapping of the API's fields) or a list of them")
    return workloads


def dependency(text: str) -> dict:
    """``--after ID`` (waits for its success) or ``--after ID:failed`` / ``ID:ended``."""
    workload, _, condition = text.partition(":")
    if condition and condition not in CONDITIONS:
        raise click.BadParameter(f"{condition!r}: the condition is one of {', '.join(CONDITIONS)}",
                                 param_hint="--after")
    return {"workload": workload, "condition": condition or "succeeded"}


def apply_options(body: dict, *, name=None, type_=None, cpu=None, memory=None, gpu=None, storage=None, count=None,
                  after=(), schedule=None, max_runtime=None, node=None, strategy=None, priority=None, restart=None,
                  env=(), command=()) -> dict:
    """``body`` with what the options say put in (fields the options leave out stay as they are)."""
    body = json.loads(json.dumps(body))  # a copy: the file's own data stays as read
    if command:
        config = body.setdefault("config", {})
        config["command"], config["args"] = command[0], list(command[1:])
    if env:
        body.setdefault("config", {}).setdefault("env", {}).update(_env(env))
    requirements = {key: value for key, value in (("cpu", cpu), ("memory", memory), ("gpu", gpu),
                                                  ("storage", storage)) if value is not None}
    if requirements:
        body.setdefault("requirements", {}).update(requirements)
    fields = {"name": name, "type": type_, "count": count, "schedule": schedule, "max_runtime_seconds": max_runtime,
              "node": node, "strategy": strategy, "priority": priority, "restart_policy": restart}
    body.update({key: value for key, value in fields.items() if value is not None})
    if after:
        body["depends_on"] = [*body.get("depends_on", []), *after]
    if "name" not in body and body.get("config", {}).get("command"):
        body["name"] = Path(str(body["config"]["command"])).name
    body.setdefault("type", "process")
    return body


def _env(pairs) -> dict:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def bodies(job_file: str | None, command: tuple, options: dict) -> list[dict]:
    """The submit bodies ``cnet run`` / ``cnet plan`` send, in file order."""
    given = {key: value for key, value in options.items() if value not in (None, (), [])}
    if job_file is None:
        if not command:
            raise CliError("nothing to run: give a command after `--` (cnet run -- echo hi) or a job file "
                           "(-f job.yaml)", exit_code=2)
        return [apply_options({}, command=command, **given)]
    workloads = read_job_file(job_file)
    if len(workloads) > 1 and (given or command):
        raise CliError(f"{job_file} holds {len(workloads)} workloads: options apply to a file of one only",
                       exit_code=2)
    return [apply_options(workload, command=command, **given) for workload in workloads]
