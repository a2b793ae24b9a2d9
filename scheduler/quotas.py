"""Fair sharing between users: quotas on concurrent work, and the priority cap (issue 15).

A quota names a user, or a group (each member's cap, not the members' sum), and caps concurrent
cpu, memory, gpus and workloads; null is no cap. A user's effective cap is, per resource, the
tightest of their own quota and their groups'. What a user holds (their scheduled and running
work) is the workloads app's to read: it passes ``Usage`` in, so this module reads no workload.

The placement paths ask ``Limit.room`` before they claim a node, and place nothing more than it
allows: work over quota stays pending with the reason ("quota: alice uses 8 of 8 CPU") and is
tried again when room frees, as all pending work is, by the pass an end sets off.
"""

from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q, QuerySet

from core.db import sql_column, sql_in, sql_table
from core.errors import InvalidRequest
from nodes.resources import Resources, human_bytes, human_cores

from .models import Quota
from .placement import BatchDecision, Decision

# A limit's name (as ``Usage`` and the API call it), its column, and each instance's share of it.
LIMITS = {"cpu": "cpu_millicores", "memory": "memory_bytes", "gpu": "gpu_count", "workloads": "workload_count"}


@dataclass(frozen=True)
class Usage:
    """What one user's scheduled and running work holds: cpu in millicores, memory in bytes."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    workloads: int = 0


@dataclass(frozen=True)
class Limit:
    """One user's effective caps: name -> (amount, where it comes from: "" or "group <name>")."""

    owner_id: int
    caps: dict[str, tuple[int, str]] = field(default_factory=dict)

    def left(self, usage: Usage) -> dict[str, int]:
        """What is left under each cap (0 when at or past it)."""
        return {name: max(cap - getattr(usage, name), 0) for name, (cap, _source) in self.caps.items()}

    def room(self, usage: Usage, requirements: Resources, wanted: int = 1) -> tuple[int, str]:
        """How many of ``wanted`` instances of ``requirements`` fit beside ``usage``, and, when
        fewer than ``wanted``, the reason (from the cap that allows fewest)."""
        allowed, why = wanted, ""
        for name, left in self.left(usage).items():
            each = _share(name, requirements)
            if each and left // each < allowed:
                allowed = left // each
                why = _reason(self, name, used=getattr(usage, name), each=each)
        return allowed, why


def _share(name: str, requirements: Resources) -> int:
    return 1 if name == "workloads" else getattr(requirements, name)


def _reason(limit: Limit, name: str, *, used: int, each: int) -> str:
    cap, source = limit.caps[name]
    who = _username(limit.owner_id) + (f" ({source})" if source else "")
    if each > cap:
        return f"quota: {who} may use at most {_amount(name, cap)}; this needs {_amount(name, each)}"
    held = f"quota: {who} uses {_amount(name, used, of=cap)}"
    return held if used >= cap or name == "workloads" else f"{held}; this needs {_amount(name, each)} more"


def _amount(name: str, amount: int, *, of: int | None = None) -> str:
    """"8 CPU", or with ``of``: "7.5 of 8 CPU", "1.0 GiB of 4.0 GiB memory", "3 of 3 workloads"."""
    shown, unit = _UNITS[name]
    return f"{shown(amount)} of {shown(of)} {unit}" if of is not None else f"{shown(amount)} {unit}"


_UNITS = {"cpu": (human_cores, "CPU"), "memory": (human_bytes, "memory"), "gpu": (str, "GPU"),
          "workloads": (str, "workloads")}


def _username(owner_id: int) -> str:
    # Read only when a reason is written: placement never pays for it otherwise.
    return get_user_model().objects.filter(pk=owner_id).values_list("username", flat=True).first() or "?"


def quota_limits(*, owner_ids, lock: bool = False) -> dict[int, Limit]:
    """The effective caps of those of ``owner_ids`` that have any. ``lock`` holds their quota rows
    until the transaction ends (Postgres): two placements for one user then take turns, so they
    cannot both count the same room under the cap. SQLite's writers take turns anyway.

    One statement written out once per number of owners: every placement asks, and building the
    ORM query (an OR across the group memberships) cost several times what running it does."""
    owner_ids = list(owner_ids)
    if not owner_ids:
        return {}
    lock = lock and connection.features.has_select_for_update_of
    with connection.cursor() as cursor:
        cursor.execute(_quota_rows_sql(len(owner_ids), lock=lock), [*owner_ids, *owner_ids])
        rows = cursor.fetchall()
    limits: dict[int, dict[str, tuple[int, str]]] = {}
    for user_id, member_id, group_name, *amounts in rows:
        caps = limits.setdefault(user_id or member_id, {})
        for name, amount in zip(LIMITS, amounts, strict=True):
            if amount is not None and (name not in caps or amount < caps[name][0]):
                caps[name] = (amount, f"group {group_name}" if group_name else "")
    return {owner_id: Limit(owner_id, caps) for owner_id, caps in limits.items() if caps}


@lru_cache(maxsize=16)
def _quota_rows_sql(owners: int, *, lock: bool) -> str:
    """(user, group member, group name, *LIMITS columns) of the quotas of some owners, by their own
    quota or a group's, in quota order."""
    group, members = Quota._meta.get_field("group").related_model, get_user_model().groups.through
    holder = sql_column(Quota, "group")
    sql = (f"SELECT q.{sql_column(Quota, 'user')}, m.{sql_column(members, 'user')}, g.{sql_column(group, 'name')}, "
           f"{', '.join(f'q.{sql_column(Quota, name)}' for name in LIMITS.values())} "
           f"FROM {sql_table(Quota)} q "
           f"LEFT JOIN {sql_table(group)} g ON g.{sql_column(group, 'id')} = q.{holder} "
           f"LEFT JOIN {sql_table(members)} m ON m.{sql_column(members, 'group')} = q.{holder} "
           f"WHERE q.{sql_column(Quota, 'user')} {sql_in(owners)} OR m.{sql_column(members, 'user')} {sql_in(owners)} "
           f"ORDER BY q.{sql_column(Quota, 'id')}")
    return sql + " FOR UPDATE OF q" if lock else sql


def _limit_of(owner_id: int | None, *, lock: bool) -> Limit | None:
    return quota_limits(owner_ids=[owner_id], lock=lock).get(owner_id) if owner_id else None


def quotas_exist() -> bool:
    return Quota.objects.exists()


def quota_wait(*, owner_id: int | None, requirements: Resources, usage_of, lock: bool = True) -> Decision | None:
    """The decision for one request of ``owner_id``'s when their quota holds it back (a wait with
    the reason); None when it may be placed. ``lock``: see ``quota_limits`` (a placement's must;
    a dry run's, outside a transaction, must not). ``usage_of(owner_id)`` is the owner's ``Usage``
    now, read after the lock."""
    limit = _limit_of(owner_id, lock=lock)
    if limit is None:
        return None
    allowed, why = limit.room(usage_of(owner_id), requirements)
    return None if allowed else QuotaWait(why)


def quota_capped_batch(*, owner_id: int | None, requirements: Resources, wanted: int, usage_of,
                       place) -> BatchDecision:
    """``place(count)`` (a batch placement) for as many of ``wanted`` instances as the owner's
    quota allows now; the decision's summary says why the others wait."""
    limit = _limit_of(owner_id, lock=True)
    if limit is None:
        return place(wanted)
    allowed, why = limit.room(usage_of(owner_id), requirements, wanted)
    if not why:
        return place(wanted)
    decision = place(allowed) if allowed else BatchDecision()
    return QuotaCappedBatch(claims=decision.claims, reasons=decision.reasons, wanted=wanted, allowed=allowed,
                            quota_reason=why)


def quota_never_fits(*, owner_id: int | None, requirements: Resources) -> str:
    """Why the owner's quota could never let this request run, even with nothing else of theirs
    running; empty when it could."""
    limit = _limit_of(owner_id, lock=False)
    return limit.room(Usage(), requirements)[1] if limit else ""


class QuotaWait(Decision):
    """An unplaced decision: the owner's quota holds the request back, whatever the nodes have."""

    def __init__(self, why: str):
        super().__init__(node=None, reasons=[])
        self.why = why

    def summary(self) -> str:
        return self.why


@dataclass
class QuotaCappedBatch(BatchDecision):
    """A batch placed only up to what the owner's quota allows (``allowed`` of ``wanted``)."""

    allowed: int = 0
    quota_reason: str = ""

    def summary(self) -> str:
        if self.placed < self.allowed:  # the nodes were short too: they say more of why
            return f"{super().summary()}; beyond those, {self.quota_reason}"
        nodes = ", ".join(f"{n} on {node.node_id}" for node, n in self.claims[:5])
        head = f"placed {self.placed} of {self.wanted} instances ({nodes}); " if self.placed else ""
        return f"{head}{self.wanted - self.placed} wait, {self.quota_reason}"


def priority_check(*, user, priority: int) -> None:
    """Refuse a priority above ``CNET_MAX_USER_PRIORITY`` unless the submitter is staff."""
    cap = settings.CNET_MAX_USER_PRIORITY
    if priority > cap and not getattr(user, "is_staff", False):
        raise InvalidRequest(f"{priority} is above {cap}, the highest priority a user without staff rights may set",
                             field="priority")


# --- staff's writes and everyone's reads --------------------------------------------------------
def quota_list(*, user) -> QuerySet[Quota]:
    """Every quota for staff; a user's own and their groups' for anyone else."""
    quotas = Quota.objects.select_related("user", "group")
    if user.is_staff:
        return quotas
    return quotas.filter(Q(user=user) | Q(group__in=user.groups.all()))


def quota_save(*, quota: Quota) -> Quota:
    """Record a new or changed quota: one holder, at most one quota each (the columns' unique
    indexes and the check constraint refuse the rest whatever writes). A raised cap lets waiting
    work run at the pending loop's next pass."""
    if (quota.user_id is None) == (quota.group_id is None):
        raise InvalidRequest("a quota names a user or a group, not both", field="user")
    holder = {"user_id": quota.user_id} if quota.user_id else {"group_id": quota.group_id}
    if Quota.objects.filter(**holder).exclude(pk=quota.pk).exists():
        name = "user" if quota.user_id else "group"
        raise InvalidRequest(f"this {name} already has a quota; change that one", field=name)
    quota.save()
    return quota


def quota_delete(*, quota: Quota) -> None:
    quota.delete()
