"""The console's submit form: friendly fields in, the API's payload out.

The form itself checks almost nothing. It turns what a person typed (a command line, sizes
such as ``512Mi``, ``KEY=VALUE`` lines) into the JSON body ``POST /api/workloads`` takes,
and the caller validates that body with the API's own ``WorkloadSubmitSerializer`` and
``workload_submit``; their messages come back onto the fields they name.
"""

import json
import re
import shlex

from django import forms
from django.conf import settings

from scheduler.strategies import STRATEGIES

from .models import RestartPolicy, WorkloadType

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]i?)?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4, "pi": 1024**5}

# Where the API reports an error (its path in the payload) → the form field that fed it.
API_FIELDS = {
    "name": "name", "type": "type", "node": "node", "strategy": "strategy", "priority": "priority",
    "restart_policy": "restart_policy", "max_restarts": "max_restarts",
    "requirements.cpu": "cpu", "requirements.memory": "memory", "requirements.gpu": "gpu",
    "requirements.storage": "storage", "requirements": "memory",
    "config.command": "command_line", "config.args": "command_line", "config.env": "env",
    "config.working_dir": "working_dir", "config.image": "image", "config.ports": "ports",
    "config.model_path": "model_path", "config.model_type": "model_type", "config.framework": "framework",
    "config.port": "port",
}


def size_value(text: str):
    """'512Mi' → 536870912, '1G' → 10**9, '42' → 42; anything else unchanged for the API to refuse."""
    match = _SIZE.match(text)
    if not match:
        return text
    number, unit = match.groups()
    amount = float(number) * _UNITS[(unit or "").lower()]
    return int(amount) if amount == int(amount) else amount


def number_value(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def flatten_errors(errors, prefix: str = "") -> list[tuple[str, str]]:
    """DRF's nested error dicts as (path, message) pairs: ("config.command", "This field is required.")."""
    if isinstance(errors, dict):
        pairs = []
        for key, value in errors.items():
            path = key if not prefix else prefix if key == "non_field_errors" else f"{prefix}.{key}"
            if key == "detail" and prefix == "":
                continue  # DomainError.as_dict() repeats its field message as "detail"
            pairs += flatten_errors(value, path)
        return pairs
    if isinstance(errors, list | tuple):
        return [pair for item in errors for pair in flatten_errors(item, prefix)]
    return [(prefix, str(errors))]


class WorkloadSubmitForm(forms.Form):
    name = forms.CharField(required=False, max_length=255, widget=forms.TextInput(attrs={"autofocus": True}))
    type = forms.ChoiceField(choices=WorkloadType.choices, initial=WorkloadType.PROCESS,
                             widget=forms.RadioSelect(attrs={"class": "type-switch"}))
    command_line = forms.CharField(
        required=False, label="Command line", widget=forms.TextInput(attrs={"class": "mono wide"}),
        help_text="Run as an argument list, never through a shell; quote as you would in one: "
                  "<code>sh -c 'echo hello'</code>.",
    )
    image = forms.CharField(required=False, help_text="A local image, e.g. <code>busybox:latest</code>.")
    ports = forms.CharField(required=False, help_text="<code>8080:80</code>, comma separated.")
    model_path = forms.CharField(required=False, label="Model path",
                                 help_text="Relative to the agent's working folder, e.g. "
                                           "<code>models/linear_regression_model.joblib</code>.")
    model_type = forms.CharField(required=False, label="Model type")
    framework = forms.CharField(required=False)
    port = forms.CharField(required=False, label="Serving port")
    env = forms.CharField(required=False, label="Environment", widget=forms.Textarea(
        attrs={"rows": 3, "class": "mono", "placeholder": "KEY=value, one a line"}))
    working_dir = forms.CharField(required=False, label="Working folder")
    cpu = forms.CharField(required=False, label="CPU (cores)", widget=forms.TextInput(attrs={"placeholder": "0.1"}))
    memory = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": "64Mi"}),
                             help_text="Bytes, or with a unit: <code>512Mi</code>, <code>2Gi</code>, "
                                       "<code>500M</code>.")
    gpu = forms.CharField(required=False, label="GPUs", widget=forms.TextInput(attrs={"placeholder": "0"}))
    storage = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": "0"}))
    node = forms.CharField(required=False, label="Submit at node",
                           widget=forms.TextInput(attrs={"list": "node-choices"}))
    strategy = forms.ChoiceField(required=False)
    priority = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": "0"}))
    restart_policy = forms.ChoiceField(choices=RestartPolicy.choices, initial=RestartPolicy.NEVER, required=False)
    max_restarts = forms.CharField(required=False, label="Max restarts", widget=forms.TextInput(
        attrs={"placeholder": "3"}))
    extra_config = forms.CharField(
        required=False, label="More config (JSON)", widget=forms.Textarea(attrs={"rows": 3, "class": "mono"}),
        help_text="Any other key the API takes for this type, e.g. "
                  "<code>{\"volumes\": [{\"source\": \"data\", \"target\": \"/data\"}]}</code>.",
    )

    # Which config fields each type shows (the template hides the others).
    TYPE_FIELDS = {
        WorkloadType.PROCESS: ["command_line", "env", "working_dir"],
        WorkloadType.CONTAINER: ["image", "command_line", "ports", "env", "working_dir"],
        WorkloadType.MLMODEL: ["model_path", "model_type", "framework", "port", "command_line", "env",
                               "working_dir"],
    }

    def __init__(self, *args, node_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        default = settings.CNET_DEFAULT_STRATEGY
        self.fields["strategy"].choices = [("", f"default ({default})")] + [(n, n) for n in sorted(STRATEGIES)]
        self.fields["node"].help_text = (
            f"Where it is submitted; it runs there if it fits, else below it, else at a peer. "
            f"Empty: <code>{settings.CNET_LOCAL_NODE_ID}</code>."
        )
        self.node_choices = list(node_choices)

    def to_payload(self) -> dict | None:
        """The API body, or None when a field could not even be read (errors are on the form)."""
        data = self.cleaned_data
        kind = data.get("type") or WorkloadType.PROCESS
        payload: dict = {"name": data["name"], "type": kind, "config": {}}
        config = payload["config"]
        argv = self._argv(data["command_line"])
        if argv:
            if kind == WorkloadType.CONTAINER:
                config["command"] = argv
            else:
                config["command"], config["args"] = argv[0], argv[1:]
        if data["env"].strip():
            config["env"] = self._env(data["env"])
        if data["working_dir"]:
            config["working_dir"] = data["working_dir"]
        if kind == WorkloadType.CONTAINER:
            if data["image"]:
                config["image"] = data["image"]
            if data["ports"].strip():
                config["ports"] = [number_value(p) for p in re.split(r"[,\s]+", data["ports"].strip()) if p]
        if kind == WorkloadType.MLMODEL:
            for field in ("model_path", "model_type", "framework"):
                if data[field]:
                    config[field] = data[field]
            if data["port"]:
                config["port"] = number_value(data["port"])
        if data["extra_config"].strip():
            config.update(self._json(data["extra_config"]))
        requirements = {}
        for field, read in (("cpu", number_value), ("memory", size_value), ("gpu", number_value),
                            ("storage", size_value)):
            if data[field].strip():
                requirements[field] = read(data[field].strip())
        if requirements:
            payload["requirements"] = requirements
        for field in ("node", "strategy", "restart_policy"):
            if data.get(field):
                payload[field] = data[field]
        for field in ("priority", "max_restarts"):
            if data[field].strip():
                payload[field] = number_value(data[field].strip())
        return None if self.errors else payload

    def add_api_errors(self, errors) -> None:
        """Put the API's messages on the fields that fed the paths they name."""
        for path, message in flatten_errors(errors):
            field = API_FIELDS.get(path)
            if field is None and path.startswith("config."):
                field = "extra_config"
            if field is None:
                self.add_error(None, f"{path}: {message}" if path else message)
            else:
                self.add_error(field, message)

    def _argv(self, text: str) -> list[str]:
        try:
            return shlex.split(text)
        except ValueError as error:
            self.add_error("command_line", f"cannot split this command line: {error}")
            return []

    def _env(self, text: str) -> dict:
        env = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                self.add_error("env", f"line {number}: expected KEY=value")
                continue
            env[key.strip()] = value
        return env

    def _json(self, text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            self.add_error("extra_config", f"not valid JSON: {error}")
            return {}
        if not isinstance(value, dict):
            self.add_error("extra_config", "must be a JSON object")
            return {}
        return value
