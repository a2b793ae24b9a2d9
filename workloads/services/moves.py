"""The UPDATE every move of a workload ends in, written out once per shape.

A move changes some columns of the workloads still in the state (and on the node) it moves them
from. The ORM builds and compiles that statement anew on every call, and on the path a job takes
(placed, started, ended) that cost more than running it; the state machine's rules stay with the
callers (``lifecycle.workload_transition``, the batched moves of ``reports``)."""

from collections.abc import Sequence
from functools import lru_cache
from uuid import UUID

from django.db import connection

from core.db import sql_column, sql_in, sql_table

from ..models import Workload

_ID = Workload._meta.pk
_RUNTIME = Workload._meta.get_field("runtime")


def workloads_move(ids: Sequence[UUID], *, current: str, node_pk: int | None, changes: dict,
                   runtimes: Sequence[tuple[UUID, dict]] = ()) -> int:
    """``UPDATE workload SET <changes> WHERE id IN ids AND status = current AND node = node_pk``
    (no node for ``None``), also setting ``runtime`` of each of ``runtimes`` (id, runtime) in the
    same statement. Returns how many moved. ``changes`` name fields or their columns (``node_id``)."""
    fields = [Workload._meta.get_field(name) for name in changes]
    params = [field.get_db_prep_save(value, connection) for field, value in zip(fields, changes.values(), strict=True)]
    for pk, runtime in runtimes:
        params += [_ID.get_db_prep_value(pk, connection), _RUNTIME.get_db_prep_save(runtime, connection)]
    params += [_ID.get_db_prep_value(pk, connection) for pk in ids]
    params.append(current)
    if node_pk is not None:
        params.append(node_pk)
    with connection.cursor() as cursor:
        cursor.execute(_move_sql(tuple(field.column for field in fields), runtimes=len(runtimes), ids=len(ids),
                                 on_node=node_pk is not None), params)
        return cursor.rowcount


@lru_cache(maxsize=256)
def _move_sql(columns: tuple[str, ...], *, runtimes: int, ids: int, on_node: bool) -> str:
    pk, runtime = sql_column(Workload, "id"), sql_column(Workload, "runtime")
    assignments = [f"{connection.ops.quote_name(column)} = %s" for column in columns]
    if runtimes:
        assignments.append(f"{runtime} = CASE {pk}{' WHEN %s THEN %s' * runtimes} ELSE {runtime} END")
    return (f"UPDATE {sql_table(Workload)} SET {', '.join(assignments)} "
            f"WHERE {pk} {sql_in(ids)} AND {sql_column(Workload, 'status')} = %s "
            f"AND {sql_column(Workload, 'node')} {'= %s' if on_node else 'IS NULL'}")
