"""Request shapes (the seed's payloads) and response shapes. Business rules live in services.

Each kind's ``config`` shape is its own serializer, found in the kind registry."""

from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictCharField, StrictIntegerField
from nodes.api.fields import BytesField, CoresField
from nodes.resources import Resources

from ..kinds import kind_choices, kind_get
from ..models import RestartPolicy, Workload, WorkloadEvent

MAX_GPUS = 4096
DEFAULT_CPU_MILLICORES = 100
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024


class RequirementsSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """The seed's ``requirements``: cpu in cores (may be fractional), memory and storage in bytes."""

    cpu = CoresField(required=False, default=DEFAULT_CPU_MILLICORES)
    memory = BytesField(required=False, default=DEFAULT_MEMORY_BYTES, min_value=1)
    gpu = StrictIntegerField(required=False, default=0, min_value=0, max_value=MAX_GPUS)
    storage = BytesField(required=False, default=0)

    def to_resources(self) -> Resources:
        return Resources(**self.validated_data)


class KindField(serializers.ChoiceField):
    """The name of a registered kind. DRF makes a serializer's fields anew for each serializer
    (``__deepcopy__`` calls ``__init__``), so a kind registered after this module loaded is known."""

    default_error_messages = {"unknown": "{input!r} is not a workload type here; known: {known}."}

    def __init__(self, **kwargs):
        super().__init__(choices=kind_choices(), **kwargs)

    def to_internal_value(self, data):
        if str(data) not in self.choice_strings_to_values:
            self.fail("unknown", input=data, known=", ".join(self.choices))
        return super().to_internal_value(data)


class WorkloadSubmitSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    name = StrictCharField(max_length=255)
    type = KindField()
    requirements = serializers.DictField(required=False)
    config = serializers.DictField()
    node = StrictCharField(required=False, max_length=128)
    strategy = StrictCharField(required=False, max_length=64)
    priority = StrictIntegerField(required=False, default=0, min_value=-1000, max_value=1000)
    restart_policy = serializers.ChoiceField(choices=RestartPolicy.choices, required=False, default="never")
    max_restarts = StrictIntegerField(required=False, default=3, min_value=0, max_value=100)

    def validate(self, attrs):
        config = kind_get(attrs["type"]).config_serializer(data=attrs["config"])
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


class LogLinesSerializer(serializers.Serializer):
    """Output as the seeds answer it: ``lines`` one per item, and ``logs`` the same lines joined."""

    lines = serializers.ListField(child=serializers.CharField())
    logs = serializers.SerializerMethodField()

    def get_logs(self, log) -> str:
        return "\n".join(self.fields["lines"].get_attribute(log))


class WorkloadLogsSerializer(LogLinesSerializer):
    workload_id = serializers.CharField()
    status = serializers.CharField()


class LogQuerySerializer(serializers.Serializer):
    lines = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000)
