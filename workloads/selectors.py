from collections.abc import Collection
from functools import lru_cache
from uuid import UUID

from django.db import connection
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Value, Window
from django.db.models.functions import Length, Replace

from core.db import sql_column, sql_in, sql_table
from core.errors import InvalidRequest
from nodes.db import prepared_cursor
from nodes.resources import Resources

from .cron import cron_slots_after
from .models import (
    ACTIVE,
    TERMINAL,
    EventKind,
    Schedule,
    ScheduleRun,
    Workload,
    WorkloadArray,
    WorkloadCount,
    WorkloadCountDelta,
    WorkloadDependency,
    WorkloadEvent,
    WorkloadLog,
    WorkloadStatus,
)

# What a transition reads of a workload: its state, its claim, its restart policy, and whether
# its end is awaited (by its own dependents or its array's).
TRANSITION_FIELDS = (
    "status", "node_id", "cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes",
    "restart_policy", "restart_count", "max_restarts", "stop_requested_at", "array_id", "has_dependents",
)


def workload_for_transition(*, workload_id) -> Workload | None:
    """A workload as ``workload_transition`` needs it (with its node's name), and no more."""
    return (
        Workload.objects.select_related("node").only(*TRANSITION_FIELDS, "node__node_id")
        .filter(pk=workload_id).first()
    )


def workload_list(*, user) -> QuerySet[Workload]:
    """Workloads a user may see: all for staff, their own otherwise."""
    workloads = Workload.objects.select_related("node", "submitted_node", "owner")
    if user.is_staff:
        return workloads
    return workloads.filter(owner=user)


def workload_array_list(*, user) -> QuerySet[WorkloadArray]:
    """Arrays a user may see: all for staff, their own otherwise."""
    arrays = WorkloadArray.objects.select_related("owner")
    return arrays if user.is_staff else arrays.filter(owner=user)


def schedule_list(*, user) -> QuerySet[Schedule]:
    """Schedules a user may see (all for staff), each with its latest run's slot and outcome (two
    subqueries on the ``schedule_run_once_per_slot`` index, read backwards)."""
    latest = ScheduleRun.objects.filter(schedule=OuterRef("pk")).order_by("-slot")
    schedules = Schedule.objects.select_related("owner").annotate(
        last_slot=Subquery(latest.values("slot")[:1]), last_outcome=Subquery(latest.values("outcome")[:1]))
    return schedules if user.is_staff else schedules.filter(owner=user)


# How many coming run times the API and the console show.
NEXT_RUNS_SHOWN = 5


def schedule_next_runs(*, schedule: Schedule, count: int = NEXT_RUNS_SHOWN) -> list:
    """The next ``count`` times the schedule will run (UTC); none while it is paused. The first is
    the slot not decided yet, which may be a moment past if the control loop has yet to reach it."""
    if schedule.paused_at is not None:
        return []
    runs = [schedule.next_run_at]
    for slot in cron_slots_after(expression=schedule.cron, timezone=schedule.timezone, after=schedule.next_run_at):
        if len(runs) == count:
            break
        runs.append(slot)
    return runs


def schedule_workload(*, schedule: Schedule) -> dict:
    """What each run of a schedule submits, in the submission body's units (cpu in cores)."""
    template = dict(schedule.template)
    return template | {"requirements": Resources(**template["requirements"]).to_api()}


def schedule_runs(*, schedule: Schedule) -> QuerySet[ScheduleRun]:
    """A schedule's runs, latest slot first, with the workload each started."""
    return schedule.runs.select_related("workload").order_by("-slot")


def workload_array_counts(*, array_ids: list) -> dict:
    """Each array's instances by status (every status named, and ``total``), in one query on the
    ``workload_array_status`` index."""
    counts = {pk: dict.fromkeys(WorkloadStatus.values, 0) for pk in array_ids}
    rows = (Workload.objects.filter(array_id__in=array_ids).order_by().values("array_id", "status")
            .annotate(n=Count("pk")).values_list("array_id", "status", "n"))
    for array_id, status, n in rows:
        counts[array_id][status] = n
    for by_status in counts.values():
        by_status["total"] = sum(by_status.values())
        by_status["ended"] = sum(by_status[status] for status in TERMINAL)
    return counts


def array_status(counts: dict) -> str:
    """One word for an array: the furthest any instance got until all ended, then how they ended."""
    if counts["ended"] < counts["total"]:
        for status in (WorkloadStatus.RUNNING, WorkloadStatus.SCHEDULED):
            if counts[status]:
                return status
        return WorkloadStatus.PENDING
    for status in (WorkloadStatus.FAILED, WorkloadStatus.LOST, WorkloadStatus.STOPPED):
        if counts[status]:
            return WorkloadStatus.FAILED if status == WorkloadStatus.LOST else status
    return WorkloadStatus.SUCCEEDED


def dependency_list(*, workload_ids=(), array_ids=()) -> list[WorkloadDependency]:
    """The dependencies of some workloads and arrays (what each waits on), targets named."""
    return list(WorkloadDependency.objects.filter(Q(workload_id__in=workload_ids) | Q(array_id__in=array_ids))
                .select_related("on_workload", "on_array").order_by("id"))


def dependencies_by_array(*, array_ids: list) -> dict:
    """What each array waits on, by array id, in one query."""
    by_array: dict = {}
    for dependency in dependency_list(array_ids=array_ids):
        by_array.setdefault(dependency.array_id, []).append(dependency)
    return by_array


def workload_dependencies(*, workload: Workload) -> dict:
    """What a workload waits on (an array instance: its array's dependencies), and who waits on it
    (or on its array), each ``{"workload": id, "kind", "name", "condition", "state"}``."""
    on = dependency_list(workload_ids=[workload.pk], array_ids=[workload.array_id] if workload.array_id else [])
    waiting = (WorkloadDependency.objects.filter(Q(on_workload=workload) | Q(on_array_id=workload.array_id)
                                                 if workload.array_id else Q(on_workload=workload))
               .select_related("workload", "array").order_by("id"))
    dependents = [{"workload": str(d.workload_id or d.array_id), "kind": "array" if d.array_id else "workload",
                   "name": (d.array or d.workload).name, "condition": d.condition, "state": d.state}
                  for d in waiting]
    return {"depends_on": on, "dependents": dependents}


def dependency_linked(*, workload_id=None, array_id=None) -> bool:
    """Whether a workload (or an array) waits on something or is waited on: it is in a graph."""
    if array_id:
        return WorkloadDependency.objects.filter(Q(array_id=array_id) | Q(on_array_id=array_id)).exists()
    return WorkloadDependency.objects.filter(Q(workload_id=workload_id) | Q(on_workload_id=workload_id)).exists()


# A dependency graph drawn in the console stops growing at this many workloads and arrays.
GRAPH_LIMIT = 200


def dependency_graph(*, workload_id=None, array_id=None) -> dict:
    """The workloads and arrays linked by dependencies to one of them (either way, transitively),
    at most ``GRAPH_LIMIT``: ``{"nodes": {("w"|"a", pk): object}, "edges": [(from, to, dependency)]}``,
    an edge from the one that waits to the one it waits on. One query per step outwards."""
    start = ("a", array_id) if array_id else ("w", workload_id)
    seen = {start}
    frontier = {start}
    edges: dict[int, tuple] = {}
    while frontier and len(seen) < GRAPH_LIMIT:
        w_ids = [pk for kind, pk in frontier if kind == "w"]
        a_ids = [pk for kind, pk in frontier if kind == "a"]
        linked = WorkloadDependency.objects.filter(
            Q(workload_id__in=w_ids) | Q(array_id__in=a_ids) | Q(on_workload_id__in=w_ids) | Q(on_array_id__in=a_ids)
        )[:GRAPH_LIMIT]
        frontier = set()
        for dependency in linked:
            waiting = ("a", dependency.array_id) if dependency.array_id else ("w", dependency.workload_id)
            target = ("a", dependency.on_array_id) if dependency.on_array_id else ("w", dependency.on_workload_id)
            edges[dependency.pk] = (waiting, target, dependency)
            for end in (waiting, target):
                if end not in seen and len(seen) < GRAPH_LIMIT:
                    seen.add(end)
                    frontier.add(end)
    workloads = Workload.objects.in_bulk([pk for kind, pk in seen if kind == "w"])
    arrays = WorkloadArray.objects.in_bulk([pk for kind, pk in seen if kind == "a"])
    nodes = {("w", pk): w for pk, w in workloads.items()} | {("a", pk): a for pk, a in arrays.items()}
    return {"nodes": nodes, "edges": [edge for edge in edges.values() if edge[0] in nodes and edge[1] in nodes]}


def workload_log_tail(*, workload: Workload, lines: int | None) -> list[str]:
    """The last ``lines`` lines of output (all when None), oldest first, read back from chunks."""
    if lines is not None and lines < 0:
        raise InvalidRequest("must be a non-negative integer", field="lines")
    chunks = WorkloadLog.objects.filter(workload=workload).order_by("-seq").values_list("text", flat=True)
    collected: list[str] = []
    for text in chunks.iterator(chunk_size=200):
        collected[:0] = text.splitlines()
        if lines is not None and len(collected) >= lines:
            break
    if lines is None:
        return collected
    return collected[-lines:] if lines else []


def workload_log_tails(*, workload_ids: list, lines: int) -> dict[str, list[str]]:
    """The last ``lines`` lines of each workload's output, oldest first, in one query.

    A chunk is read only while the newer chunks of its workload hold fewer than ``lines``
    newlines (a lower bound of their lines), so a long log costs the few chunks its tail is in.
    """
    if not lines or not workload_ids:
        return {}
    text = "log_chunks__text"
    newlines = Length(text) - Length(Replace(text, Value("\n"), Value("")))
    chunks = (
        Workload.objects.filter(pk__in=workload_ids, log_chunks__isnull=False)
        .annotate(newer_newlines=Window(Sum(newlines), partition_by=F("pk"), order_by=F("log_chunks__seq").desc())
                  - newlines)
        .filter(newer_newlines__lt=lines)
        .order_by("pk", "log_chunks__seq").values_list("pk", text)
    )
    tails: dict[str, list[str]] = {}
    for pk, chunk in chunks:
        tails.setdefault(str(pk), []).extend(chunk.splitlines())
    return {pk: collected[-lines:] for pk, collected in tails.items()}


def workload_counts(*, owner_id: int | None = None) -> dict[tuple[str, str], int]:
    """How many workloads there are by (status, type), of one owner or of all, read from the
    counts the triggers keep (a few dozen rows, plus the deltas not folded in yet), not from the
    workload table."""
    def rows(model):
        mine = model.objects.all() if owner_id is None else model.objects.filter(owner_key=owner_id)
        return mine.order_by().values_list("status", "type", "n")

    totals: dict[tuple[str, str], int] = {}
    for status, type_, n in rows(WorkloadCount).union(rows(WorkloadCountDelta), all=True):  # one query
        totals[(status, type_)] = totals.get((status, type_), 0) + n
    return {key: n for key, n in totals.items() if n}


def workload_count_matching(*, user, statuses=(), type: str | None = None) -> int:
    """How many workloads the user may see have one of ``statuses`` (any, if none) and ``type``
    (any, if None), from the trigger-kept counts: what a list filtered so shows in all."""
    counts = workload_counts(owner_id=None if user.is_staff else user.pk)
    return sum(n for (status, type_), n in counts.items()
               if (not statuses or status in statuses) and (type is None or type_ == type))


def workload_list_row_count(*, user) -> int:
    """How many rows the console's workload list has with each array as one row: the workloads
    the user may see, less every array's instances but one (the trigger-kept counts and the array
    table, not a count of the workload table; an array with an index deleted is off by one)."""
    arrays = workload_array_list(user=user).order_by().aggregate(instances=Sum("count"), arrays=Count("pk"))
    return max(0, workload_counts_by_status(user=user)["total"] - (arrays["instances"] or 0) + arrays["arrays"])


def workload_counts_by_status(*, user) -> dict[str, int]:
    """Workloads by status (and ``total``) that the user may see: every one for staff."""
    counts = dict.fromkeys(WorkloadStatus.values, 0)
    for (status, _type), n in workload_counts(owner_id=None if user.is_staff else user.pk).items():
        counts[status] = counts.get(status, 0) + n
    return counts | {"total": sum(counts.values())}


def workload_events_recent(*, user, limit: int = 20) -> QuerySet[WorkloadEvent]:
    """The latest events (placements, transitions, notes) on workloads the user may see."""
    events = WorkloadEvent.objects.select_related("workload").order_by("-id")
    if not user.is_staff:
        events = events.filter(workload__owner=user)
    return events[:limit]


def workload_active_counts_by_node(*, user) -> dict[int, int]:
    """How many scheduled/running workloads (that the user may see) each node holds, by node pk
    (on the ``workload_active_node`` index: the active few, not every row)."""
    rows = (
        workload_list(user=user).filter(status__in=ACTIVE, node__isnull=False)
        .order_by().values("node").annotate(n=Count("*")).values_list("node", "n")  # "*": index-only
    )
    return dict(rows)


# What an agent needs to start, re-adopt or stop a workload: what its executors read of the row.
WORK_FIELDS = (
    "id", "name", "type", "status", "config", "cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes",
    "restart_policy", "restart_count", "priority", "runtime", "agent_epoch", "scheduled_at", "started_at",
    "stop_requested_at", "max_runtime_seconds", "on_disconnect",
)


def node_work(*, node_pk: int, statuses: Collection[str] = ACTIVE, ids: Collection[UUID] | None = None,
              limit: int | None = None) -> list[Workload]:
    """The workloads scheduled or running on a node (or those of ``statuses``, or of ``ids``, at
    most ``limit``), as its agent needs them, highest priority first, then oldest placement, each
    with ``owner_username`` and ``log_next_seq`` (the number its agent gives the next output
    chunk: a rerun continues the numbering of the runs before it). One read on the
    ``workload_node_status`` index, written out once per shape: building the ORM query (and a
    second one for the log numbers) cost an agent's every start more than running it."""
    if ids is not None and not ids:
        return []
    statuses = sorted(statuses)
    params = [node_pk, *statuses]
    if ids is not None:
        params += [_WORKLOAD_ID.get_db_prep_value(pk, connection) for pk in ids]
    if limit is not None:
        params.append(limit)
    sql = _node_work_sql(len(statuses), None if ids is None else len(ids), limit is not None)
    return list(Workload.objects.raw(sql, params))


@lru_cache(maxsize=128)
def _node_work_sql(statuses: int, ids: int | None, limited: bool) -> str:
    user = Workload._meta.get_field("owner").related_model
    log_seq = (f"SELECT MAX(l.{sql_column(WorkloadLog, 'seq')}) + 1 FROM {sql_table(WorkloadLog)} l "
               f"WHERE l.{sql_column(WorkloadLog, 'workload')} = w.{sql_column(Workload, 'id')}")
    sql = (f"SELECT {', '.join(f'w.{sql_column(Workload, name)}' for name in WORK_FIELDS)}, "
           f"u.{sql_column(user, 'username')} AS owner_username, COALESCE(({log_seq}), 0) AS log_next_seq "
           f"FROM {sql_table(Workload)} w LEFT JOIN {sql_table(user)} u "
           f"ON u.{sql_column(user, 'id')} = w.{sql_column(Workload, 'owner')} "
           f"WHERE w.{sql_column(Workload, 'node')} = %s AND w.{sql_column(Workload, 'status')} {sql_in(statuses)}")
    if ids is not None:
        sql += f" AND w.{sql_column(Workload, 'id')} {sql_in(ids)}"
    sql += (f" ORDER BY w.{sql_column(Workload, 'priority')} DESC, w.{sql_column(Workload, 'scheduled_at')}, "
            f"w.{sql_column(Workload, 'id')}")  # as node_work_states
    return sql + " LIMIT %s" if limited else sql


def workloads_locked_for_reports(*, ids: Collection[UUID]) -> dict[UUID, Workload]:
    """The workloads a batch of reports is about, by pk, with what a transition reads of them
    (``TRANSITION_FIELDS``, ``agent_epoch``, ``scheduled_at``), their rows locked until the
    transaction ends. One statement written out once per batch size, like ``node_work``."""
    if not ids:
        return {}
    params = [_WORKLOAD_ID.get_db_prep_value(pk, connection) for pk in ids]
    return {workload.pk: workload for workload in Workload.objects.raw(_locked_for_reports_sql(len(params)), params)}


@lru_cache(maxsize=64)
def _locked_for_reports_sql(ids: int) -> str:
    columns = ("id", *TRANSITION_FIELDS, "agent_epoch", "scheduled_at")
    selected = ", ".join(sql_column(Workload, name) for name in columns)
    sql = f"SELECT {selected} FROM {sql_table(Workload)} WHERE {sql_column(Workload, 'id')} {sql_in(ids)}"
    return sql + " FOR UPDATE" if connection.features.has_select_for_update else sql


def node_work_states(*, node_pk: int) -> list[tuple[UUID, str, bool]]:
    """(id, status, whether a stop was asked) of the workloads scheduled or running on a node, in
    ``node_work``'s order: what
    a heartbeat compares with what its agent runs. One statement written out once (building
    ``node_work``'s ORM query cost a beat more than running it); ``node_work`` reads the rest
    only when there is work to start."""
    with prepared_cursor() as cursor:
        cursor.execute(_node_work_states_sql(), [node_pk, *sorted(ACTIVE)])
        rows = cursor.fetchall()
    return [(_WORKLOAD_ID.to_python(pk), status, asked) for pk, status, asked in rows]


_WORKLOAD_ID = Workload._meta.pk


@lru_cache(maxsize=1)
def _node_work_states_sql() -> str:
    quote = connection.ops.quote_name
    return (f"SELECT {quote(_WORKLOAD_ID.column)}, {quote('status')}, {quote('stop_requested_at')} IS NOT NULL "
            f"FROM {quote(Workload._meta.db_table)} WHERE {quote('node_id')} = %s "
            f"AND {quote('status')} IN ({', '.join(['%s'] * len(ACTIVE))}) "
            f"ORDER BY {quote('priority')} DESC, {quote('scheduled_at')}, {quote(_WORKLOAD_ID.column)}")  # as node_work


def node_work_lists(*, node_pk: int, status: str | None = None, limit: int | None = None) -> dict:
    """What an agent asks for (``GET /api/node/work``): ``work`` (scheduled, to start) and
    ``running`` (to re-adopt), only the one of ``status`` if given, each at most ``limit`` long,
    and ``more``: whether a list was cut."""
    lists = {"work": WorkloadStatus.SCHEDULED, "running": WorkloadStatus.RUNNING}
    answer, more = {}, False
    for name, listed in lists.items():
        if status not in (None, listed):
            answer[name] = []
            continue
        # One more than asked: whether the list was cut.
        placed = node_work(node_pk=node_pk, statuses=[listed], limit=None if limit is None else limit + 1)
        more |= limit is not None and len(placed) > limit
        answer[name] = placed[:limit]
    answer["more"] = more
    return answer


def workloads_foreign_to(*, node, placed: dict) -> set:
    """Of some workloads (id → the pk of the node each is placed on, None where none), those
    ``node`` may not act for: placed on another node, or placed nowhere and never on it.

    A workload its restart policy took back to pending is placed nowhere until it is placed
    again, but its last run was this node's: a retried batch about that run (its exit report,
    its last log lines) is not refused. Only then are its events read (``event_workload``)."""
    foreign = {pk for pk, on in placed.items() if on is not None and on != node.pk}
    unplaced = [pk for pk, on in placed.items() if on is None]
    if unplaced:
        placements = WorkloadEvent.objects.filter(workload_id__in=unplaced, kind=EventKind.PLACEMENT,
                                                  node_id=node.node_id)
        here = set(placements.values_list("workload_id", flat=True).distinct())
        foreign.update(pk for pk in unplaced if pk not in here)
    return foreign
