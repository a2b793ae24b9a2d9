"""The registry of workload kinds: what each type of workload is, declared once beside its executor.

A kind names the shape of its ``config`` (a serializer), its executor, the node capability it
needs and the fields the console's submit form shows for it, and registers from its app's
``ready()``. The API, placement, the agent and the console ask here and never branch on a kind's
name, so a new kind is one module, with no edit to ``workloads/``: the pattern of Nomad's task
drivers and Django's database backends.

The executor is named by dotted path, as Django names a database backend: only an agent that runs
the kind imports it (``executors.base.executor_for``), and a kind's module stays light enough for
its own app's services to import (``mlmodels``' executor calls ``mlmodels``' services).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from django import forms
from rest_framework import serializers

from .models import Workload


class UnknownKind(LookupError):
    """No kind of that name is registered here."""


def available() -> dict:
    """The capability every node with the kind's app installed has."""
    return {"available": True}


def no_config(values: dict) -> dict:
    return {}


@dataclass(frozen=True)
class Kind:
    name: str  # what Workload.type holds
    label: str  # what people read: the console's type switch
    config_serializer: type[serializers.Serializer]  # the shape of its config (shape only: rules live in services)
    executor: str  # dotted path of its Executor class
    # The key of a node's capabilities that must say {"available": true} for the node to run it; None: every node
    # can. An agent reports each kind under this key, or under the kind's name where it is None.
    capability: str | None = None
    probe: Callable[[], dict] = available  # what an agent reports under that key, e.g. whether an engine answers
    # The console's inputs for it, in the order it shows them. A name another kind lists too is one input that
    # both show (defined by the kind registered first); ``form_config`` turns their cleaned values into its config.
    form_fields: dict[str, forms.Field] = field(default_factory=dict)
    form_config: Callable[[dict], dict] = no_config


_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    if kind.name in _KINDS:
        raise ValueError(f"workload kind {kind.name!r} is already registered")
    width = Workload._meta.get_field("type").max_length
    if len(kind.name) > width:
        raise ValueError(f"workload kind {kind.name!r} is longer than the {width} characters Workload.type holds")
    _KINDS[kind.name] = kind


def unregister_kind(name: str) -> None:
    del _KINDS[name]


def kind_get(name: str) -> Kind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown workload type {name!r}; known: {', '.join(_KINDS)}") from None


def kinds() -> list[Kind]:
    """Every registered kind, in the order they registered."""
    return list(_KINDS.values())


def kind_choices() -> list[tuple[str, str]]:
    """(name, label) of every kind: choices for a field that must name one."""
    return [(kind.name, kind.label) for kind in _KINDS.values()]


def kind_capability(name: str) -> str | None:
    """The node capability a workload of this type needs. A type no kind here declares (its app
    was removed) needs the one named after it, so it waits for an agent that runs it instead of
    landing on a node that cannot."""
    kind = _KINDS.get(name)
    return kind.capability if kind else name


def kind_capabilities() -> dict[str, dict]:
    """What this agent reports it can run, each kind probed under its capability's key."""
    return {kind.capability or kind.name: kind.probe() for kind in _KINDS.values()}
