"""Transactions that the database may abort to break a deadlock, and run again; names for hand-written SQL."""

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEADLOCK_DETECTED = "40P01"  # Postgres SQLSTATE


def atomic_retried(work: Callable[[], T], *, attempts: int = 3) -> T:
    """Run ``work`` in a transaction, and again if Postgres aborted it to break a deadlock.

    Placement can deadlock. A claim that waited on a concurrent one and then found the node
    full still holds that row's lock until its transaction ends (Postgres keeps a row lock it
    took to re-check an UPDATE). So two placements trying two nodes in opposite orders (two
    strategies) can each hold the row the other waits for. The aborted transaction wrote
    nothing, and a second try rarely meets the same cycle. Inside a caller's transaction it
    runs once, because only the outermost transaction can be run again.
    """
    db = connections[DEFAULT_DB_ALIAS]
    for attempt in range(1, attempts):
        try:
            with transaction.atomic():
                return work()
        except OperationalError as error:
            if db.in_atomic_block or getattr(error.__cause__, "sqlstate", None) != DEADLOCK_DETECTED:
                raise
            logger.warning("the database broke a deadlock by aborting this transaction; running it again "
                           "(%d of %d)", attempt + 1, attempts)
    with transaction.atomic():
        return work()


# For the few hot statements written out by hand (building and compiling the ORM's cost more
# than running them): names quoted for the default database, and placeholders.
def sql_table(model) -> str:
    return connections[DEFAULT_DB_ALIAS].ops.quote_name(model._meta.db_table)


def sql_column(model, name: str) -> str:
    """The column of field ``name`` (or of its attname, ``node_id``), quoted."""
    return connections[DEFAULT_DB_ALIAS].ops.quote_name(model._meta.get_field(name).column)


def sql_in(count: int) -> str:
    return f"IN ({', '.join(['%s'] * count)})"
