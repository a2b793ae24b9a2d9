"""What agents measured (a heartbeat's ``usage``), read the same way by every page and metric."""

from collections.abc import Iterable

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
