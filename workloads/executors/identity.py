"""Who a workload runs as: its own uid from a configured range when the agent is root, else the
agent's own user (and the agent says once, at start, that isolation is off).

- A uid of the range (``CNET_WORKLOAD_UID_RANGE``) is leased to one running workload at a time
  (``leases.Leases``): every process with that uid is that workload's, so two workloads cannot
  signal, trace or read each other, and the agent can find all of one by its uid. Its group is
  the same number; it has no supplementary groups.
- Staff may map an owner to a named account (``CNET_WORKLOAD_ACCOUNTS``, ``user=account``): the
  owner's workloads then run as that account, with its groups, sharing it (``exclusive`` false).

The switch is ``setpriv``'s, the first program the agent starts, which runs as root with an empty
environment; the workload's environment is handed over only once it runs as the uid
(``process.Launch``), so nothing the user controls (``LD_PRELOAD``…) ever reaches a process that
is still root, and the agent's ``Popen`` can vfork instead of copying the whole agent (7 ms per
start at its size, measured).
"""

import hashlib
import logging
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from .leases import Leases, LeaseUnavailable
from .reach import others_may_run

logger = logging.getLogger(__name__)


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    # A uid of the range, leased to this workload alone: all its processes are this workload's.
    exclusive: bool = True

    def popen_kwargs(self) -> dict:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def runtime(self) -> dict:
        return {"uid": self.uid, "gid": self.gid, "uid_exclusive": self.exclusive}

    @classmethod
    def from_runtime(cls, runtime: dict) -> "Identity | None":
        if runtime.get("uid") is None:
            return None
        return cls(uid=runtime["uid"], gid=runtime.get("gid", runtime["uid"]),
                   exclusive=bool(runtime.get("uid_exclusive")))


def uid_range(spec: str) -> range:
    low, _, high = spec.partition("-")
    first, last = int(low), int(high or low)
    if not 0 < first <= last:
        raise IdentityError(f"CNET_WORKLOAD_UID_RANGE {spec!r} must be 'low-high' with 0 < low <= high")
    return range(first, last + 1)


def account_map(entries: list[str]) -> dict[str, str]:
    """``["alice=alice", "bob=svc-ml"]`` as ``{owner username: system account}``."""
    accounts = {}
    for entry in entries:
        owner, sep, account = entry.partition("=")
        if not sep or not owner.strip() or not account.strip():
            raise IdentityError(f"CNET_WORKLOAD_ACCOUNTS entry {entry!r} must be 'username=account'")
        accounts[owner.strip()] = account.strip()
    return accounts


@dataclass(frozen=True)
class Isolation:
    """How this agent separates workloads; ``enabled`` only when it runs as root."""

    enabled: bool
    uids: range = range(0)
    accounts: dict[str, str] = field(default_factory=dict)
    workspace_root: Path | None = None

    def identity(self, *, workload_id: str, owner: str | None, leases: Leases) -> Identity | None:
        """The identity a workload runs as; None: the agent's own (isolation off)."""
        if not self.enabled:
            return None
        account = self.accounts.get(owner or "")
        if account:
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                raise IdentityError(f"account {account!r} (mapped for {owner}) does not exist on this node") from None
            groups = tuple(g for g in os.getgrouplist(account, entry.pw_gid) if g != entry.pw_gid)
            return Identity(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, exclusive=False)
        try:
            uid = int(leases.take(workload_id, (str(uid) for uid in self._candidates(workload_id)))[0])
        except LeaseUnavailable:
            raise IdentityError(f"every uid of {self.uids.start}-{self.uids.stop - 1} is leased") from None
        return Identity(uid=uid, gid=uid)

    def _candidates(self, workload_id: str):
        """The range, starting at a place the workload's id picks: usually its first choice is free."""
        start = int(hashlib.sha256(workload_id.encode()).hexdigest(), 16) % len(self.uids)
        for offset in range(len(self.uids)):
            yield self.uids[(start + offset) % len(self.uids)]


OFF = Isolation(enabled=False)


def isolation_at_start(*, node_id: str, data_dir: Path, work_dir: Path) -> Isolation:
    """Decide once, at agent start, and say so when workloads are not separated from the agent."""
    private(data_dir)
    if not settings.CNET_WORKLOAD_ISOLATION:
        logger.warning("node %s: workload isolation is off (CNET_WORKLOAD_ISOLATION): workloads run as the "
                       "agent's user and can read its data folder", node_id)
        return OFF
    if os.geteuid() != 0:
        logger.warning("node %s: the agent runs as uid %s, not root: workloads run as its user, so they can read "
                       "its data folder and signal each other (isolation is off)", node_id, os.geteuid())
        return OFF
    root = Path(settings.CNET_WORKSPACE_DIR)
    if work_dir.resolve() in [root.resolve(), *root.resolve().parents]:
        # A workspace's shared layer (workspace.shape_for) would lie in the work folder, its other
        # lower layer, and overlayfs refuses overlapping lower layers.
        raise IdentityError(f"CNET_WORKSPACE_DIR {root} lies inside the work folder {work_dir}: put it outside")
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    os.chmod(root, 0o711)  # workloads pass through it to their own folder; none may list it
    for what, path in (("their workspaces", root / "x"), ("the agent's Python (ML workloads run it)", sys.executable)):
        if not others_may_run(str(path)):
            logger.error("node %s: workload uids cannot reach %s (%s): a folder above it is closed to others",
                         node_id, what, path)
    isolation = Isolation(enabled=True, uids=uid_range(settings.CNET_WORKLOAD_UID_RANGE),
                          accounts=account_map(settings.CNET_WORKLOAD_ACCOUNTS), workspace_root=root)
    logger.info("node %s: workloads run as uids %s-%s, each in its own workspace under %s", node_id,
                isolation.uids.start, isolation.uids.stop - 1, root)
    return isolation


def private(folder: Path) -> None:
    """Make a folder of ours 0700: the agent's and control plane's secrets live there."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_uid == os.geteuid():
        os.chmod(folder, 0o700)
