"""Database plumbing for placement's hot statements: prepared on Postgres, plain elsewhere."""

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections

# psycopg's default: a statement is prepared on its 5th run, so a one-off (a rare request size)
# never takes one of the connection's 100 prepared-statement slots.
PREPARE_AFTER = 5


def prepared_cursor():
    """A cursor for placement's own statements: on Postgres each one that keeps coming back is
    parsed and planned once per connection instead of on every call (placement sends the same
    few statements on every submission, and planning them cost as much as running them).
    Elsewhere, and while Django logs queries (psycopg keeps no text of a prepared statement to
    log), the usual cursor.

    Parameters are bound server-side, typed and sent in binary, so a statement sent here must
    pass plain ints, typed by their size (100 is a smallint, 2**33 a bigint), and combine each
    only with a column (``allocated + %s``), never with another parameter (``%s + %s``
    overflows). Django's Int4 wrapper of an int past 2**31 silently wraps around: this is why
    Django's own cursors stay client-side, and why ORM queries come here as ``literal_statement``.
    """
    db = connections[DEFAULT_DB_ALIAS]  # looked up once: each ``connection.x`` is a lookup
    if db.vendor != "postgresql" or db.queries_logged:
        return db.cursor()
    db.ensure_connection()
    db.validate_thread_sharing()
    # Django turns preparing off (None, for the sake of poolers) on its connections; its own
    # cursors bind client-side and never prepare, so this changes nothing but ours.
    if db.connection.prepare_threshold is None:
        db.connection.prepare_threshold = PREPARE_AFTER
    return db.make_cursor(psycopg.Cursor(db.connection))


def literal_statement(sql: str, params) -> tuple[str, tuple | None]:
    """``sql`` and ``params`` to send through ``prepared_cursor`` when the best plan depends on
    the values (how much of the table a LIKE prefix matches): on Postgres the values are
    written into the SQL, as Django's own cursor sends them, so that it is planned once knowing
    them rather than re-planned on every run or planned blind. Elsewhere unchanged."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        return sql, params
    return db.ops.compose_sql(sql, params), None
