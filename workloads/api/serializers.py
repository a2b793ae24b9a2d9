"""Request shapes (the seed's payloads) and response shapes. Business rules live in services."""

from rest_framework import serializers

from core.fields import (
    NoUnknownFieldsMixin,
    RelativePathField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StringListField,
    StringMapField,
)
from nodes.resources import MILLICORES_PER_CORE, Resources

from ..container_policy import mount_allowed, network_allowed, privileged_allowed
from ..models import RestartPolicy, Workload, WorkloadEvent, WorkloadType

MAX_CORES = 100_000
MAX_BYTES = 2**60  # an exbibyte: anything larger is a typo, not a machine
MAX_GPUS = 4096
DEFAULT_CPU_CORES = 0.1
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024


class RequirementsSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """The seed's ``requirements``: cpu in cores (may be fractional), memory and storage in bytes."""

    cpu = StrictFloatField(required=False, default=DEFAULT_CPU_CORES)
    memory = StrictIntegerField(required=False, default=DEFAULT_MEMORY_BYTES, min_value=1, max_value=MAX_BYTES)
    gpu = StrictIntegerField(required=False, default=0, min_value=0, max_value=MAX_GPUS)
    storage = StrictIntegerField(required=False, default=0, min_value=0, max_value=MAX_BYTES)

    def validate_cpu(self, value: float) -> float:
        if not 0 < value <= MAX_CORES:
            raise serializers.ValidationError(f"must be more than 0 and at most {MAX_CORES} cores")
        if round(value * MILLICORES_PER_CORE) < 1:
            raise serializers.ValidationError("must be at least 0.001 cores (1 millicore)")
        return value

    def to_resources(self) -> Resources:
        data = self.validated_data
        return Resources(
            cpu=round(data["cpu"] * MILLICORES_PER_CORE),
            gpu=data["gpu"],
            memory=data["memory"],
            storage=data["storage"],
        )


class ProcessConfigSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    command = StrictCharField(max_length=4096)
    args = StringListField(required=False, default=list)
    env = StringMapField(required=False, default=dict)
    working_dir = RelativePathField(required=False, max_length=4096)


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
        for volume in volumes:
            if not mount_allowed(volume["source"]):
                raise serializers.ValidationError(
                    f"host bind mount {volume['source']!r} is not allowed on this cluster; use a named volume"
                )
        return volumes


class MLModelConfigSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    model_path = RelativePathField(max_length=4096)
    model_type = StrictCharField(required=False, max_length=64, default="sklearn")
    framework = StrictCharField(required=False, max_length=64, default="scikit-learn")
    port = StrictIntegerField(required=False, min_value=1, max_value=65535)
    command = StrictCharField(required=False, max_length=4096)
    args = StringListField(required=False, default=list)
    env = StringMapField(required=False, default=dict)
    working_dir = RelativePathField(required=False, max_length=4096)


CONFIG_SERIALIZERS = {
    WorkloadType.PROCESS: ProcessConfigSerializer,
    WorkloadType.CONTAINER: ContainerConfigSerializer,
    WorkloadType.MLMODEL: MLModelConfigSerializer,
}


class WorkloadSubmitSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    name = StrictCharField(max_length=255)
    type = serializers.ChoiceField(choices=WorkloadType.choices)
    requirements = serializers.DictField(required=False)
    config = serializers.DictField()
    node = StrictCharField(required=False, max_length=128)
    strategy = StrictCharField(required=False, max_length=64)
    priority = StrictIntegerField(required=False, default=0, min_value=-1000, max_value=1000)
    restart_policy = serializers.ChoiceField(choices=RestartPolicy.choices, required=False, default="never")
    max_restarts = StrictIntegerField(required=False, default=3, min_value=0, max_value=100)

    def validate(self, attrs):
        config = CONFIG_SERIALIZERS[attrs["type"]](data=attrs["config"])
        if not config.is_valid():
            raise serializers.ValidationError({"config": config.errors})
        requirements = RequirementsSerializer(data=attrs.get("requirements", {}))
        if not requirements.is_valid():
            raise serializers.ValidationError({"requirements": requirements.errors})
        attrs["config"] = config.validated_data
        attrs["requirements"] = requirements.to_resources()
        return attrs


class WorkloadSerializer(serializers.ModelSerializer):
    requirements = serializers.SerializerMethodField()
    node = serializers.CharField(source="node.node_id", default=None, read_only=True)
    submitted_node = serializers.CharField(source="submitted_node.node_id", default=None, read_only=True)
    owner = serializers.CharField(source="owner.username", default=None, read_only=True)

    class Meta:
        model = Workload
        fields = [
            "id", "name", "type", "status", "requirements", "config", "node", "submitted_node",
            "strategy", "priority", "owner", "restart_policy", "max_restarts", "restart_count",
            "exit_code", "reason", "runtime", "created_at", "scheduled_at", "started_at",
            "finished_at", "stop_requested_at",
        ]
        read_only_fields = fields

    def get_requirements(self, workload: Workload) -> dict:
        return workload.requirements.to_api()


class WorkloadEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkloadEvent
        fields = ["created_at", "kind", "from_status", "to_status", "node_id", "reason", "details"]
        read_only_fields = fields


class LogQuerySerializer(serializers.Serializer):
    lines = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000)
