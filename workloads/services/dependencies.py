"""Dependencies between workloads: what they name, checked at submit, and whether each holds.

A dependency names a workload or an array and a condition: ``succeeded``, ``failed`` (failed or
lost) or ``ended`` (any end). An array counts as ended when every instance has, and holds
``succeeded`` when all of them succeeded, ``failed`` when at least one failed. A workload's end
counts once no restart follows it (its restart policy is spent or does not apply). What to do
when one holds or never can (place or fail the dependent) is the lifecycle's (``lifecycle``).
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.db.models import Count, F, Q

from core.errors import InvalidRequest

from ..models import (
    TERMINAL,
    DependencyCondition,
    DependencyState,
    RestartPolicy,
    Workload,
    WorkloadArray,
    WorkloadDependency,
    WorkloadStatus,
)
from ..selectors import workload_array_list, workload_list

S = WorkloadStatus
C = DependencyCondition
FAILED_ENDS = (S.FAILED, S.LOST)
# A workload in one of these states, with this policy and restarts left, is about to run again:
# its end does not count yet (the SQL form of ``lifecycle``'s restart rule, for an array's rows).
WILL_RESTART = Q(stop_requested_at__isnull=True, restart_count__lt=F("max_restarts")) & (
    Q(status__in=FAILED_ENDS, restart_policy__in=[RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS])
    | Q(status=S.SUCCEEDED, restart_policy=RestartPolicy.ALWAYS)
)
CONDITION_WORDS = {C.SUCCEEDED: "succeed", C.FAILED: "fail", C.ENDED: "end"}


@dataclass(frozen=True)
class Target:
    """What one dependency names: a workload or an array, and the condition it waits for."""

    condition: str
    workload: Workload | None = None
    array: WorkloadArray | None = None

    @property
    def label(self) -> str:
        if self.array is not None:
            return f"array {self.array.name} ({self.array.pk})"
        return f"{self.workload.name} ({self.workload.pk})"


@dataclass(frozen=True)
class Outcome:
    """How far a dependency's target got: whether any of it is still to end, and how its ended
    part ended (a workload is an array of one)."""

    open: bool
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0


def verdict(condition: str, outcome: Outcome) -> str | None:
    """``met`` or ``never`` once the outcome decides the condition, else None (still waiting)."""
    unsuccessful = outcome.failed + outcome.stopped
    if outcome.open:
        # One instance that ended otherwise is enough to know "all succeeded" never holds.
        return DependencyState.NEVER if condition == C.SUCCEEDED and unsuccessful else None
    holds = {C.SUCCEEDED: not unsuccessful, C.FAILED: outcome.failed > 0, C.ENDED: True}[condition]
    return DependencyState.MET if holds else DependencyState.NEVER


def dependency_targets(*, user, depends_on: Sequence[dict], field: str,
                       local: dict[str, Workload | WorkloadArray] | None = None) -> list[Target]:
    """The targets ``depends_on`` names (``{"workload": <id or local key>, "condition": ...}``),
    each a workload or an array ``user`` may see, or a key of ``local`` (others of one request,
    already recorded). Their rows are locked until the transaction ends, so a target cannot end
    unseen between this read and the dependency's row (its end waits, then finds the row).
    Unknown, foreign or repeated names are refused naming ``field``."""
    local = local or {}
    targets: list[Target] = []
    seen: set = set()
    for position, entry in enumerate(depends_on):
        name, condition = entry["workload"], entry["condition"]
        where = f"{field}[{position}].workload"
        found = local.get(name) or _visible_target(user=user, name=name, field=where)
        if found.pk in seen:
            raise InvalidRequest(f"{name} is named twice", field=where)
        seen.add(found.pk)
        if isinstance(found, WorkloadArray):
            targets.append(Target(condition, array=found))
        else:
            targets.append(Target(condition, workload=found))
    return targets


def _visible_target(*, user, name: str, field: str) -> Workload | WorkloadArray:
    try:
        pk = uuid.UUID(str(name))
    except ValueError:
        raise InvalidRequest(f"{name!r} is neither a workload or array id nor a key in this request",
                             field=field) from None
    # Another owner's workload is as unknown as a missing one: the API shows neither.
    found = (workload_list(user=user).select_related(None).select_for_update(of=("self",)).filter(pk=pk).first()
             or workload_array_list(user=user).select_for_update(of=("self",)).filter(pk=pk).first())
    if found is None:
        raise InvalidRequest(f"no workload or array {pk} of yours", field=field)
    return found


def dependencies_record(*, targets: Sequence[Target], workload: Workload | None = None,
                        array: WorkloadArray | None = None) -> list[WorkloadDependency]:
    """Record that ``workload`` (or every instance of ``array``) waits on ``targets``, and mark the
    targets so that their ends look for dependents."""
    rows = WorkloadDependency.objects.bulk_create([
        WorkloadDependency(workload=workload, array=array, on_workload=target.workload, on_array=target.array,
                           condition=target.condition)
        for target in targets
    ])
    marked_workloads = [target.workload.pk for target in targets if target.workload is not None]
    marked_arrays = [target.array.pk for target in targets if target.array is not None]
    if marked_workloads:
        Workload.objects.filter(pk__in=marked_workloads, has_dependents=False).update(has_dependents=True)
    if marked_arrays:
        Workload.objects.filter(array__in=marked_arrays, has_dependents=False).update(has_dependents=True)
    return rows


def waiting_reason(targets: Sequence[Target]) -> str:
    return "waiting for " + ", ".join(f"{target.label} to {CONDITION_WORDS[target.condition]}"
                                      for target in targets)


def dependencies_waiting_on(*, workload_id=None, array_id=None, ended: str | None = None
                            ) -> list[tuple[WorkloadDependency, str]]:
    """The waiting dependencies on a workload (or an array) that its state now decides, each with
    its verdict. ``ended`` is how the workload (or the array's instance) whose end asks just
    ended, for good. An array's row is locked first, so that of two instances ending at once the
    second to ask sees the first's end."""
    on = {"on_array_id": array_id} if array_id else {"on_workload_id": workload_id}
    waiting = list(WorkloadDependency.objects.filter(state=DependencyState.WAITING, **on)
                   .select_related("on_workload", "on_array"))
    if not waiting:
        return []
    outcome = _array_outcome(array_id, ended) if array_id else _workload_outcome(workload_id)
    decided = [(dependency, verdict(dependency.condition, outcome)) for dependency in waiting]
    return [(dependency, state) for dependency, state in decided if state]


def _workload_outcome(workload_id) -> Outcome:
    row = Workload.objects.filter(pk=workload_id).values(
        "status", "stop_requested_at", "restart_count", "max_restarts", "restart_policy").first()
    if row is None or row["status"] not in TERMINAL or _will_restart(row):
        return Outcome(open=True)
    status = row["status"]
    return Outcome(open=False, succeeded=int(status == S.SUCCEEDED), failed=int(status in FAILED_ENDS),
                   stopped=int(status == S.STOPPED))


def _will_restart(row: dict) -> bool:
    if row["stop_requested_at"] or row["restart_count"] >= row["max_restarts"]:
        return False
    if row["status"] in FAILED_ENDS:
        return row["restart_policy"] in (RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS)
    return row["status"] == S.SUCCEEDED and row["restart_policy"] == RestartPolicy.ALWAYS


def _array_outcome(array_id, ended: str | None) -> Outcome:
    """Whether the array has instances still to end (one probe of the ``workload_array_status``
    index), and only when none is left, how they all ended (one pass over its rows)."""
    WorkloadArray.objects.select_for_update().filter(pk=array_id).values_list("pk").first()
    instances = Workload.objects.filter(array_id=array_id)
    if instances.filter(status__in=[S.PENDING, S.SCHEDULED, S.RUNNING]).exists():
        return Outcome(open=True, failed=int(ended in FAILED_ENDS), stopped=int(ended == S.STOPPED))
    counts = instances.aggregate(
        open=Count("pk", filter=WILL_RESTART),
        succeeded=Count("pk", filter=Q(status=S.SUCCEEDED) & ~WILL_RESTART),
        failed=Count("pk", filter=Q(status__in=FAILED_ENDS) & ~WILL_RESTART),
        stopped=Count("pk", filter=Q(status=S.STOPPED)),
    )
    return Outcome(open=counts["open"] > 0, succeeded=counts["succeeded"], failed=counts["failed"],
                   stopped=counts["stopped"])


def graph_order(items: Sequence[dict], *, field: str = "workloads") -> list[int]:
    """The positions of a request's items in an order where each comes after the items it names
    by key (``depends_on[].workload`` equal to another item's ``key``). A key used twice, or a
    cycle, is refused naming the field."""
    keys: dict[str, int] = {}
    for position, item in enumerate(items):
        key = item.get("key")
        if key is None:
            continue
        if key in keys:
            raise InvalidRequest(f"key {key!r} is used by items {keys[key]} and {position}",
                                 field=f"{field}[{position}].key")
        keys[key] = position
    needs = {position: [keys[entry["workload"]] for entry in item.get("depends_on", ()) if entry["workload"] in keys]
             for position, item in enumerate(items)}
    order: list[int] = []
    state: dict[int, str] = {}  # "visiting" while on the path, "done" once ordered

    def visit(position: int, path: list[int]) -> None:
        # Recursion is bounded by the serializer's cap on a request's items.
        if state.get(position) == "done":
            return
        if state.get(position) == "visiting":
            cycle = path[path.index(position):] + [position]
            named = " -> ".join(items[p].get("key") or str(p) for p in cycle)
            raise InvalidRequest(f"dependencies form a cycle: {named}", field=f"{field}[{position}].depends_on")
        state[position] = "visiting"
        for needed in needs[position]:
            visit(needed, [*path, position])
        state[position] = "done"
        order.append(position)

    for position in range(len(items)):
        visit(position, [])
    return order
