"""What agents measured (a heartbeat's ``usage``), read the same way by every page and metric."""

import json
from collections.abc import Iterable

from django.db.models import Case, Count, FloatField, Q, Sum, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce
from django.db.models.lookups import IsNull

# The resources an agent samples; GPU use is not sampled.
MEASURED = ("cpu", "memory", "storage")


def usage_measured(usage: dict) -> dict[str, tuple[float, float]]:
    """One node's last sample as resource → (used, total): cpu in busy cores of its cores,
    memory and storage in bytes. A resource the sample lacks is left out."""
    found = {}
    if "cpu_percent" in usage and "cpu_count" in usage:
        found["cpu"] = (usage["cpu_percent"] / 100 * usage["cpu_count"], usage["cpu_count"])
    if "memory_used_bytes" in usage:
        found["memory"] = (usage["memory_used_bytes"], usage.get("memory_total_bytes", 0))
    if "disk_used_bytes" in usage:
        found["storage"] = (usage["disk_used_bytes"], usage.get("disk_total_bytes", 0))
    return found


def usage_summed(samples: Iterable[dict | None]) -> tuple[dict[str, tuple[float, float]], int]:
    """Samples summed over nodes (so each machine weighs by its size): resource → (used, total),
    and how many nodes reported one."""
    used = dict.fromkeys(MEASURED, 0.0)
    total = dict.fromkeys(MEASURED, 0.0)
    reporting = 0
    for usage in samples:
        if not usage:
            continue
        reporting += 1
        for name, (amount, of) in usage_measured(usage).items():
            used[name] += amount
            total[name] += of
    return {name: (used[name], total[name]) for name in MEASURED}, reporting


def usage_percent(used: float, total: float) -> float | None:
    """``used`` as a share of ``total`` in percent, within 0–100; None when there is no total."""
    if not total:
        return None
    return max(0.0, min(100.0, used * 100 / total))


class JSONValue(Cast):
    """The value at ``key`` of a JSON column, cast to ``output_field``; NULL where it is missing.

    On SQLite one ``JSON_EXTRACT``: Django's key transform there reads the JSON three times a
    row, which a sum or a filter over a fleet pays for in full."""

    def __init__(self, key: str, column: str, output_field):
        super().__init__(KeyTextTransform(key, column), output_field)

    def as_sqlite(self, compiler, connection, **extra_context):
        transform = self.source_expressions[0]
        column, params = compiler.compile(transform.lhs)
        cast = self.output_field.cast_db_type(connection)
        return f"CAST(JSON_EXTRACT({column}, %s) AS {cast})", (*params, "$." + json.dumps(transform.key_name))


def usage_number(key: str) -> JSONValue:
    """The number at ``key`` of a node's ``usage`` as a float."""
    return JSONValue(key, "usage", FloatField())


def usage_sums() -> dict:
    """Aggregates that sum samples in the database as ``usage_summed`` does in Python, for
    ``QuerySet.aggregate``; ``usage_sums_read`` turns the row into the same result.

    A resource counts where its "used" value is present (cpu: percent and count), its total as
    0 where only that is missing; ``reporting`` counts nodes with any sample."""
    cpu_percent, cpu_count = usage_number("cpu_percent"), usage_number("cpu_count")
    sums = {
        "usage_cpu_used": Sum(cpu_percent / 100 * cpu_count),
        "usage_cpu_total": Sum(Case(When(IsNull(cpu_percent, False), then=cpu_count))),
        "usage_reporting": Count("pk", filter=~Q(usage={})),
    }
    for name, used, total in (("memory", "memory_used_bytes", "memory_total_bytes"),
                              ("storage", "disk_used_bytes", "disk_total_bytes")):
        sums[f"usage_{name}_used"] = Sum(usage_number(used))
        sums[f"usage_{name}_total"] = Sum(Case(When(IsNull(usage_number(used), False),
                                                    then=Coalesce(usage_number(total), 0.0))))
    return sums


def usage_sums_read(row: dict) -> tuple[dict[str, tuple[float, float]], int]:
    """What ``usage_sums`` aggregated, as ``usage_summed`` answers."""
    measured = {name: (float(row[f"usage_{name}_used"] or 0), float(row[f"usage_{name}_total"] or 0))
                for name in MEASURED}
    return measured, row["usage_reporting"]
