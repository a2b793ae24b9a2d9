from django.conf import settings
from django.db import models
from django.db.models import Case, F, FloatField, Q, Value, When
from django.db.models.functions import Cast

# Requirement names and their Node columns (capacity, allocated); units are in the names.
RESOURCES = {
    "cpu": ("cpu_millicores", "cpu_allocated_millicores"),
    "gpu": ("gpu_count", "gpu_allocated"),
    "memory": ("memory_bytes", "memory_allocated_bytes"),
    "storage": ("storage_bytes", "storage_allocated_bytes"),
}


def _free_fraction():
    """Each resource a node has, its free share of it, summed: 0 for a full node, 3 for an idle
    one without GPUs. best_fit reads candidates in this order (its waste differs only by the
    request's share of each capacity), so it is a stored column with an index, not a sort."""
    first, *rest = (
        Case(
            When(**{f"{capacity}__gt": 0},
                 then=Cast(F(capacity) - F(allocated), FloatField()) / Cast(F(capacity), FloatField())),
            default=Value(0.0),
        )
        for capacity, allocated in RESOURCES.values()
    )
    return sum(rest, first)


class NodeStatus(models.TextChoices):
    READY = "ready", "Ready"
    UNHEALTHY = "unhealthy", "Unhealthy"
    OFFLINE = "offline", "Offline"
    DRAINING = "draining", "Draining"


class Node(models.Model):
    """One machine running an agent: identity, place in the topology, capacity and load."""

    node_id = models.CharField(max_length=128, unique=True)
    address = models.CharField(max_length=255, default="127.0.0.1")
    port = models.PositiveIntegerField(default=8080)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    peers = models.ManyToManyField("self", symmetrical=True, blank=True)
    # Materialized path "/<pk>/<pk>/" so "descendants of X" is one indexed prefix query.
    path = models.CharField(max_length=1024, default="/", db_index=True)
    depth = models.PositiveSmallIntegerField(default=0)
    labels = models.JSONField(default=dict, blank=True)
    # What the agent can run: {"container": {"available": bool, "version": str}, "gpus": [...]}.
    capabilities = models.JSONField(default=dict, blank=True)

    cpu_millicores = models.PositiveBigIntegerField(default=0)
    gpu_count = models.PositiveIntegerField(default=0)
    memory_bytes = models.PositiveBigIntegerField(default=0)
    storage_bytes = models.PositiveBigIntegerField(default=0)
    cpu_allocated_millicores = models.PositiveBigIntegerField(default=0)
    gpu_allocated = models.PositiveIntegerField(default=0)
    memory_allocated_bytes = models.PositiveBigIntegerField(default=0)
    storage_allocated_bytes = models.PositiveBigIntegerField(default=0)
    free_fraction = models.GeneratedField(
        expression=_free_fraction(), output_field=models.FloatField(), db_persist=True
    )

    # Last measured usage from the agent's heartbeat (cpu_percent, memory_used_bytes, ...).
    usage = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.READY)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # Deadlines written with each beat from the interval that beat was handed (nodes.heartbeats),
    # on the control plane's clock: silent past unhealthy_at it turns unhealthy, past offline_at
    # offline. The liveness loop compares them with now; it never recomputes them from settings.
    unhealthy_at = models.DateTimeField(null=True, blank=True)
    offline_at = models.DateTimeField(null=True, blank=True)
    # How long the agent's previous beat took to be answered, by its own monotonic clock (no clock
    # skew in it): a control plane slow to answer stretches every deadline by that (nodes.liveness).
    beat_rtt_seconds = models.FloatField(null=True, blank=True)
    # Bumped every time the agent (re)starts; a stale agent's reports carry an old epoch.
    agent_epoch = models.PositiveIntegerField(default=0)
    # A parent and peers it named that had not registered yet (node_id or address:port): linked
    # by node_register the moment they register, not on this node's next heartbeat.
    pending_parent = models.CharField(max_length=300, blank=True, default="")
    pending_peers = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node_id"]
        constraints = [
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{allocated}__lte": F(capacity)}),
                    name=f"node_{name}_allocated_fits",
                )
                for name, (capacity, allocated) in RESOURCES.items()
            ),
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{allocated}__gte": 0}), name=f"node_{name}_allocated_nonneg"
                )
                for name, (_capacity, allocated) in RESOURCES.items()
            ),
        ]
        indexes = [
            # Liveness loop: "ready nodes past their unhealthy deadline".
            models.Index(fields=["unhealthy_at"], condition=Q(status=NodeStatus.READY), name="node_unhealthy_due"),
            # Liveness loop: "nodes not offline past their offline deadline". (No index on
            # last_heartbeat: every beat writes it, and no query filters on it any more.)
            models.Index(fields=["offline_at"], condition=~Q(status=NodeStatus.OFFLINE), name="node_offline_due"),
            # place(), default strategy: "nodes of one subtree, nearest first" walks this in order.
            models.Index(fields=["depth", "node_id"], name="node_depth_order"),
            # place(), best_fit: "the fullest fitting nodes in scope" walks this in order.
            models.Index(fields=["free_fraction", "depth", "node_id"], name="node_free_fraction"),
            # node_register: "nodes still waiting for a parent or peer" (a handful in a fleet).
            models.Index(fields=["node_id"], condition=~Q(pending_parent="") | ~Q(pending_peers=[]),
                         name="node_pending_links"),
        ]

    def __str__(self) -> str:
        return self.node_id

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def capacity(self) -> dict[str, int]:
        return {name: getattr(self, capacity) for name, (capacity, _a) in RESOURCES.items()}

    def allocated(self) -> dict[str, int]:
        return {name: getattr(self, allocated) for name, (_c, allocated) in RESOURCES.items()}

    def free(self) -> dict[str, int]:
        capacity, allocated = self.capacity(), self.allocated()
        return {name: capacity[name] - allocated[name] for name in RESOURCES}


class JoinToken(models.Model):
    """A secret an agent exchanges for a credential of its own node (``node_join``).

    Only the sha256 of the key is kept: the plain ``cnetjoin_...`` is shown once, when made.
    """

    key_hash = models.CharField(max_length=64, unique=True)  # sha256 hex; the join looks it up
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)  # null: never
    uses_left = models.PositiveIntegerField(null=True, blank=True)  # null: unlimited
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        expires = self.expires_at.isoformat(timespec="seconds") if self.expires_at else "never"
        uses = "unlimited" if self.uses_left is None else self.uses_left
        return f"join token {self.pk} (expires {expires}, uses left {uses})"


class NodeCredential(models.Model):
    """The one credential an agent holds for its node; only its sha256 is kept.

    ``last_used_at`` is written at most once a minute (``node_credential_authenticate``), so
    that authenticating a heartbeat adds no write to it.
    """

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="credential")
    key_hash = models.CharField(max_length=64, unique=True)  # sha256 hex; every node request looks it up
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        state = "revoked" if self.revoked_at else "active"
        return f"credential of {self.node} ({state})"


class ControlLoopState(models.Model):
    """When a control loop last ran (one row per loop, by name).

    The liveness loop reads its previous run to tell "nodes fell silent" from "the control plane
    was away, so nobody could beat" (``nodes_check_liveness``): after a gap it first gives every
    node a fresh deadline. ``failed_over_at`` is when it last did: a node silent since then had its
    fresh deadline and is not given another.
    """

    name = models.CharField(max_length=64, unique=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    failed_over_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} last ran {self.last_run_at.isoformat(timespec='seconds') if self.last_run_at else 'never'}"
