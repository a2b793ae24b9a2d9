"""Workload output in the database, bounded: stored within a per-workload cap, read back at a cost
linear in what is returned, and deleted some days after the workload ended.

A log over ``CNET_LOG_MAX_BYTES`` keeps its head (the first half of the cap) and its tail (the
last half) and drops the middle; ``WorkloadLogUsage`` keeps the running counts, so storing a
batch costs its own chunks (and the rows it pushes out of the tail), never a sum over the log.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, Func, IntegerField, Max, OuterRef, Sum
from django.utils import timezone

from core.errors import InvalidRequest

from .models import TERMINAL, Workload, WorkloadEvent, WorkloadLog, WorkloadLogUsage

logger = logging.getLogger(__name__)


class ByteLength(Func):
    """A text's size in UTF-8 bytes (Postgres reads it from the value's header, without detoasting)."""

    function = "octet_length"
    output_field = IntegerField()

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="length(CAST(%(expressions)s AS BLOB))", **extra)


def _budgets() -> tuple[int, int]:
    """Bytes kept from the start and from the end of a log over its cap."""
    head = settings.CNET_LOG_MAX_BYTES // 2
    return head, settings.CNET_LOG_MAX_BYTES - head


def _last_bytes(text: str, most: int) -> str:
    """The end of ``text`` that fits ``most`` UTF-8 bytes (a character cut in two is left out)."""
    return text.encode()[-most:].decode("utf-8", errors="ignore") if most > 0 else ""


def workload_logs_append(*, workload_id, chunks: Iterable[tuple[int, str, str]]) -> int:
    """Store a workload's log chunks (seq, stream, text) within its cap; returns how many were given.

    Chunks numbered below the next one expected were taken already (a re-sent batch, or chunks
    that were dropped over the cap): they are ignored, so shipping is idempotent and nothing
    dropped comes back. While the head has room a chunk goes there; the first that does not fit
    closes it and it and all later chunks are the tail, whose oldest rows are deleted while it is
    over its budget (a single chunk over the whole budget keeps its end). One transaction, with
    the workload's usage row locked, so two batches of one workload take turns."""
    given = sorted(chunks)
    if not given:
        return 0
    head_max, tail_max = _budgets()
    with transaction.atomic():
        usage = _usage_locked(workload_id)
        rows: list[WorkloadLog] = []
        for seq, stream, text in given:
            if seq < usage.next_seq:
                continue
            usage.next_seq = seq + 1
            size = len(text.encode())
            if usage.head_last_seq is None:
                if usage.head_bytes + size <= head_max:
                    usage.head_bytes += size
                    rows.append(WorkloadLog(workload_id=workload_id, seq=seq, stream=stream, text=text))
                    continue
                usage.head_last_seq = rows[-1].seq if rows else _last_stored_seq(workload_id)
            if size > tail_max:
                text = _last_bytes(text, tail_max)
                usage.dropped_bytes += size - len(text.encode())
                size = len(text.encode())
            usage.tail_bytes += size
            rows.append(WorkloadLog(workload_id=workload_id, seq=seq, stream=stream, text=text))
        rows = _trim_tail(usage, rows, tail_max)
        # ignore_conflicts: rows written by another path (the admin, a test) must not fail a batch.
        WorkloadLog.objects.bulk_create(rows, ignore_conflicts=True)
        usage.save()
    return len(given)


def _usage_locked(workload_id) -> WorkloadLogUsage:
    """The workload's usage row, locked; made on its first batch from what is stored already (a
    log kept before the cap existed counts as its head)."""
    locked = WorkloadLogUsage.objects.select_for_update()
    usage = locked.filter(workload_id=workload_id).first()
    if usage is not None:
        return usage
    stored = WorkloadLog.objects.filter(workload_id=workload_id).aggregate(
        last=Max("seq"), size=Sum(ByteLength("text")))
    usage = WorkloadLogUsage(workload_id=workload_id, head_bytes=stored["size"] or 0,
                             next_seq=(stored["last"] + 1) if stored["last"] is not None else 0)
    if usage.head_bytes >= _budgets()[0] and stored["last"] is not None:
        usage.head_last_seq = stored["last"]
    try:
        with transaction.atomic():
            usage.save(force_insert=True)
    except IntegrityError:  # another batch made it first: take its row
        return locked.get(workload_id=workload_id)
    return usage


def _last_stored_seq(workload_id) -> int:
    """The head closes after what is stored; -1 when nothing is (the first chunk is over the head)."""
    last = WorkloadLog.objects.filter(workload_id=workload_id).aggregate(last=Max("seq"))["last"]
    return -1 if last is None else last


def _trim_tail(usage: WorkloadLogUsage, new_rows: list[WorkloadLog], tail_max: int) -> list[WorkloadLog]:
    """Drop the oldest tail chunks, stored ones first, until the tail fits; the new rows still to store."""
    excess = usage.tail_bytes - tail_max
    if excess <= 0:
        return new_rows
    stored = (WorkloadLog.objects.filter(workload_id=usage.workload_id, seq__gt=usage.head_last_seq)
              .order_by("seq").annotate(size=ByteLength("text")).values_list("seq", "size"))
    doomed, freed = [], 0
    for seq, size in stored.iterator(chunk_size=500):  # reads sizes only, and only of what goes
        if freed >= excess:
            break
        doomed.append(seq)
        freed += size
    if doomed:
        WorkloadLog.objects.filter(workload_id=usage.workload_id, seq__in=doomed).delete()
    kept = list(new_rows)
    while freed < excess and kept:
        row = kept.pop(next(i for i, r in enumerate(kept) if r.seq > usage.head_last_seq))
        doomed.append(row.seq)
        freed += len(row.text.encode())
    if doomed:
        usage.tail_bytes -= freed
        usage.dropped_bytes += freed
        usage.dropped_chunks += len(doomed)
    return kept


@dataclass(frozen=True)
class LogRead:
    lines: list[str]
    dropped_bytes: int  # of the middle of the log, over its cap; 0 when it is whole


def dropped_marker(dropped_bytes: int) -> str:
    head, tail = _budgets()
    return (f"[cnet: {dropped_bytes} bytes of output dropped here: a log over {settings.CNET_LOG_MAX_BYTES} "
            f"bytes keeps its first {head} and its last {tail}]")


def workload_log_read(*, workload: Workload, lines: int | None) -> LogRead:
    """The last ``lines`` lines of output (None: the last ``CNET_LOG_MAX_LINES``), oldest first,
    with a marker line where the middle was dropped over the cap.

    Chunks are read newest first on the ``log_chunk_once`` index, in pages that double, and
    reading stops once it has the lines: the cost follows what is returned (plus at most one
    page), however long the log."""
    most = settings.CNET_LOG_MAX_LINES
    if lines is not None and lines < 0:
        raise InvalidRequest("must be a non-negative integer", field="lines")
    if lines is not None and lines > most:
        raise InvalidRequest(f"at most {most} lines are returned at once", field="lines")
    wanted = most if lines is None else lines
    usage = WorkloadLogUsage.objects.filter(workload=workload).values("head_last_seq", "dropped_bytes").first()
    gap_after = usage["head_last_seq"] if usage and usage["dropped_bytes"] else None
    marker = dropped_marker(usage["dropped_bytes"]) if gap_after is not None else None
    newest_first: list[str] = []
    chunks = WorkloadLog.objects.filter(workload=workload).order_by("-seq").values_list("seq", "text")
    before, page = None, 4
    while len(newest_first) < wanted:
        rows = list((chunks.filter(seq__lt=before) if before is not None else chunks)[:page])
        for seq, text in rows:
            if marker and seq <= gap_after:  # crossing from the tail into the head
                newest_first.append(marker)
                marker = None
            newest_first.extend(reversed(text.splitlines()))
            before = seq
        if len(rows) < page:
            if marker:  # an empty head: what was dropped came first
                newest_first.append(marker)
            break
        page *= 2
    return LogRead(lines=newest_first[:wanted][::-1], dropped_bytes=usage["dropped_bytes"] if usage else 0)


def workload_logs_expire(*, now=None, batch: int = 500) -> int:
    """Delete the output and the events of workloads that ended more than
    ``CNET_LOG_RETENTION_DAYS`` ago, ``batch`` workloads per transaction; how many were cleared.
    Idempotent: a workload whose logs and events are gone is not found again."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.CNET_LOG_RETENTION_DAYS)
    expired = Workload.objects.filter(status__in=TERMINAL, finished_at__lt=cutoff).filter(
        Exists(WorkloadLog.objects.filter(workload=OuterRef("pk")))
        | Exists(WorkloadEvent.objects.filter(workload=OuterRef("pk")))
    ).order_by().values_list("pk", flat=True)
    cleared = 0
    while ids := list(expired[:batch]):
        with transaction.atomic():
            WorkloadLog.objects.filter(workload_id__in=ids).delete()
            WorkloadEvent.objects.filter(workload_id__in=ids).delete()
            WorkloadLogUsage.objects.filter(workload_id__in=ids).delete()
        cleared += len(ids)
    if cleared:
        logger.info("logs and events of %s workloads that ended before %s deleted", cleared, cutoff)
    return cleared
