"""Request shapes (the seed's payloads) and response shapes. Business rules live in services.

Each kind's ``config`` shape is its own serializer, found in the kind registry."""

from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictCharField, StrictIntegerField
from nodes.api.fields import BytesField, CoresField
from nodes.resources import Resources

from ..executors.process_kind import pids_field
from ..kinds import kind_choices, kind_get
from ..models import (
    ARRAY_MAX_COUNT,
    SCHEDULE_DEFAULT_DEADLINE_SECONDS,
    SCHEDULE_MAX_DEADLINE_SECONDS,
    ConcurrencyPolicy,
    DependencyCondition,
    OnDisconnect,
    RestartPolicy,
    Schedule,
    ScheduleEvent,
    ScheduleRun,
    Workload,
    WorkloadArray,
    WorkloadArrayEvent,
    WorkloadDependency,
    WorkloadEvent,
)
from ..plan import workload_queues
from ..selectors import array_status, dependency_list, schedule_next_runs, schedule_workload, workload_array_counts
from ..services.schedules import RUN_SUFFIX_LENGTH

MAX_GPUS = 4096
# What the column holds (a PositiveIntegerField): some 68 years.
MAX_RUNTIME_SECONDS = 2**31 - 1
DEFAULT_CPU_MILLICORES = 100
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024


class RequirementsSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """The seed's ``requirements``: cpu in cores (may be fractional), memory and storage in bytes;
    ``pids``, the process count limit, is no resource to place by: it travels as ``config.pids``."""

    cpu = CoresField(required=False, default=DEFAULT_CPU_MILLICORES)
    memory = BytesField(required=False, default=DEFAULT_MEMORY_BYTES, min_value=1)
    gpu = StrictIntegerField(required=False, default=0, min_value=0, max_value=MAX_GPUS)
    storage = BytesField(required=False, default=0)
    pids = pids_field()

    def to_resources(self) -> Resources:
        return Resources(**{name: value for name, value in self.validated_data.items() if name != "pids"})


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


# Dependencies one submission may name, and items one graph request may hold.
MAX_DEPENDENCIES = 100
MAX_GRAPH_ITEMS = 500


class DependencySerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """``{"workload": <workload or array id, or a key in the same request>, "condition": ...}``."""

    workload = StrictCharField(max_length=64)
    condition = serializers.ChoiceField(choices=DependencyCondition.choices, required=False,
                                        default=DependencyCondition.SUCCEEDED)


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
    on_disconnect = serializers.ChoiceField(
        choices=OnDisconnect.choices, required=False,
        help_text="once its agent has not reached the control plane for its fence time: stop it, or keep it "
                  "running (and not replaced while its node is unreachable); default: stop if its restart policy "
                  "would replace it, else keep")
    # Seconds a run may last before its agent stops it (it then ends failed); null: no limit.
    max_runtime_seconds = StrictIntegerField(required=False, allow_null=True, default=None, min_value=1,
                                             max_value=MAX_RUNTIME_SECONDS)
    # An array: this many instances, named <name>-<index> (index from 0).
    count = StrictIntegerField(required=False, min_value=1, max_value=ARRAY_MAX_COUNT)
    depends_on = DependencySerializer(many=True, required=False, max_length=MAX_DEPENDENCIES)

    def validate(self, attrs):
        # The submitter's name: a container may use the named volumes "<username>-…" as its own.
        user = getattr(self.context.get("request"), "user", None)
        config = kind_get(attrs["type"]).config_serializer(data=attrs["config"],
                                                           context={"owner": getattr(user, "username", None)})
        if not config.is_valid():
            raise serializers.ValidationError({"config": config.errors})
        requirements = RequirementsSerializer(data=attrs.get("requirements", {}))
        if not requirements.is_valid():
            raise serializers.ValidationError({"requirements": requirements.errors})
        attrs["config"] = config.validated_data
        attrs["requirements"] = requirements.to_resources()
        pids = requirements.validated_data.get("pids")
        if pids is not None:
            if attrs["config"].get("pids") not in (None, pids):
                raise serializers.ValidationError({"requirements": {"pids": [
                    f"{pids} differs from config.pids ({attrs['config']['pids']}); give one of them"]}})
            attrs["config"] = {**attrs["config"], "pids": pids}  # where the executors read it
        return attrs


class ScheduleSubmitSerializer(WorkloadSubmitSerializer):
    """A workload's submission body plus when to run it: ``schedule`` (cron, five fields or a
    nickname such as ``@daily``), read in ``timezone``. Each run is one workload (no ``count`` or
    ``depends_on``), named ``<name>-<slot, UTC>``. Whether cron and timezone parse is the service's
    check (so every caller gets it)."""

    name = StrictCharField(max_length=Workload._meta.get_field("name").max_length - RUN_SUFFIX_LENGTH)
    schedule = StrictCharField(max_length=255)
    timezone = StrictCharField(required=False, default="UTC", max_length=64)
    concurrency_policy = serializers.ChoiceField(choices=ConcurrencyPolicy.choices, required=False,
                                                 default=ConcurrencyPolicy.ALLOW)
    starting_deadline_seconds = StrictIntegerField(required=False, default=SCHEDULE_DEFAULT_DEADLINE_SECONDS,
                                                   min_value=1, max_value=SCHEDULE_MAX_DEADLINE_SECONDS)
    count = None
    depends_on = None

    def validate(self, attrs):
        attrs = super().validate(attrs)
        attrs["cron"], attrs["timezone_name"] = attrs.pop("schedule"), attrs.pop("timezone")
        return attrs


class GraphItemSerializer(WorkloadSubmitSerializer):
    """One workload (or array) of a graph request; ``key`` is how the others name it."""

    key = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$", required=False)


class WorkloadGraphSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """``{"workloads": [item, ...]}``: several submissions that may depend on each other by key."""

    workloads = GraphItemSerializer(many=True, min_length=1, max_length=MAX_GRAPH_ITEMS)


class DependencyOutSerializer(serializers.ModelSerializer):
    workload = serializers.SerializerMethodField()
    kind = serializers.SerializerMethodField()
    name = serializers.SerializerMethodField()

    class Meta:
        model = WorkloadDependency
        fields = ["workload", "kind", "name", "condition", "state"]
        read_only_fields = fields

    def get_workload(self, dependency) -> str:
        return str(dependency.target_id)

    def get_kind(self, dependency) -> str:
        return "array" if dependency.on_array_id else "workload"

    def get_name(self, dependency) -> str:
        return (dependency.on_array or dependency.on_workload).name


class WorkloadSerializer(serializers.ModelSerializer):
    requirements = serializers.SerializerMethodField()
    node = serializers.CharField(source="node.node_id", default=None, read_only=True)
    submitted_node = serializers.CharField(source="submitted_node.node_id", default=None, read_only=True)
    owner = serializers.CharField(source="owner.username", default=None, read_only=True)
    # While pending: its queue place, estimated start and why it waits (``queue`` in the context,
    # by id, for a page; else read for this one); null otherwise.
    queue = serializers.SerializerMethodField()
    on_disconnect = serializers.CharField(source="disconnect_action", read_only=True)  # chosen or implied

    class Meta:
        model = Workload
        fields = [
            "id", "name", "type", "status", "requirements", "config", "node", "submitted_node",
            "strategy", "priority", "owner", "restart_policy", "max_restarts", "restart_count",
            "max_runtime_seconds", "exit_code", "reason", "runtime", "created_at", "scheduled_at", "started_at",
            "finished_at", "stop_requested_at", "array", "array_index", "queue", "on_disconnect",
        ]
        read_only_fields = fields

    def get_requirements(self, workload: Workload) -> dict:
        return workload.requirements.to_api()

    def get_queue(self, workload: Workload) -> dict | None:
        known = self.context.setdefault("queue", {})
        if workload.pk not in known:
            known |= workload_queues(workloads=[workload])
        return known[workload.pk]


class WorkloadDependenciesSerializer(serializers.Serializer):
    """What a workload waits on (an array instance: its array's dependencies) and what waits on it."""

    depends_on = DependencyOutSerializer(many=True)
    dependents = serializers.ListField(child=serializers.DictField())


class WorkloadArraySerializer(serializers.ModelSerializer):
    """An array: its instances' counts by status and its dependencies (``counts`` and
    ``dependencies`` in the context, by array id, else read)."""

    owner = serializers.CharField(source="owner.username", default=None, read_only=True)
    counts = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    depends_on = serializers.SerializerMethodField()
    workloads = serializers.SerializerMethodField()

    class Meta:
        model = WorkloadArray
        fields = ["id", "name", "type", "count", "owner", "status", "progress", "counts", "depends_on",
                  "workloads", "created_at"]
        read_only_fields = fields

    def _counts(self, array: WorkloadArray) -> dict:
        known = self.context.setdefault("counts", {})
        if array.pk not in known:
            known |= workload_array_counts(array_ids=[array.pk])
        return known[array.pk]

    def get_counts(self, array: WorkloadArray) -> dict:
        return self._counts(array)

    def get_status(self, array: WorkloadArray) -> str:
        return array_status(self._counts(array))

    def get_progress(self, array: WorkloadArray) -> float:
        counts = self._counts(array)
        return round(counts["ended"] / counts["total"], 4) if counts["total"] else 1.0

    def get_depends_on(self, array: WorkloadArray) -> list[dict]:
        known = self.context.get("dependencies")
        on = known.get(array.pk, []) if known is not None else dependency_list(array_ids=[array.pk])
        return DependencyOutSerializer(on, many=True).data

    def get_workloads(self, array: WorkloadArray) -> str:
        return f"/api/workloads?array={array.pk}"


# Times as every other field of the API writes them.
_TIME = serializers.DateTimeField()


class ScheduleSerializer(serializers.ModelSerializer):
    """A schedule: when it runs (``next_runs``: the next five, UTC), its latest run, and what each
    run submits (``workload``, in the submission body's shape)."""

    schedule = serializers.CharField(source="cron", read_only=True)
    owner = serializers.CharField(source="owner.username", default=None, read_only=True)
    paused = serializers.SerializerMethodField()
    next_runs = serializers.SerializerMethodField()
    last_run = serializers.SerializerMethodField()
    workload = serializers.SerializerMethodField()
    workloads = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = ["id", "name", "schedule", "timezone", "concurrency_policy", "starting_deadline_seconds",
                  "paused", "paused_at", "next_runs", "last_run", "owner", "workload", "workloads", "created_at"]
        read_only_fields = fields

    def get_paused(self, schedule: Schedule) -> bool:
        return schedule.paused_at is not None

    def get_next_runs(self, schedule: Schedule) -> list[str]:
        return [_TIME.to_representation(slot) for slot in schedule_next_runs(schedule=schedule)]

    def get_last_run(self, schedule: Schedule) -> dict | None:
        if not hasattr(schedule, "last_slot"):  # not read through schedule_list
            run = schedule.runs.order_by("-slot").first()
            schedule.last_slot, schedule.last_outcome = (run.slot, run.outcome) if run else (None, None)
        if schedule.last_slot is None:
            return None
        return {"slot": _TIME.to_representation(schedule.last_slot), "outcome": schedule.last_outcome}

    def get_workload(self, schedule: Schedule) -> dict:
        return schedule_workload(schedule=schedule)

    def get_workloads(self, schedule: Schedule) -> str:
        return f"/api/workloads?schedule={schedule.pk}"


class ScheduleRunSerializer(serializers.ModelSerializer):
    workload_name = serializers.CharField(source="workload.name", default=None, read_only=True)
    workload_status = serializers.CharField(source="workload.status", default=None, read_only=True)

    class Meta:
        model = ScheduleRun
        fields = ["slot", "outcome", "workload", "workload_name", "workload_status", "reason", "created_at"]
        read_only_fields = fields


class ScheduleEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScheduleEvent
        fields = ["created_at", "reason", "details"]
        read_only_fields = fields


class WorkloadArrayEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkloadArrayEvent
        fields = ["created_at", "reason", "placed", "details"]
        read_only_fields = fields


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
    dropped_bytes = serializers.IntegerField(
        help_text="bytes of the middle of the output dropped over the log cap (a line in `lines` marks where)")


class LogQuerySerializer(serializers.Serializer):
    lines = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000)
