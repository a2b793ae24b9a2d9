"""What agents report through the node API: batches of transitions and of log chunks, each from one
node and counted only for that node's own workloads."""

import logging
from collections import Counter
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from core.db import atomic_retried
from core.errors import Forbidden
from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_release

from .dispatch import request_pending_placement_on_commit
from .logs import workload_logs_append
from .models import ACTIVE, TERMINAL, EventKind, RestartPolicy, Workload, WorkloadEvent, WorkloadStatus
from .selectors import workloads_foreign_to, workloads_locked_for_reports
from .services import ALLOWED, workload_note, workload_record_runtime, workload_transition
from .services.batches import RESOURCE_FIELDS, slices
from .services.moves import workloads_move

logger = logging.getLogger(__name__)
S = WorkloadStatus

# The states an agent may report, each with the states it may move a workload from to get there:
# it starts what was scheduled, and ends what it ran (or could not start).
AGENT_REPORTS: dict[str, frozenset[str]] = {
    S.RUNNING: frozenset({S.SCHEDULED}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.STOPPED: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.SCHEDULED, S.RUNNING}),
    S.LOST: frozenset({S.SCHEDULED, S.RUNNING}),
}


def workload_reports_apply(*, node: Node, reports: Sequence[dict]) -> list[dict]:
    """Apply a node's batch of reports (``workload_id``, ``status``, ``reason``, ``exit_code``,
    ``runtime``, ``epoch``, ``scheduled_at``), in order, each through ``workload_transition`` on
    that node only.

    Every workload is read in one statement first, and if any is another node's the whole batch
    is refused (``Forbidden``) before anything moves. Each report then counts only from the
    states ``AGENT_REPORTS`` names and only while the workload is still placed on ``node``, so a
    retried batch moves nothing twice; its restart policy applies as for any exit. A report
    names its run by the ``scheduled_at`` the work answer gave: one about an earlier run (a
    restart is placed anew) is not applied, so a retried batch cannot start or end the restarted
    run. A report from
    an agent older than the one that started a running workload (``epoch`` below its own) is not
    applied. A ``running`` report about a workload already running there stores its ``runtime``
    (what the agent learned after the start, such as its limits). Returns, per report, whether
    it was applied and the status it left (a restart may since have taken the workload back to
    pending); a workload deleted meanwhile is not applied."""
    return atomic_retried(lambda: _reports_apply(node=node, reports=reports))


def _reports_apply(*, node: Node, reports: Sequence[dict]) -> list[dict]:
    # One transaction for the batch: one commit, and one doorbell for the room its exits free.
    # The rows are locked as they are read, so what is decided from them holds until the commit.
    workloads = workloads_locked_for_reports(ids={report["workload_id"] for report in reports})
    _refuse_foreign(node=node, placed={pk: workload.node_id for pk, workload in workloads.items()})
    for workload in workloads.values():
        if workload.node_id is not None:  # this node, or the batch was refused above
            workload.node = node
    reports_per_workload = Counter(report["workload_id"] for report in reports)
    batch = _Moves(node=node)
    answers = []
    for report in reports:
        workload = workloads.get(report["workload_id"])
        if workload is not None and reports_per_workload[workload.pk] == 1 and batch.add(workload, report):
            answers.append({"workload_id": str(workload.pk), "accepted": True, "status": report["status"]})
        else:
            answers.append(_report_apply(node=node, workload=workload, report=report))
    batch.apply()
    return answers


class _Moves:
    """The plain moves of a batch, applied together: starts (scheduled → running) and ends that
    settle nothing else (no restart policy, no dependents), each group of equal changes in one
    UPDATE, their events in one INSERT and the room the ends free in one release. The rest goes
    through ``workload_transition`` one by one. The rows are locked (``_reports_apply``), so each
    move the table allows here is made; the UPDATE still names the state and node it moves from."""

    def __init__(self, *, node: Node):
        self.node = node
        self.groups: dict[tuple, list[Workload]] = {}
        self.runtimes: dict = {}  # workload pk -> the runtime its start report measured

    def add(self, workload: Workload, report: dict) -> bool:
        """Take the report if it is a plain move of a workload reported once in the batch."""
        to, current = report["status"], workload.status
        plain = (
            report["scheduled_at"] == workload.scheduled_at and workload.node_id == self.node.pk
            and current in AGENT_REPORTS[to] and to in ALLOWED[current]
            and (to == S.RUNNING or (to in TERMINAL and workload.restart_policy == RestartPolicy.NEVER
                                     and not workload.has_dependents))
            and not (current == S.RUNNING and workload.agent_epoch is not None
                     and report["epoch"] < workload.agent_epoch)
        )
        if not plain:
            return False
        default_reason = f"started on {self.node.node_id}" if to == S.RUNNING else f"{to} on {self.node.node_id}"
        key = (current, to, report.get("reason") or default_reason, report.get("exit_code"),
               report["epoch"] if to == S.RUNNING else None)
        self.groups.setdefault(key, []).append(workload)
        if report.get("runtime") is not None:
            self.runtimes[workload.pk] = report["runtime"]
        return True

    def apply(self) -> None:
        now = timezone.now()
        events, ended = [], []
        for (current, to, reason, exit_code, epoch), group in self.groups.items():
            changes = {"status": to, "updated_at": now, "reason": reason}
            if to == S.RUNNING:
                changes.update(started_at=now, agent_epoch=epoch)
            else:
                changes.update(finished_at=now, **({"exit_code": exit_code} if exit_code is not None else {}))
            ids = [workload.pk for workload in group]
            moved = sum(workloads_move(part, current=current, node_pk=self.node.pk, changes=changes,
                                       runtimes=[(pk, self.runtimes[pk]) for pk in part if pk in self.runtimes])
                        for part in slices(ids))
            if moved != len(ids):  # the rows are locked: only a bug gets here
                raise RuntimeError(f"{moved} of {len(ids)} reported moves made on node {self.node.node_id}")
            events += [WorkloadEvent(workload_id=pk, kind=EventKind.TRANSITION, from_status=current, to_status=to,
                                     node_id=self.node.node_id, reason=reason) for pk in ids]
            if current in ACTIVE and to not in ACTIVE:
                ended += group
            logger.info("%d workloads on node %s: %s -> %s (%s)", len(ids), self.node.node_id, current, to, reason)
        WorkloadEvent.objects.bulk_create(events, batch_size=5000)
        if ended:
            node_release(node_pk=self.node.pk, requirements=Resources(*(
                sum(getattr(workload, field) for workload in ended) for field in RESOURCE_FIELDS)))
            request_pending_placement_on_commit()


def _refuse_foreign(*, node: Node, placed: dict) -> None:
    foreign = workloads_foreign_to(node=node, placed=placed)
    if foreign:
        named = ", ".join(sorted(str(pk) for pk in foreign)[:5])
        raise Forbidden(f"not on node {node.node_id}: {named}; nothing in this batch was applied",
                        field="workload_id")


def _report_apply(*, node: Node, workload: Workload | None, report: dict) -> dict:
    answer = {"workload_id": str(report["workload_id"]), "accepted": False, "status": None}
    if workload is None:
        return answer
    to, epoch, runtime = report["status"], report["epoch"], report.get("runtime")
    if report["scheduled_at"] != workload.scheduled_at:
        logger.info("workload %s: report %s from node %s is about an earlier run (scheduled at %s); ignored",
                    workload.pk, to, node.node_id, report["scheduled_at"])
    # Epochs count per node, and a run's is set as it starts: compare only with a running one's.
    elif workload.status == S.RUNNING and workload.agent_epoch is not None and epoch < workload.agent_epoch:
        logger.warning("workload %s: report %s from node %s epoch %s ignored: its run was started by epoch %s",
                       workload.pk, to, node.node_id, epoch, workload.agent_epoch)
    elif to == S.RUNNING and workload.status == S.RUNNING and runtime is not None:
        workload_record_runtime(workload_id=workload.pk, runtime=runtime, only_on=node.node_id)
        if report.get("reason"):  # e.g. a restarted agent re-adopted it: the workload's history says so
            workload_note(workload_id=workload.pk, reason=report["reason"])
        answer["accepted"] = True
    else:
        default_reason = f"started on {node.node_id}" if to == S.RUNNING else f"{to} on {node.node_id}"
        answer["accepted"] = workload_transition(
            workload=workload, to=to, expect=AGENT_REPORTS[to], only_on=node.node_id,
            reason=report.get("reason") or default_reason,
            exit_code=report.get("exit_code"), runtime=runtime, agent_epoch=epoch if to == S.RUNNING else None,
        )
        if answer["accepted"] and to in TERMINAL:
            # Its restart policy may have taken it on since (pending, or placed again: the agent
            # then asks for its work at once); the copy here knows only the exit.
            workload.status = Workload.objects.filter(pk=workload.pk).values_list("status", flat=True).first()
    answer["status"] = workload.status
    return answer


def workload_logs_store(*, node: Node, chunks: Sequence[dict]) -> int:
    """Store a node's batch of log chunks (``workload_id``, ``seq``, ``stream``, ``text``).

    Refused whole (``Forbidden``), storing nothing, if any chunk is for another node's workload.
    The batch is one transaction, so it is stored entirely or not at all, and chunks already
    taken (a retried batch) are ignored by ``workload_logs_append``: nothing twice, no gap; each
    workload's output is kept within its cap (workloads/logs.py). Chunks of a workload deleted
    meanwhile are dropped. Returns how many chunks of the batch are taken (re-sent ones included)."""
    placed = dict(Workload.objects.filter(pk__in={chunk["workload_id"] for chunk in chunks})
                  .values_list("pk", "node_id"))
    _refuse_foreign(node=node, placed=placed)
    by_workload: dict = {}
    for chunk in chunks:
        if chunk["workload_id"] in placed:
            by_workload.setdefault(chunk["workload_id"], []).append((chunk["seq"], chunk["stream"], chunk["text"]))
    with transaction.atomic():
        return sum(workload_logs_append(workload_id=pk, chunks=rows) for pk, rows in by_workload.items())
