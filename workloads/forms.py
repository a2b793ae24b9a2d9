"""The console's submit form: friendly fields in, the API's payload out.

The type switch and the run fields come from the kind registry: each kind lists the inputs it
shows and turns their values into its config (``Kind.form_fields``, ``Kind.form_config``), using
the shared inputs and helpers below. The fields only read what a person typed (a command line,
sizes such as ``512Mi``, ``KEY=VALUE`` lines) and refuse only what cannot be read; the caller
validates the payload with the API's own ``WorkloadSubmitSerializer`` and ``workload_submit``,
and their messages come back onto the fields they name.
"""

import copy
import json
import re
import shlex

from django import forms
from django.conf import settings
from django.core.validators import EMPTY_VALUES

from scheduler.strategies import STRATEGIES

from .kinds import Kind, kind_choices, kind_get, kinds
from .models import RestartPolicy

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]i?)?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4, "pi": 1024**5}

REQUIREMENTS = ("cpu", "memory", "gpu", "storage")
# API error paths whose form field goes by another name; any other path names its field (less
# its "config." or "requirements." prefix), else the extra config or the form as a whole.
API_FIELDS = {"requirements": "memory", "config.command": "command_line", "config.args": "command_line"}


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


# --- inputs that read typed text, for this form and for kinds' form fields ----------------------
class NumberField(forms.CharField):
    """A number where the text reads as one; other text is kept, for the API to refuse by name."""

    def to_python(self, value):
        text = super().to_python(value)
        return number_value(text) if text else text


class SizeField(forms.CharField):
    """Bytes, from ``512Mi``, ``2Gi`` or ``500M`` as well; other text is kept for the API to refuse."""

    def to_python(self, value):
        text = super().to_python(value)
        return size_value(text) if text else text


class CommandLineField(forms.CharField):
    """A command line split as a shell would split it, into an argument list that never meets one."""

    def to_python(self, value) -> list[str]:
        try:
            return shlex.split(super().to_python(value))
        except ValueError as error:
            raise forms.ValidationError(f"cannot split this command line: {error}") from error


class EnvField(forms.CharField):
    """``KEY=value`` lines as a dict."""

    def to_python(self, value) -> dict:
        env, errors = {}, []
        for number, line in enumerate(super().to_python(value).splitlines(), 1):
            if not line.strip():
                continue
            key, sep, text = line.partition("=")
            if not sep or not key.strip():
                errors.append(f"line {number}: expected KEY=value")
                continue
            env[key.strip()] = text
        if errors:
            raise forms.ValidationError(errors)
        return env


class JSONObjectField(forms.CharField):
    def to_python(self, value) -> dict:
        text = super().to_python(value)
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"not valid JSON: {error}") from error
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value


# The run inputs most kinds share: one each on the page, whichever kinds show them.
COMMAND_LINE = CommandLineField(
    required=False, label="Command line", widget=forms.TextInput(attrs={"class": "mono wide"}),
    help_text="Run as an argument list, never through a shell; quote as you would in one: "
              "<code>sh -c 'echo hello'</code>.",
)
ENV = EnvField(required=False, label="Environment", widget=forms.Textarea(
    attrs={"rows": 3, "class": "mono", "placeholder": "KEY=value, one a line"}))
WORKING_DIR = forms.CharField(required=False, label="Working folder")


def argv_config(argv: list[str]) -> dict:
    """A split command line as a process takes it: ``command`` and ``args``."""
    return {"command": argv[0], "args": argv[1:]} if argv else {}


def filled(values: dict, *names: str) -> dict:
    """The named values a person filled in; empty inputs are left to the API's defaults."""
    return {name: values[name] for name in names if values[name] not in EMPTY_VALUES}


def run_fields(registered: list[Kind]) -> dict[str, list[str]]:
    """Every kind's input names, each once, with the kinds that show it; the order keeps each
    kind's own (a name is placed before the next of its kind's names already placed)."""
    shown: dict[str, list[str]] = {}
    order: list[str] = []
    for kind in registered:
        names = list(kind.form_fields)
        for at, name in enumerate(names):
            if name not in order:
                order.insert(min((order.index(n) for n in names[at + 1:] if n in order), default=len(order)), name)
            shown.setdefault(name, []).append(kind.name)
    return {name: shown[name] for name in order}


class WorkloadSubmitForm(forms.Form):
    name = forms.CharField(required=False, max_length=255, widget=forms.TextInput(attrs={"autofocus": True}))
    type = forms.ChoiceField(choices=kind_choices, widget=forms.RadioSelect(attrs={"class": "type-switch"}))
    cpu = NumberField(required=False, label="CPU (cores)", widget=forms.TextInput(attrs={"placeholder": "0.1"}))
    memory = SizeField(required=False, widget=forms.TextInput(attrs={"placeholder": "64Mi"}),
                       help_text="Bytes, or with a unit: <code>512Mi</code>, <code>2Gi</code>, <code>500M</code>.")
    gpu = NumberField(required=False, label="GPUs", widget=forms.TextInput(attrs={"placeholder": "0"}))
    storage = SizeField(required=False, widget=forms.TextInput(attrs={"placeholder": "0"}))
    node = forms.CharField(required=False, label="Submit at node",
                           widget=forms.TextInput(attrs={"list": "node-choices"}))
    strategy = forms.ChoiceField(required=False)
    priority = NumberField(required=False, widget=forms.TextInput(attrs={"placeholder": "0"}))
    restart_policy = forms.ChoiceField(choices=RestartPolicy.choices, initial=RestartPolicy.NEVER, required=False)
    max_restarts = NumberField(required=False, label="Max restarts", widget=forms.TextInput(
        attrs={"placeholder": "3"}))
    max_runtime_seconds = NumberField(required=False, label="Time limit (seconds)", widget=forms.TextInput(
        attrs={"placeholder": "none"}), help_text="A run past it is stopped and ends failed.")
    extra_config = JSONObjectField(
        required=False, label="More config (JSON)", widget=forms.Textarea(attrs={"rows": 3, "class": "mono"}),
        help_text="Any other key the API takes for this type, e.g. "
                  "<code>{\"volumes\": [{\"source\": \"data\", \"target\": \"/data\"}]}</code>.",
    )

    def __init__(self, *args, node_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        registered = kinds()
        self.fields["type"].initial = registered[0].name if registered else None
        # Which kinds show each run input (the template hides the others).
        self.run_fields = run_fields(registered)
        definitions = {}
        for kind in reversed(registered):  # the first kind to list a name defines its input
            definitions.update(kind.form_fields)
        for name in self.run_fields:
            self.fields[name] = copy.deepcopy(definitions[name])
        default = settings.CNET_DEFAULT_STRATEGY
        self.fields["strategy"].choices = [("", f"default ({default})")] + [(n, n) for n in sorted(STRATEGIES)]
        self.fields["node"].help_text = (
            f"Where it is submitted; it runs there if it fits, else below it, else at a peer. "
            f"Empty: <code>{settings.CNET_LOCAL_NODE_ID}</code>."
        )
        self.node_choices = list(node_choices)

    def clean(self):
        data = super().clean()
        chosen = data.get("type")
        if chosen:
            for name, shown_by in self.run_fields.items():
                if chosen not in shown_by:
                    self.errors.pop(name, None)  # a hidden input of another kind must not stop this one
        return data

    def to_payload(self) -> dict:
        """The API body, from a valid form."""
        data = self.cleaned_data
        kind = kind_get(data["type"])
        config = {**kind.form_config({name: data[name] for name in kind.form_fields}), **data["extra_config"]}
        payload = {"name": data["name"], "type": kind.name, "config": config}
        if requirements := filled(data, *REQUIREMENTS):
            payload["requirements"] = requirements
        return payload | filled(data, "node", "strategy", "restart_policy", "priority", "max_restarts",
                                 "max_runtime_seconds")

    def add_api_errors(self, errors) -> None:
        """Put the API's messages on the fields that fed the paths they name."""
        for path, message in flatten_errors(errors):
            field = self._field_for(path)
            if field is None:
                self.add_error(None, f"{path}: {message}" if path else message)
            else:
                self.add_error(field, message)

    def _field_for(self, path: str) -> str | None:
        section, _, key = path.partition(".")
        if path in API_FIELDS:
            name = API_FIELDS[path]
        elif section == "config" and key:
            name = key if key in self.run_fields else "extra_config"
        elif section == "requirements":
            name = key if key in REQUIREMENTS else None
        else:
            name = path
        return name if name in self.fields else None
