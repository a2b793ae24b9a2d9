import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from nodes.resources import Resources


class WorkloadStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"
    LOST = "lost", "Lost"


# States that hold resources on a node.
ACTIVE = frozenset({WorkloadStatus.SCHEDULED, WorkloadStatus.RUNNING})
TERMINAL = frozenset(
    {WorkloadStatus.SUCCEEDED, WorkloadStatus.FAILED, WorkloadStatus.STOPPED, WorkloadStatus.LOST}
)


class RestartPolicy(models.TextChoices):
    NEVER = "never", "Never"
    ON_FAILURE = "on-failure", "On failure"
    ALWAYS = "always", "Always"


# The restart policies that replace lost work: such work may run elsewhere once its node is
# declared offline.
REPLACED_WHEN_LOST = frozenset({RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS})


class OnDisconnect(models.TextChoices):
    """What happens to a workload whose agent has not reached the control plane for its fence
    time (Nomad's ``stop_after_client_disconnect`` and ``max_client_disconnect``)."""

    STOP = "stop", "Stop it (it may then run elsewhere)"
    KEEP = "keep", "Keep it running; not replaced while its node is unreachable"


def disconnect_action(*, on_disconnect: str | None, restart_policy: str) -> str:
    """``on_disconnect`` if chosen, else what the restart policy implies: work the control plane
    would replace is stopped (never two copies), other work keeps running."""
    if on_disconnect:
        return on_disconnect
    return OnDisconnect.STOP if restart_policy in REPLACED_WHEN_LOST else OnDisconnect.KEEP


def _one_of_both(first: str, second: str, *, both: bool = False) -> Q:
    """Exactly one of two columns is set (or, ``both``: both or neither)."""
    if both:
        return Q(**{f"{first}__isnull": True, f"{second}__isnull": True}) | Q(
            **{f"{first}__isnull": False, f"{second}__isnull": False})
    return Q(**{f"{first}__isnull": True, f"{second}__isnull": False}) | Q(
        **{f"{first}__isnull": False, f"{second}__isnull": True})


# How many instances one array may have (``"count"`` in a submission).
ARRAY_MAX_COUNT = 100_000


class WorkloadArray(models.Model):
    """N instances of one workload submitted together (``"count": N``); each instance is a
    ``Workload`` with ``array`` and ``array_index`` set. Its status is its instances' counts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255)
    type = models.CharField(max_length=16)
    count = models.PositiveIntegerField()
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="workload_arrays"
    )
    # Its dependencies not met yet; its instances are placed only at 0 (each instance holds the same number).
    dependencies_waiting = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(count__gte=1, count__lte=ARRAY_MAX_COUNT), name="array_count_range"),
        ]

    def __str__(self) -> str:
        return f"{self.name}[{self.count}] ({self.id})"


class Workload(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255)
    # A registered kind's name (workloads.kinds): kinds are plugins, so the column lists none.
    type = models.CharField(max_length=16)
    status = models.CharField(
        max_length=16, choices=WorkloadStatus.choices, default=WorkloadStatus.PENDING
    )
    # Shaped by its kind's config serializer (workloads.kinds); executors read it as is.
    config = models.JSONField(default=dict)
    cpu_millicores = models.PositiveBigIntegerField(default=0)
    gpu_count = models.PositiveIntegerField(default=0)
    memory_bytes = models.PositiveBigIntegerField(default=0)
    storage_bytes = models.PositiveBigIntegerField(default=0)

    node = models.ForeignKey(
        "nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="workloads"
    )
    submitted_node = models.ForeignKey(
        "nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    strategy = models.CharField(max_length=64, default="default")
    priority = models.IntegerField(default=0)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="workloads"
    )
    restart_policy = models.CharField(
        max_length=16, choices=RestartPolicy.choices, default=RestartPolicy.NEVER
    )
    max_restarts = models.PositiveIntegerField(default=3)
    # Chosen at submission (null: as its restart policy implies, see ``disconnect_action``). Only
    # an explicit "keep" holds the work while its node is offline instead of losing it. Nullable,
    # and no CheckConstraint: SQLite rebuilds the table to add either a NOT NULL column or a
    # constraint, and the rebuild drops migration 0009's count triggers.
    on_disconnect = models.CharField(max_length=8, choices=OnDisconnect.choices, null=True, blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    # A run past this many seconds is stopped by its agent and ends failed (null: no limit).
    max_runtime_seconds = models.PositiveIntegerField(null=True, blank=True)

    exit_code = models.IntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    # Agent-side facts: pid, pgid, log_file, container_id; re-read after an agent restart.
    runtime = models.JSONField(default=dict, blank=True)
    # The agent epoch that started it; a restarted agent can tell its own survivors.
    agent_epoch = models.PositiveIntegerField(null=True, blank=True)

    array = models.ForeignKey(WorkloadArray, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="instances")
    array_index = models.PositiveIntegerField(null=True, blank=True)
    # Its dependencies not met yet: a pending workload is placed only at 0. A counter on the row
    # (not a count of rows) so that two dependencies met at once serialize on this row's lock.
    dependencies_waiting = models.PositiveIntegerField(default=0)
    # Some dependency names it (or its array): only then does its end look for dependents.
    has_dependents = models.BooleanField(default=False)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    # When the start was last sent again (the first is sent as it is scheduled).
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The pending queue: "pending and free of dependencies, highest priority first, then
            # oldest" (the pending pass, queue places): read from the index alone, in its order.
            models.Index(
                fields=["-priority", "created_at", "id"],
                condition=Q(status="pending", dependencies_waiting=0),
                name="workload_pending_queue",
            ),
            # The agent's view and the re-dispatch loop: "what is scheduled/running on node N".
            models.Index(fields=["node", "status"], name="workload_node_status"),
            # List filters: /api/workloads?status=&type=
            models.Index(fields=["status", "type"], name="workload_status_type"),
            # An array's counts by status, its pending instances to place, ?array=&status=.
            models.Index(fields=["array", "status"], name="workload_array_status"),
            # The dashboard's "work on each node": the scheduled and running, by node.
            models.Index(fields=["node"], condition=Q(status__in=["scheduled", "running"]),
                         name="workload_active_node"),
            # /metrics' dispatch latency: "workloads started in the last few minutes".
            models.Index(fields=["started_at"], name="workload_started_at"),
            # The console's workload list, an array as one row (its instance 0), newest first.
            models.Index(fields=["-created_at"], condition=Q(array__isnull=True) | Q(array_index=0),
                         name="workload_list_rows"),
        ]
        constraints = [
            # One instance per index; also the index of ?array= listed in index order.
            models.UniqueConstraint(fields=["array", "array_index"], name="workload_array_index_once"),
            models.CheckConstraint(condition=_one_of_both("array", "array_index", both=True),
                                   name="workload_array_index_with_array"),
            models.CheckConstraint(condition=Q(max_runtime_seconds__isnull=True) | Q(max_runtime_seconds__gt=0),
                                   name="workload_max_runtime_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def disconnect_action(self) -> str:
        return disconnect_action(on_disconnect=self.on_disconnect, restart_policy=self.restart_policy)

    @property
    def requirements(self) -> Resources:
        return Resources(
            cpu=self.cpu_millicores,
            gpu=self.gpu_count,
            memory=self.memory_bytes,
            storage=self.storage_bytes,
        )


class EventKind(models.TextChoices):
    TRANSITION = "transition", "Transition"
    PLACEMENT = "placement", "Placement"
    INFO = "info", "Info"


class WorkloadEvent(models.Model):
    """Every state transition and every scheduling decision, with why."""

    workload = models.ForeignKey(Workload, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    node_id = models.CharField(max_length=128, blank=True)
    reason = models.TextField(blank=True)
    # Placement: [{"node": ..., "fits": bool, "reason": ...}, ...]
    details = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["workload", "id"], name="event_workload")]

    def __str__(self) -> str:
        if self.kind == EventKind.TRANSITION:
            return f"{self.from_status} → {self.to_status}: {self.reason}"
        return f"{self.kind}: {self.reason}"


class LogStream(models.TextChoices):
    STDOUT = "stdout", "stdout"
    STDERR = "stderr", "stderr"


class WorkloadLog(models.Model):
    """One chunk of a workload's output, in order; shipped by the agent in batches."""

    workload = models.ForeignKey(Workload, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=8, choices=LogStream.choices, default=LogStream.STDOUT)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workload", "seq"]
        constraints = [
            # Re-shipping a batch after a crash must not duplicate lines.
            models.UniqueConstraint(fields=["workload", "seq"], name="log_chunk_once"),
        ]

    def __str__(self) -> str:
        return f"{self.workload_id}#{self.seq}"


class DependencyCondition(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ENDED = "ended", "Ended"


class DependencyState(models.TextChoices):
    WAITING = "waiting", "Waiting"
    MET = "met", "Met"
    NEVER = "never", "Can never hold"


class WorkloadDependency(models.Model):
    """A workload (or every instance of an array) waits until ``on_workload`` (or every instance
    of ``on_array``) ended as ``condition`` says. Settled once: waiting → met | never."""

    workload = models.ForeignKey(Workload, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="dependencies")
    array = models.ForeignKey(WorkloadArray, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="dependencies")
    on_workload = models.ForeignKey(Workload, null=True, blank=True, on_delete=models.CASCADE,
                                    related_name="dependents")
    on_array = models.ForeignKey(WorkloadArray, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="dependents")
    condition = models.CharField(max_length=16, choices=DependencyCondition.choices)
    state = models.CharField(max_length=16, choices=DependencyState.choices, default=DependencyState.WAITING)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # An end's question: "what waits on workload W / array A".
            models.Index(fields=["on_workload", "state"], name="dependency_on_workload"),
            models.Index(fields=["on_array", "state"], name="dependency_on_array"),
            # A dependent's own list (its detail, its graph).
            models.Index(fields=["workload"], name="dependency_workload"),
            models.Index(fields=["array"], name="dependency_array"),
        ]
        constraints = [
            models.CheckConstraint(condition=_one_of_both("workload", "array"), name="dependency_one_dependent"),
            models.CheckConstraint(condition=_one_of_both("on_workload", "on_array"), name="dependency_one_target"),
        ]

    def __str__(self) -> str:
        return f"{self.workload_id or self.array_id} after {self.on_workload_id or self.on_array_id} {self.condition}"

    @property
    def target_id(self):
        return self.on_workload_id or self.on_array_id


class WorkloadArrayEvent(models.Model):
    """What one placement pass did for an array: how many instances it placed where, and per node
    why (one row per batch, not one per instance per node)."""

    array = models.ForeignKey(WorkloadArray, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField(blank=True)
    placed = models.PositiveIntegerField(default=0)
    # [{"node": ..., "fits": bool, "reason": ..., "instances": n}, ...]
    details = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["array", "id"], name="array_event_array")]

    def __str__(self) -> str:
        return f"{self.array_id}: {self.reason}"


class WorkloadLogUsage(models.Model):
    """What a workload's stored output amounts to, counted as its chunks are stored, so capping
    it (workloads/logs.py) never sums the log: the head (the chunks up to ``head_last_seq``,
    kept whatever follows), the tail (every later chunk; its oldest go while it is over its
    budget) and what was dropped between them."""

    workload = models.OneToOneField(Workload, primary_key=True, on_delete=models.CASCADE, related_name="log_usage")
    # The head's last chunk once the head is full (-1: it holds none); null while it fills.
    head_last_seq = models.BigIntegerField(null=True, blank=True)
    head_bytes = models.PositiveBigIntegerField(default=0)
    tail_bytes = models.PositiveBigIntegerField(default=0)
    dropped_bytes = models.PositiveBigIntegerField(default=0)
    dropped_chunks = models.PositiveBigIntegerField(default=0)
    # Chunks numbered below it were taken (stored, or dropped): a re-sent one is ignored.
    next_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.workload_id}: {self.head_bytes + self.tail_bytes} bytes kept, {self.dropped_bytes} dropped"


class ConcurrencyPolicy(models.TextChoices):
    """What a schedule's slot does while an earlier run has not ended (Kubernetes CronJob's words)."""

    ALLOW = "allow", "Allow (run alongside)"
    FORBID = "forbid", "Forbid (skip this slot)"
    REPLACE = "replace", "Replace (stop the earlier run)"


# A slot not started within this many seconds of its time is missed (Kubernetes' startingDeadlineSeconds).
SCHEDULE_DEFAULT_DEADLINE_SECONDS = 300
SCHEDULE_MAX_DEADLINE_SECONDS = 86_400


class Schedule(models.Model):
    """A workload submitted at every slot of a cron expression, read in ``timezone``. The control
    loop claims the slot at ``next_run_at`` by moving it on (a conditional UPDATE), and each slot
    gets one ``ScheduleRun`` (unique per slot): started, skipped, missed or refused."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                              related_name="schedules")
    cron = models.CharField(max_length=255)
    timezone = models.CharField(max_length=64, default="UTC")
    concurrency_policy = models.CharField(max_length=16, choices=ConcurrencyPolicy.choices,
                                          default=ConcurrencyPolicy.ALLOW)
    starting_deadline_seconds = models.PositiveIntegerField(default=SCHEDULE_DEFAULT_DEADLINE_SECONDS)
    # What each run submits, as ``workload_submit`` takes it (requirements in millicores and bytes).
    template = models.JSONField(default=dict)
    # The earliest slot not decided yet (UTC); the next after "now" once the loop has passed it.
    next_run_at = models.DateTimeField()
    paused_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The control loop's question each tick: "which live schedules have a slot due".
            models.Index(fields=["next_run_at"], condition=Q(paused_at__isnull=True), name="schedule_due"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(starting_deadline_seconds__gte=1,
                                               starting_deadline_seconds__lte=SCHEDULE_MAX_DEADLINE_SECONDS),
                                   name="schedule_deadline_range"),
            models.CheckConstraint(condition=Q(concurrency_policy__in=ConcurrencyPolicy.values),
                                   name="schedule_concurrency_policy_known"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"


class ScheduleRunOutcome(models.TextChoices):
    STARTED = "started", "Started"  # a workload was submitted for the slot
    SKIPPED = "skipped", "Skipped"  # an earlier run had not ended (forbid)
    MISSED = "missed", "Missed"  # not started within the starting deadline (the control plane was away)
    REFUSED = "refused", "Refused"  # the submission was refused (e.g. no node could ever hold it now)


class ScheduleRun(models.Model):
    """What one slot of a schedule came to; at most one per slot, whatever runs at once."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    slot = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=ScheduleRunOutcome.choices)
    workload = models.ForeignKey(Workload, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="schedule_runs")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-slot"]
        constraints = [
            # Exactly one run per slot, even when two control-loop passes decide it at once. Also
            # the index of a schedule's runs, latest first.
            models.UniqueConstraint(fields=["schedule", "slot"], name="schedule_run_once_per_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.slot:%Y-%m-%d %H:%M}Z: {self.outcome}"


class ScheduleEvent(models.Model):
    """What happened to a schedule beyond its runs: created, paused, resumed, slots missed, a run
    replaced or refused."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField()
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["schedule", "id"], name="schedule_event_schedule")]

    def __str__(self) -> str:
        return f"{self.schedule_id}: {self.reason}"


class WorkloadCount(models.Model):
    """How many workloads each owner has by status and type, kept by database triggers on the
    workload table (migration 0009), so that the dashboard and /metrics read a few rows instead of
    counting a million. On Postgres a statement's changes land first in ``WorkloadCountDelta``
    (an insert, which no concurrent writer waits on) and the control loop folds them in here; read
    both (``workload_counts``). ``owner_key`` is the owner's id, 0 for none."""

    owner_key = models.PositiveIntegerField()
    status = models.CharField(max_length=16)
    type = models.CharField(max_length=16)
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner_key", "status", "type"], name="workload_count_once")]

    def __str__(self) -> str:
        return f"{self.owner_key}/{self.status}/{self.type}: {self.n}"


class WorkloadCountDelta(models.Model):
    """One statement's change to ``WorkloadCount``, waiting to be folded in (Postgres only)."""

    id = models.BigAutoField(primary_key=True)
    owner_key = models.PositiveIntegerField()
    status = models.CharField(max_length=16)
    type = models.CharField(max_length=16)
    n = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.owner_key}/{self.status}/{self.type}: {self.n:+d}"
