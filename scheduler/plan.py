"""A dry run of placement: what ``place()`` would decide for a request now, and, for one that
would wait, when room is expected; nothing is claimed or kept.

The decision comes from ``place()`` itself, run inside a transaction that is always rolled back:
the same reads, the same ranking and the same claim order, so a plan's node and reasons are the
ones a submission at that moment records. Its claim is undone before it commits, so no other
transaction ever sees it (a claim racing for the same row on Postgres waits for the rollback,
microseconds). A copy of the algorithm without the claim would drift from the real one.
"""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from nodes.models import Node, NodeStatus
from nodes.resources import NAMES, Resources, human
from nodes.selectors import node_could_ever_hold, node_largest

from .placement import Decision, place
from .strategies import Strategy


class _RolledBack(Exception):
    def __init__(self, decision: Decision):
        super().__init__("the dry run's transaction is rolled back")
        self.decision = decision


def place_dry_run(*, requirements: Resources, local_node_id: str, strategy: Strategy,
                  capability: str | None = None) -> Decision:
    """``place()``'s decision for this request now, with its claim rolled back."""
    try:
        with transaction.atomic():
            raise _RolledBack(place(requirements=requirements, local_node_id=local_node_id,
                                    strategy=strategy, capability=capability))
    except _RolledBack as done:
        return done.decision


@dataclass(frozen=True)
class Release:
    """Resources running work gives back on a node, at the latest at ``by`` (its start plus its
    time limit); ``by`` is None for work with no time limit, which may never end."""

    node_pk: int
    resources: Resources
    by: datetime | None


@dataclass(frozen=True)
class RoomAsked:
    """A request waiting for room: what it needs, the nodes placement considered for it and the
    capability they must offer."""

    requirements: Resources
    node_ids: list[str]
    capability: str | None


def expected_room(*, requirements: Resources, node_ids: list[str], capability: str | None,
                  releases_on) -> datetime | None:
    """The earliest time by which one of ``node_ids`` (the nodes placement considered) will have
    room for the request, counting only the releases of work with a time limit; None when those
    releases never make room (the work standing in its way has none). ``releases_on(node_pks)``
    gives the ``Release`` of every workload holding resources on those nodes.

    Work queued ahead may take the room first, so it is an estimate, not a promise."""
    [room] = expected_rooms(asked=[RoomAsked(requirements, node_ids, capability)], releases_on=releases_on)
    return room


def expected_rooms(*, asked: list[RoomAsked], releases_on) -> list[datetime | None]:
    """``expected_room`` for each of several requests (a page of pending work), in two reads
    whatever their number: the nodes, and the releases on them."""
    wanted = {node_id for one in asked for node_id in one.node_ids}
    nodes = {node.node_id: node for node in Node.objects.filter(node_id__in=wanted, status=NodeStatus.READY)}
    by_node: dict[int, list[Release]] = {}
    for release in releases_on([node.pk for node in nodes.values()]) if nodes else ():
        by_node.setdefault(release.node_pk, []).append(release)
    rooms = []
    for one in asked:
        considered = [nodes[node_id] for node_id in one.node_ids if node_id in nodes and (
            not one.capability or nodes[node_id].capabilities.get(one.capability, {}).get("available"))]
        times = [when for node in considered
                 if (when := _room_on(node, one.requirements, by_node.get(node.pk, []))) is not None]
        rooms.append(min(times, default=None))
    return rooms


def _room_on(node: Node, requirements: Resources, releases: list[Release]) -> datetime | None:
    free = node.free()
    for release in sorted((r for r in releases if r.by is not None), key=lambda r: r.by):
        for name in NAMES:
            free[name] += getattr(release.resources, name)
        if requirements.fits_in(Resources(**free)):
            return release.by
    return None


def never_fits(requirements: Resources) -> dict | None:
    """For a request no registered node could hold even when empty: the largest node and what it
    lacks (the answer a submission's refusal gives); None when some node could hold it."""
    if node_could_ever_hold(requirements=requirements):
        return None
    largest = node_largest()
    if largest is None:
        return {"node": None, "capacity": None, "short": ["no node is registered yet"]}
    capacity = Resources(**largest.capacity())
    return {
        "node": largest.node_id,
        "capacity": capacity.to_api(),
        "capacity_human": ", ".join(human(name, getattr(capacity, name)) for name in NAMES),
        "short": requirements.shortfalls(capacity),
    }
