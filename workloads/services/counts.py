"""Folding the workload counts' deltas in (Postgres; on SQLite the triggers count directly).

``DELETE … RETURNING`` hands each delta row to exactly one fold, so two folds at once (two beats)
count each change once: the second waits on the rows the first deleted, then finds them gone."""

from django.db import connection, transaction

from ..models import WorkloadCount, WorkloadCountDelta

FOLD = f"""
WITH moved AS (DELETE FROM {WorkloadCountDelta._meta.db_table} RETURNING owner_key, status, type, n)
INSERT INTO {WorkloadCount._meta.db_table} AS counts (owner_key, status, type, n)
SELECT owner_key, status, type, sum(n) FROM moved GROUP BY 1, 2, 3
ON CONFLICT (owner_key, status, type) DO UPDATE SET n = counts.n + EXCLUDED.n
"""


def workload_counts_fold() -> int:
    """Fold every delta in; how many (owner, status, type) counts changed."""
    if connection.vendor != "postgresql":
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(FOLD)
        return cursor.rowcount
