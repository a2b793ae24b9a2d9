"""Submissions: one workload, an array of N instances, or several with dependencies among them
(a graph), each recorded in one transaction and placed at once when nothing holds it back.

Shape was checked by the serializers; here: the strategy exists, the node exists, the targets of
dependencies exist and are the submitter's, the graph has no cycle, and some registered node could
hold the request when empty (else it would wait forever). A refusal writes nothing.
"""

from collections.abc import Sequence

from django.conf import settings

from core.db import atomic_retried
from core.errors import DomainError, InvalidRequest
from nodes.models import Node
from nodes.resources import Resources, human
from nodes.selectors import node_could_ever_hold, node_find, node_largest
from nodes.services import node_resolve
from scheduler.quotas import priority_check, quota_never_fits
from scheduler.strategies import strategy_get

from ..models import EventKind, RestartPolicy, Workload, WorkloadArray, WorkloadEvent, WorkloadStatus
from .batches import workload_array_place
from .dependencies import Target, dependencies_record, dependency_targets, graph_order, waiting_reason
from .lifecycle import dependents_settle, workload_place_loaded

S = WorkloadStatus
# The environment each array instance gets, and what its args have replaced by its index.
ARRAY_ID_ENV, ARRAY_INDEX_ENV, INDEX_PLACEHOLDER = "CNET_ARRAY_ID", "CNET_ARRAY_INDEX", "{index}"


def workload_submit(*, owner, name: str, type: str, config: dict, requirements: Resources,
                    node: str | None = None, strategy: str | None = None, priority: int = 0,
                    restart_policy: str = RestartPolicy.NEVER, max_restarts: int = 3,
                    max_runtime_seconds: int | None = None, on_disconnect: str | None = None,
                    depends_on: Sequence[dict] = ()) -> Workload:
    """Record one workload and try to place it at once (when it waits on no dependency)."""
    spec = _Spec(owner=owner, name=name, type=type, config=config, requirements=requirements, node=node,
                 strategy=strategy, priority=priority, restart_policy=restart_policy, max_restarts=max_restarts,
                 max_runtime_seconds=max_runtime_seconds, on_disconnect=on_disconnect)
    return atomic_retried(lambda: spec.record(dependency_targets(user=owner, depends_on=depends_on,
                                                                 field="depends_on")))


def workload_array_submit(*, owner, count: int, depends_on: Sequence[dict] = (), **fields) -> WorkloadArray:
    """Record an array of ``count`` instances and place as many as fit now, in one batch."""
    spec = _Spec(owner=owner, count=count, **fields)
    return atomic_retried(lambda: spec.record(dependency_targets(user=owner, depends_on=depends_on,
                                                                 field="depends_on")))


def workload_submission_check(*, owner, **fields) -> None:
    """Refuse, as a submission of ``fields`` would now, what no submission of them could pass: an
    unknown strategy or node, a request no registered node could hold. Writes nothing."""
    _Spec(owner=owner, **fields)._refuse_if_never_fits()


def workloads_submit_graph(*, owner, items: Sequence[dict]) -> list[Workload | WorkloadArray]:
    """Record several workloads (or arrays) that may name each other in ``depends_on`` by their
    ``key``, in one transaction: each after those it names, so a local name means a recorded row.
    Returns them in the request's order. A refusal names the item (``workloads[i].<field>``)."""
    order = graph_order(items)

    def record_all() -> list:
        recorded: dict[str, Workload | WorkloadArray] = {}
        results: list = [None] * len(items)
        for position in order:
            fields = dict(items[position])
            key, depends_on = fields.pop("key", None), fields.pop("depends_on", ())
            where = f"workloads[{position}]"
            try:
                targets = dependency_targets(user=owner, depends_on=depends_on, field=f"{where}.depends_on",
                                             local=recorded)
                results[position] = _Spec(owner=owner, **fields).record(targets)
            except DomainError as error:
                named = f"{where}.{error.field}" if error.field and not error.field.startswith(where) else (
                    error.field or where)
                raise type(error)(str(error), field=named) from error
            if key is not None:
                recorded[key] = results[position]
        return results

    return atomic_retried(record_all)


class _Spec:
    """One submission's fields, checked, and how to record it (one workload or an array)."""

    def __init__(self, *, owner, name: str, type: str, config: dict, requirements: Resources,
                 node: str | None = None, strategy: str | None = None, priority: int = 0,
                 restart_policy: str = RestartPolicy.NEVER, max_restarts: int = 3,
                 max_runtime_seconds: int | None = None, on_disconnect: str | None = None,
                 count: int | None = None):
        self.owner, self.name, self.type, self.config, self.requirements = owner, name, type, config, requirements
        self.priority, self.restart_policy, self.max_restarts = priority, restart_policy, max_restarts
        self.max_runtime_seconds, self.on_disconnect = max_runtime_seconds, on_disconnect
        self.count = count
        priority_check(user=owner, priority=priority)
        self.strategy = strategy or settings.CNET_DEFAULT_STRATEGY
        strategy_get(self.strategy)
        self.submitted_at = _submitted_node(node)
        width = Workload._meta.get_field("name").max_length
        if count is not None and len(f"{name}-{count - 1}") > width:
            raise InvalidRequest(f"too long for {count} instances named {name}-<index> ({width} characters at most)",
                                 field="name")

    def record(self, targets: list[Target]):
        return self._record_array(targets) if self.count is not None else self._record_one(targets)

    def _row(self, **extra) -> Workload:
        return Workload(**{
            "owner": self.owner, "name": self.name, "type": self.type, "config": self.config,
            "strategy": self.strategy, "priority": self.priority, "submitted_node": self.submitted_at,
            "restart_policy": self.restart_policy, "max_restarts": self.max_restarts,
            "max_runtime_seconds": self.max_runtime_seconds, "on_disconnect": self.on_disconnect,
            "cpu_millicores": self.requirements.cpu, "gpu_count": self.requirements.gpu,
            "memory_bytes": self.requirements.memory, "storage_bytes": self.requirements.storage, **extra,
        })

    def _submitted_event(self, workload_id, targets: list[Target]) -> WorkloadEvent:
        reason = f"submitted; {waiting_reason(targets)}" if targets else "submitted"
        return WorkloadEvent(workload_id=workload_id, kind=EventKind.TRANSITION, to_status=S.PENDING,
                             node_id=self.submitted_at.node_id if self.submitted_at else "", reason=reason)

    def _record_one(self, targets: list[Target]) -> Workload:
        workload = self._row(dependencies_waiting=len(targets), reason=waiting_reason(targets) if targets else "")
        workload.save(force_insert=True)
        submitted = self._submitted_event(workload.pk, targets)
        if not targets:
            # Only a request that fits nowhere now is checked against empty nodes: one that no
            # node could ever hold would wait forever, so it is refused and nothing is kept.
            if not workload_place_loaded(workload, earlier_events=[submitted]):
                self._refuse_if_never_fits()
            return workload
        submitted.save()
        self._refuse_if_never_fits()
        dependencies_record(targets=targets, workload=workload)
        _settle_targets(targets)
        workload.refresh_from_db()
        return workload

    def _record_array(self, targets: list[Target]) -> WorkloadArray:
        array = WorkloadArray.objects.create(name=self.name, type=self.type, count=self.count, owner=self.owner,
                                             dependencies_waiting=len(targets))
        waiting = waiting_reason(targets) if targets else ""
        instances = [self._row(name=f"{self.name}-{index}", config=_instance_config(self.config, array.pk, index),
                               array=array, array_index=index, dependencies_waiting=len(targets), reason=waiting)
                     for index in range(self.count)]
        Workload.objects.bulk_create(instances, batch_size=2000)
        WorkloadEvent.objects.bulk_create([self._submitted_event(instance.pk, targets) for instance in instances],
                                          batch_size=5000)
        if targets:
            self._refuse_if_never_fits()
            dependencies_record(targets=targets, array=array)
            _settle_targets(targets)
        elif not workload_array_place(array_id=array.pk):
            self._refuse_if_never_fits()
        return array

    def _refuse_if_never_fits(self) -> None:
        if not node_could_ever_hold(requirements=self.requirements):
            raise InvalidRequest(_never_fits_message(self.requirements), field="requirements")
        if over := quota_never_fits(owner_id=getattr(self.owner, "pk", None), requirements=self.requirements):
            raise InvalidRequest(f"{over}, so it could never run", field="requirements")


def _instance_config(config: dict, array_id, index: int) -> dict:
    """An instance's config: its array's, with its id and index in the environment and ``{index}``
    in the args replaced (every kind's config may carry ``env`` and ``args``)."""
    instance = {**config, "env": {**config.get("env", {}), ARRAY_ID_ENV: str(array_id), ARRAY_INDEX_ENV: str(index)}}
    if "args" in config:
        instance["args"] = [arg.replace(INDEX_PLACEHOLDER, str(index)) for arg in config["args"]]
    return instance


def _settle_targets(targets: list[Target]) -> None:
    """A dependency on a target that has already ended is decided at once."""
    dependents_settle(ended=[(target.workload.pk, None, None) if target.workload is not None
                             else (None, target.array.pk, None) for target in targets])


def _submitted_node(node: str | None) -> Node | None:
    """The node a submission names (refused if none is), else the local node if registered."""
    return node_resolve(node) if node else node_find(settings.CNET_LOCAL_NODE_ID)


def _never_fits_message(requirements: Resources) -> str:
    largest = node_largest()
    if largest is None:
        return "no node is registered yet, so nothing can hold this request"
    cap = Resources(**largest.capacity())
    have = ", ".join(human(n, getattr(cap, n)) for n in ("cpu", "gpu", "memory", "storage"))
    short = "; ".join(requirements.shortfalls(cap))
    return f"no registered node could ever hold this; the largest, {largest.node_id}, has {have} ({short})"
