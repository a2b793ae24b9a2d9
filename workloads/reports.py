"""What agents report through the node API: batches of transitions and of log chunks, each from one
node and counted only for that node's own workloads."""

import logging
from collections.abc import Sequence

from django.db import transaction

from core.db import atomic_retried
from core.errors import Forbidden
from nodes.models import Node

from .logs import workload_logs_append
from .models import Workload, WorkloadStatus
from .selectors import TRANSITION_FIELDS, workloads_foreign_to
from .services import workload_note, workload_record_runtime, workload_transition

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
    workloads = {
        workload.pk: workload for workload in Workload.objects.select_related("node")
        .only(*TRANSITION_FIELDS, "agent_epoch", "scheduled_at", "node__node_id")
        .filter(pk__in={report["workload_id"] for report in reports})
    }
    _refuse_foreign(node=node, placed={pk: workload.node_id for pk, workload in workloads.items()})
    return [_report_apply(node=node, workload=workloads.get(report["workload_id"]), report=report)
            for report in reports]


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
