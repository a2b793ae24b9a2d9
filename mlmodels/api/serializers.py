"""The seed's ML payloads (deploy, predict) and response shapes. Business rules live in services."""

import re

from rest_framework import serializers

from core.fields import (
    EnvironmentField,
    NoUnknownFieldsMixin,
    RelativePathField,
    StrictCharField,
    StringListField,
)
from nodes.api.fields import BytesField, CoresField
from nodes.resources import MILLICORES_PER_CORE, Resources
from workloads.api.serializers import LogLinesSerializer
from workloads.models import Workload

from ..models import MLModel, ModelRun, ModelVersion, PredictionTask
from ..selectors import model_status, model_version_get
from ..serving import ServingPortField

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ResourcesSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """The seed's ``resources``: cpu_limit in cores, memory_limit and disk_limit in bytes."""

    cpu_limit = CoresField(required=False, default=MILLICORES_PER_CORE)
    memory_limit = BytesField(required=False, default=512_000_000, min_value=1)
    disk_limit = BytesField(required=False, default=0)


def _resources(data: dict) -> Resources:
    return Resources(cpu=data["cpu_limit"], gpu=0, memory=data["memory_limit"], storage=data["disk_limit"])


class DeploySerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """POST /api/ml/models, exactly the seed's body; ``framework``, ``node``, ``strategy``,
    ``serve`` and ``port`` are optional extras."""

    name = StrictCharField(max_length=255)
    model_type = StrictCharField(required=False, default="custom", max_length=64)
    model_path = RelativePathField(max_length=4096)
    script_path = RelativePathField(required=False, default="", allow_blank=True, max_length=4096)
    command = StrictCharField(required=False, max_length=4096)
    args = StringListField(required=False, default=list, max_length=1000)
    env = EnvironmentField(required=False, default=dict)
    working_dir = RelativePathField(required=False, default=".", max_length=4096)
    resources = serializers.JSONField(required=False, default=dict)
    framework = StrictCharField(required=False, default="scikit-learn", max_length=64)
    node = StrictCharField(required=False, max_length=128)
    strategy = StrictCharField(required=False, max_length=64)
    serve = serializers.BooleanField(required=False, default=False)
    port = ServingPortField(required=False)

    def validate_model_type(self, value: str) -> str:
        if not NAME_RE.match(value):
            raise serializers.ValidationError("letters, digits, '_', '-' and '.' only (e.g. linear_regression)")
        return value

    def validate_env(self, env: dict) -> dict:
        for key in env:
            if not key or "=" in key or "\x00" in key:
                raise serializers.ValidationError(f"{key!r} is not a valid variable name")
        return env

    def validate(self, attrs):
        resources = ResourcesSerializer(data=attrs.get("resources") or {})
        if not isinstance(attrs.get("resources"), dict):
            raise serializers.ValidationError({"resources": ["must be an object with cpu_limit, memory_limit, "
                                                             "disk_limit"]})
        if not resources.is_valid():
            raise serializers.ValidationError({"resources": resources.errors})
        attrs["resources"] = _resources(resources.validated_data)
        for key, value in (("MODEL_PATH", attrs["model_path"]), ("MODEL_TYPE", attrs["model_type"])):
            if key in attrs["env"] and attrs["env"][key] != value:
                raise serializers.ValidationError(
                    {"env": {key: [f"must equal {key.lower()} ({value!r}) or be left out"]}})
        return attrs


class ServeSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """POST …/serve; ``version`` (a version of the model in ``context["model"]``) defaults to the promoted one."""

    version = serializers.UUIDField(required=False)
    port = ServingPortField(required=False)
    node = StrictCharField(required=False, max_length=128)
    resources = serializers.JSONField(required=False)

    def validate_version(self, value) -> ModelVersion:
        version = model_version_get(model=self.context["model"], version_id=value)
        if version is None:
            raise serializers.ValidationError("no such version of this model")
        return version

    def validate_resources(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object with cpu_limit, memory_limit, disk_limit")
        resources = ResourcesSerializer(data=value)
        if not resources.is_valid():
            raise serializers.ValidationError(resources.errors)
        return _resources(resources.validated_data)


class PredictSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """The seed's ``{"input_data": 5.5}``; ``mode`` is "auto" (default), "sync" or "async"."""

    input_data = serializers.JSONField()
    mode = serializers.ChoiceField(choices=["auto", "sync", "async"], required=False, default="auto")

    def validate_input_data(self, value):
        if value is None:
            raise serializers.ValidationError("must be a number, a list of numbers or a list of lists")
        return value


class UploadSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    file = serializers.FileField()
    framework = StrictCharField(required=False, max_length=64)
    metrics = serializers.JSONField(required=False, default=dict)
    promote = serializers.BooleanField(required=False, default=False)

    def validate_metrics(self, value):
        if isinstance(value, str):
            import json

            try:
                value = json.loads(value)
            except ValueError:
                raise serializers.ValidationError("must be a JSON object") from None
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        return value


class VersionSerializer(serializers.ModelSerializer):
    model_id = serializers.UUIDField(read_only=True)
    workload_id = serializers.UUIDField(read_only=True, allow_null=True)
    promoted = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "model_id", "number", "checksum", "size_bytes", "framework", "model_type", "filename",
                  "metrics", "source", "workload_id", "promoted", "created_at"]
        read_only_fields = fields

    def get_promoted(self, version: ModelVersion) -> bool:
        promoted = self.context.get("promoted_version_id")
        if promoted is None:
            promoted = version.model.promoted_version_id
        return promoted == version.pk


class MLModelSerializer(serializers.ModelSerializer):
    """The seed's model listing (id, name, type "ml_model", status, command, args, env, working_dir,
    resources, created_at, started_at), then the registry's view of it."""

    type = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    resources = serializers.SerializerMethodField()
    started_at = serializers.SerializerMethodField()
    training_task_id = serializers.SerializerMethodField()
    promoted_version = serializers.SerializerMethodField()
    serving = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner.username", default=None, read_only=True)

    class Meta:
        model = MLModel
        fields = ["id", "name", "type", "status", "command", "args", "env", "working_dir", "resources",
                  "created_at", "started_at", "model_type", "model_path", "script_path", "framework",
                  "training_task_id", "promoted_version", "serving", "owner"]
        read_only_fields = fields

    def get_type(self, model) -> str:
        return "ml_model"

    def get_status(self, model) -> str:
        return model_status(model=model)

    def get_resources(self, model) -> dict:
        return {"cpu_limit": model.cpu_millicores / MILLICORES_PER_CORE, "memory_limit": model.memory_bytes,
                "disk_limit": model.disk_bytes}

    def get_started_at(self, model):
        value = getattr(model, "training_started_at", None)
        return serializers.DateTimeField().to_representation(value) if value else None

    def get_training_task_id(self, model):
        value = getattr(model, "training_workload_id", None)
        return str(value) if value else None

    def get_promoted_version(self, model):
        version = model.promoted_version
        if version is None:
            return None
        return {"id": str(version.pk), "number": version.number, "checksum": version.checksum,
                "metrics": version.metrics}

    def get_serving(self, model) -> bool:
        return bool(getattr(model, "serving_now", False))


class PredictionTaskSerializer(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField()
    type = serializers.SerializerMethodField()
    name = serializers.SerializerMethodField()
    model_id = serializers.UUIDField(read_only=True)
    version = serializers.IntegerField(source="version.number", default=None, read_only=True)
    prediction = serializers.SerializerMethodField()
    log_file = serializers.SerializerMethodField()

    class Meta:
        model = PredictionTask
        fields = ["id", "kind", "type", "name", "model_id", "version", "status", "input_data", "prediction",
                  "result", "error", "error_status", "log_file", "log", "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    def get_kind(self, task) -> str:
        return "prediction"

    def get_type(self, task) -> str:
        return "ml_prediction"

    def get_name(self, task) -> str:
        return f"predict:{task.model_id}"

    def get_prediction(self, task):
        return (task.result or {}).get("prediction")

    def get_log_file(self, task):
        return None  # its log lives in the database (``log``), not in a file on a node


class TrainingLogSerializer(LogLinesSerializer):
    """GET …/logs: the latest training run's output."""

    model_id = serializers.CharField()
    task_id = serializers.CharField(allow_null=True)
    status = serializers.CharField(allow_null=True)


class ServingRunSerializer(serializers.ModelSerializer):
    """A model server: the workload that runs it and where it listens."""

    task_id = serializers.UUIDField(source="workload_id", read_only=True)
    status = serializers.CharField(source="workload.status", read_only=True)
    version = serializers.IntegerField(source="version.number", default=None, read_only=True)
    node = serializers.CharField(source="workload.node.node_id", default=None, read_only=True)
    address = serializers.SerializerMethodField()
    port = serializers.SerializerMethodField()
    reason = serializers.CharField(source="workload.reason", read_only=True)

    class Meta:
        model = ModelRun
        fields = ["task_id", "status", "version", "node", "address", "port", "reason"]

    @staticmethod
    def _serving(run) -> dict:
        return (run.workload.runtime or {}).get("serving") or {}

    def get_address(self, run) -> str | None:
        return self._serving(run).get("address")

    def get_port(self, run) -> int | None:
        return self._serving(run).get("port") or run.workload.config.get("port")


class TaskListQuerySerializer(serializers.Serializer):
    """GET /api/tasks?limit=&offset=&lines= (lines: each training run's or server's last lines)."""

    limit = serializers.IntegerField(required=False, default=100, min_value=0, max_value=1000)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10**9)
    lines = serializers.IntegerField(required=False, default=20, min_value=0, max_value=100_000)


class TaskQuerySerializer(serializers.Serializer):
    lines = serializers.IntegerField(required=False, default=100, min_value=0, max_value=1_000_000)


class MLWorkloadTaskSerializer(serializers.ModelSerializer):
    """A training run or model server as the seed's task: its ``log_file`` on its node, and ``log``
    (its last lines, from the database: ``context["logs"]`` by workload id)."""

    kind = serializers.SerializerMethodField()
    type = serializers.SerializerMethodField()
    model_id = serializers.SerializerMethodField()
    command = serializers.SerializerMethodField()
    args = serializers.SerializerMethodField()
    node = serializers.CharField(source="node.node_id", default=None, read_only=True)
    serving = serializers.SerializerMethodField()
    log_file = serializers.SerializerMethodField()
    log = serializers.SerializerMethodField()

    class Meta:
        model = Workload
        fields = ["id", "kind", "type", "name", "model_id", "status", "command", "args", "node", "serving",
                  "exit_code", "reason", "log_file", "log", "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    def get_kind(self, workload) -> str:
        return "training" if workload.config.get("command") else "serving"

    def get_type(self, workload) -> str:
        return "ml_model"

    def get_model_id(self, workload) -> str | None:
        run = getattr(workload, "ml_run", None)  # None too for a workload submitted through /api/workloads
        return str(run.model_id) if run else workload.config.get("model_id")

    def get_command(self, workload) -> str | None:
        return workload.config.get("command")

    def get_args(self, workload) -> list[str]:
        return workload.config.get("args", [])

    def get_serving(self, workload) -> dict | None:
        return (workload.runtime or {}).get("serving")

    def get_log_file(self, workload) -> str | None:
        return ((workload.runtime or {}).get("log_files") or {}).get("stdout")

    def get_log(self, workload) -> str:
        return "\n".join(self.context.get("logs", {}).get(str(workload.pk), []))


class TaskSerializer(serializers.BaseSerializer):
    """One row of /api/tasks: a prediction task or an ML workload, each in its own shape."""

    def to_representation(self, task):
        serializer = PredictionTaskSerializer if isinstance(task, PredictionTask) else MLWorkloadTaskSerializer
        return serializer(task, context=self.context).data
