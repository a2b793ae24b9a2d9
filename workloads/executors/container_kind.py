"""The ``container`` kind: an image run by the node's container engine (``container.executor``).

It needs a node whose agent found an engine, reported under ``container`` with its version.
"""

import re

from django import forms
from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictCharField, StringListField, StringMapField

from ..container_policy import is_host_path, mount_allowed, network_allowed, privileged_allowed, volume_allowed
from ..forms import COMMAND_LINE, ENV, WORKING_DIR, filled, number_value
from ..kinds import Kind
from .container.engine import detect_container_engine
from .process_kind import pids_field


class PortsField(serializers.Field):
    """``{"80/tcp": 8080}``, or ``["8080:80", 9000]``; normalized to the Docker SDK's dict."""

    def to_internal_value(self, data):
        items = data.items() if isinstance(data, dict) else None
        if items is None:
            if not isinstance(data, list):
                raise serializers.ValidationError("must be a map of container port to host port, or a list")
            items = [self._split(entry) for entry in data]
        ports = {}
        for container, host in items:
            container = str(container)
            number = container.split("/")[0]
            if not number.isdigit() or not 0 < int(number) < 65536:
                raise serializers.ValidationError(f"container port {container!r} is not a port number")
            if host is not None and (isinstance(host, bool) or not isinstance(host, int) or not 0 < host < 65536):
                raise serializers.ValidationError(f"host port {host!r} is not a port number")
            ports[container if "/" in container else f"{container}/tcp"] = host
        return ports

    @staticmethod
    def _split(entry):
        if isinstance(entry, int) and not isinstance(entry, bool):
            return entry, None
        if isinstance(entry, str) and ":" in entry:
            host, _, container = entry.rpartition(":")
            if host.isdigit():
                return container, int(host)
        if isinstance(entry, str):
            return entry, None
        raise serializers.ValidationError(f"port {entry!r} must be \"host:container\" or a number")

    def to_representation(self, value):
        return value


class VolumeSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    source = StrictCharField(max_length=1024)
    target = StrictCharField(max_length=1024)
    read_only = serializers.BooleanField(required=False, default=False)

    def validate_target(self, value: str) -> str:
        if not value.startswith("/"):
            raise serializers.ValidationError("must be an absolute path inside the container")
        return value


class ContainerConfigSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    image = StrictCharField(max_length=512)
    # The seed writes command as a list (["nginx"]); a plain string works too.
    command = serializers.JSONField(required=False)
    args = StringListField(required=False, default=list)
    env = StringMapField(required=False, default=dict)
    ports = PortsField(required=False)
    working_dir = StrictCharField(required=False, max_length=4096)
    volumes = VolumeSerializer(many=True, required=False)
    pull_policy = serializers.ChoiceField(
        choices=["if-not-present", "always", "never"], required=False, default="if-not-present"
    )
    privileged = serializers.BooleanField(required=False, default=False)
    network_mode = StrictCharField(required=False, max_length=64)
    pids = pids_field()

    def validate_command(self, value):
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(part, str) for part in value):
            return value
        raise serializers.ValidationError("must be a string or a list of strings")

    def validate_privileged(self, value: bool) -> bool:
        if not privileged_allowed(value):
            raise serializers.ValidationError("privileged containers are not allowed on this cluster")
        return value

    def validate_network_mode(self, value: str) -> str:
        if not network_allowed(value):
            raise serializers.ValidationError(f"network mode {value!r} is not allowed on this cluster")
        return value

    def validate_volumes(self, volumes: list[dict]) -> list[dict]:
        """``context["owner"]``: the submitter's username, whose own volumes are ``<username>-…``."""
        for volume in volumes:
            source = volume["source"]
            if is_host_path(source):
                if not mount_allowed(source):
                    raise serializers.ValidationError(
                        f"host bind mount {source!r} is not allowed on this cluster; use a named volume")
            elif not volume_allowed(source, owner=self.context.get("owner")):
                raise serializers.ValidationError(
                    f"volume {source!r} is not on this cluster's allowlist and not yours (name yours "
                    f"\"<username>-…\")")
        return volumes


def form_config(values: dict) -> dict:
    config = filled(values, "image", "env", "working_dir")
    if values["command_line"]:
        config["command"] = values["command_line"]  # the whole line replaces the image's entrypoint
    if ports := [number_value(port) for port in re.split(r"[,\s]+", values["ports"]) if port]:
        config["ports"] = ports
    return config


KIND = Kind(
    name="container",
    label="Container",
    config_serializer=ContainerConfigSerializer,
    executor="workloads.executors.container.executor.ContainerExecutor",
    capability="container",
    probe=detect_container_engine,
    form_fields={
        "image": forms.CharField(required=False, help_text="A local image, e.g. <code>busybox:latest</code>."),
        "command_line": COMMAND_LINE,
        "ports": forms.CharField(required=False, help_text="<code>8080:80</code>, comma separated."),
        "env": ENV,
        "working_dir": WORKING_DIR,
    },
    form_config=form_config,
)
