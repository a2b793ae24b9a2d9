"""The node API's bodies and answers: shape only (business rules live in the services)."""

from django.utils import timezone
from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictCharField, StrictIntegerField, StringListField
from nodes.api.fields import BytesField, CoresField
from nodes.models import NodeStatus
from nodes.resources import Resources

from ..membership import WORK_BATCH
from ..models import LogStream, OnDisconnect, RestartPolicy, Workload, WorkloadStatus
from ..reports import AGENT_REPORTS

MAX_GPUS = 4096
MAX_RUNNING = 10_000  # workloads one agent says it supervises in one beat
MAX_ANSWER_SECONDS = 3600.0  # a beat's answer time, as its agent reports it
MAX_REPORTS = 1000
MAX_CHUNKS = 1000
MAX_LOG_TEXT = 1024 * 1024  # characters of text in one batch of chunks
MAX_SEQ = 2**31 - 1  # WorkloadLog.seq fits a PositiveIntegerField everywhere


class JoinSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    join_token = StrictCharField(max_length=256)
    node_id = StrictCharField(max_length=128)


class JoinAnswerSerializer(serializers.Serializer):
    node_id = serializers.CharField()
    credential = serializers.CharField(help_text="send it as 'Authorization: Node <credential>'; shown once")


class CapacitySerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """The node's size in the seed's units: cpu in cores (fractions allowed), sizes in bytes."""

    cpu = CoresField()
    gpu = StrictIntegerField(required=False, default=0, min_value=0, max_value=MAX_GPUS)
    memory = BytesField()
    storage = BytesField(required=False, default=0)

    def to_internal_value(self, data):
        return Resources(**super().to_internal_value(data))


class RegisterSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    node_id = StrictCharField(max_length=128)
    address = StrictCharField(max_length=255, required=False, default="127.0.0.1")
    port = StrictIntegerField(min_value=1, max_value=65535, required=False, default=8080)
    capacity = CapacitySerializer()
    parent = StrictCharField(max_length=300, required=False, allow_null=True, allow_blank=True, default=None)
    peers = StringListField(required=False, default=list, max_length=1000)
    labels = serializers.DictField(required=False, default=None)
    capabilities = serializers.DictField(required=False, default=None)


class TimingSerializer(serializers.Serializer):
    heartbeat_seconds = serializers.FloatField(help_text="beat again after this long")
    offline_after_seconds = serializers.FloatField(
        help_text="a node silent this long is declared offline and its work handed on: fence before then")
    server_time = serializers.DateTimeField(help_text="the control plane's clock, the only one that counts")


class RegisterAnswerSerializer(TimingSerializer):
    node_id = serializers.CharField()
    epoch = serializers.IntegerField(help_text="send it with every heartbeat and report")
    status = serializers.ChoiceField(choices=NodeStatus.choices)


class HeartbeatSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    epoch = StrictIntegerField(min_value=1, help_text="the epoch registration answered")
    usage = serializers.DictField(required=False, default=dict)
    running = serializers.ListField(child=serializers.UUIDField(), required=False, default=list,
                                    max_length=MAX_RUNNING, help_text="ids of the workloads the agent supervises")
    previous_answer_seconds = serializers.FloatField(
        required=False, default=None, allow_null=True, min_value=0.0, max_value=MAX_ANSWER_SECONDS,
        help_text="how long this agent's previous beat (or, on its first, its registration) took from sending to "
                  "its answer, on its own monotonic clock: while beats are answered slowly, the control plane "
                  "judges every deadline that much later")


# Declared rather than read off the model: a ModelSerializer builds its fields anew for every
# answer, and that cost as much as reading the work.
class WorkSerializer(serializers.Serializer):
    """What an agent needs to start (or re-adopt) a workload: what its executors read of it."""

    id = serializers.UUIDField(read_only=True)
    name = serializers.CharField(read_only=True)
    type = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=WorkloadStatus.choices, read_only=True)
    config = serializers.JSONField(read_only=True)
    requirements = serializers.SerializerMethodField()
    restart_policy = serializers.ChoiceField(choices=RestartPolicy.choices, read_only=True)
    restart_count = serializers.IntegerField(read_only=True)
    priority = serializers.IntegerField(read_only=True)
    runtime = serializers.JSONField(read_only=True)
    agent_epoch = serializers.IntegerField(read_only=True, allow_null=True)
    scheduled_at = serializers.DateTimeField(read_only=True, allow_null=True)
    started_at = serializers.DateTimeField(read_only=True, allow_null=True)
    stop_requested_at = serializers.DateTimeField(read_only=True, allow_null=True)
    log_next_seq = serializers.IntegerField(read_only=True, default=0,
                                            help_text="the number to give this run's first output chunk")
    owner = serializers.CharField(source="owner_username", default=None, read_only=True,
                                  help_text="who submitted it: staff may map an owner to an account on nodes")
    max_runtime_seconds = serializers.IntegerField(read_only=True, allow_null=True)
    time_left_seconds = serializers.SerializerMethodField(
        help_text="of its max_runtime_seconds, by the control plane's clock (null: no limit); past it the agent "
                  "stops the workload and reports it failed")
    on_disconnect = serializers.ChoiceField(
        source="disconnect_action", choices=OnDisconnect.choices, read_only=True,
        help_text="once the control plane has answered nothing for the fence time: stop it, or keep it running")

    def get_time_left_seconds(self, workload: Workload) -> float | None:
        if workload.max_runtime_seconds is None:
            return None
        if workload.started_at is None:
            return float(workload.max_runtime_seconds)
        elapsed = (timezone.now() - workload.started_at).total_seconds()
        return max(0.0, workload.max_runtime_seconds - elapsed)

    def get_requirements(self, workload: Workload) -> dict[str, int]:
        return {"cpu_millicores": workload.cpu_millicores, "gpu_count": workload.gpu_count,
                "memory_bytes": workload.memory_bytes, "storage_bytes": workload.storage_bytes}


class HeartbeatAnswerSerializer(TimingSerializer):
    status = serializers.ChoiceField(choices=NodeStatus.choices)
    kill = serializers.ListField(child=serializers.UUIDField(),
                                 help_text="workloads in 'running' that are no longer scheduled or running here")
    stop = serializers.ListField(child=serializers.UUIDField(),
                                 help_text="workloads in 'running' that a user asked to stop: end and report them")
    work = WorkSerializer(many=True, help_text="workloads scheduled here that are not in 'running': start them "
                                               f"(at most {WORK_BATCH}, in placement order)")
    more_work = serializers.BooleanField(help_text="more are scheduled here than 'work' lists: ask GET work now")


class WorkQuerySerializer(NoUnknownFieldsMixin, serializers.Serializer):
    status = serializers.ChoiceField(choices=[WorkloadStatus.SCHEDULED, WorkloadStatus.RUNNING], required=False,
                                     help_text="only the workloads in this status (the other list is then empty)")
    limit = serializers.IntegerField(min_value=1, max_value=MAX_RUNNING, required=False,
                                     help_text="at most this many per list, in placement order")


class WorkAnswerSerializer(serializers.Serializer):
    work = WorkSerializer(many=True, help_text="workloads scheduled on this node")
    running = WorkSerializer(many=True, help_text="workloads running on this node (to re-adopt after a restart)")
    more = serializers.BooleanField(help_text="a list was cut at 'limit': more are placed here")


class ReportSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    workload_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=[(state, WorkloadStatus(state).label) for state in AGENT_REPORTS])
    reason = StrictCharField(required=False, allow_blank=True, max_length=4000, default="")
    exit_code = StrictIntegerField(required=False, allow_null=True, min_value=-(2**31), max_value=2**31 - 1,
                                   default=None)
    runtime = serializers.DictField(required=False, default=None)
    epoch = StrictIntegerField(min_value=1)
    scheduled_at = serializers.DateTimeField(
        help_text="the run this report is about: its scheduled_at as work listed it (a restart is a new run)")


class ReportsSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    reports = serializers.ListField(child=ReportSerializer(), max_length=MAX_REPORTS)


class ReportResultSerializer(serializers.Serializer):
    workload_id = serializers.UUIDField()
    accepted = serializers.BooleanField(help_text="false: not applied (already applied, or it has moved on)")
    status = serializers.ChoiceField(choices=WorkloadStatus.choices, allow_null=True)


class ReportsAnswerSerializer(serializers.Serializer):
    results = ReportResultSerializer(many=True)


class LogChunkSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    workload_id = serializers.UUIDField()
    seq = StrictIntegerField(min_value=0, max_value=MAX_SEQ)
    stream = serializers.ChoiceField(choices=LogStream.choices, required=False, default=LogStream.STDOUT)
    text = StrictCharField(allow_blank=True, trim_whitespace=False)


class LogsSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    chunks = serializers.ListField(child=LogChunkSerializer(), max_length=MAX_CHUNKS)

    def validate_chunks(self, chunks):
        size = sum(len(chunk["text"]) for chunk in chunks)
        if size > MAX_LOG_TEXT:
            raise serializers.ValidationError(f"{size} characters of text; a batch holds at most {MAX_LOG_TEXT}")
        return chunks


class DrainSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    epoch = StrictIntegerField(min_value=1)
    policy = serializers.ChoiceField(choices=["stop", "requeue"], default="stop",
                                     help_text="stop: end running work as stopped; requeue: hand it back to be placed")


class DrainAnswerSerializer(serializers.Serializer):
    end = serializers.ListField(child=serializers.UUIDField(), help_text="running here: end these now")


class LeaveSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    epoch = StrictIntegerField(min_value=1)


class LeaveAnswerSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=NodeStatus.choices)


class LogsAnswerSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="chunks of the batch now stored (a re-sent one is kept once)")

