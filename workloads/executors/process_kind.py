"""The ``process`` kind: a program on the node, run as an argument list (never through a shell).

Every node can run one, so it needs no capability. Its executor is ``process.ProcessExecutor``.
"""

from django.conf import settings
from rest_framework import serializers

from core.fields import (
    EnvironmentField,
    NoUnknownFieldsMixin,
    RelativePathField,
    StrictCharField,
    StrictIntegerField,
    StringListField,
)

from ..forms import COMMAND_LINE, ENV, WORKING_DIR, argv_config, filled
from ..kinds import Kind


def pids_within_cap(value: int) -> None:
    cap = settings.CNET_WORKLOAD_PIDS_MAX  # read per call: the operator's, not the one at import
    if value > cap:
        raise serializers.ValidationError(f"at most {cap} processes on this cluster (CNET_WORKLOAD_PIDS_MAX)")


def pids_field() -> StrictIntegerField:
    """``requirements.pids`` (kept as ``config.pids``, its alias): the most processes and threads
    it may have at once (a fork bomb stops there); default CNET_WORKLOAD_PIDS_LIMIT. Enforced by its
    cgroup (``executors.limits``) and a container's ``pids_limit``."""
    return StrictIntegerField(required=False, min_value=1, validators=[pids_within_cap])


class ProcessConfigSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    command = StrictCharField(max_length=4096)
    args = StringListField(required=False, default=list)
    env = EnvironmentField(required=False, default=dict)
    working_dir = RelativePathField(required=False, max_length=4096)
    pids = pids_field()


def form_config(values: dict) -> dict:
    return {**argv_config(values["command_line"]), **filled(values, "env", "working_dir")}


KIND = Kind(
    name="process",
    label="Process",
    config_serializer=ProcessConfigSerializer,
    executor="workloads.executors.process.ProcessExecutor",
    form_fields={"command_line": COMMAND_LINE, "env": ENV, "working_dir": WORKING_DIR},
    form_config=form_config,
)
