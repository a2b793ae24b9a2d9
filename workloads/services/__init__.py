"""Writes on workloads, by noun: the lifecycle (the one state machine, placement, stop, delete,
what an end settles), the pending pass, submissions (one, an array, a graph), arrays,
dependencies, schedules."""

from .arrays import workload_array_delete, workload_array_stop
from .batches import workload_array_place, workloads_end_many
from .counts import workload_counts_fold
from .disconnect import workloads_lose_on_offline_nodes, workloads_reconnected
from .lifecycle import (
    ALLOWED,
    dependents_settle,
    workload_delete,
    workload_logs_append,
    workload_mark_redispatched,
    workload_note,
    workload_place,
    workload_record_runtime,
    workload_request_stop,
    workload_requeue,
    workload_restart_if_due,
    workload_stop,
    workload_transition,
)
from .pending import workloads_place_pending
from .schedules import schedule_create, schedule_delete, schedule_pause, schedule_resume, schedules_run_due
from .submit import workload_array_submit, workload_submission_check, workload_submit, workloads_submit_graph

__all__ = [
    "ALLOWED",    "dependents_settle", "workload_array_delete", "workload_array_place", "workload_array_stop",
    "workload_array_submit", "workload_delete", "workload_logs_append", "workload_mark_redispatched",
    "workload_note", "workload_place", "workload_record_runtime", "workload_request_stop", "workload_requeue",
    "workload_restart_if_due", "workload_stop", "workload_submission_check", "workload_submit", "workload_transition",
    "workloads_end_many", "workloads_place_pending", "workloads_submit_graph",
    "workload_counts_fold", "schedule_create", "schedule_delete", "schedule_pause", "schedule_resume",
    "schedules_run_due", "workloads_lose_on_offline_nodes", "workloads_reconnected",
]
