"""Exclusive leases on disk: a uid or a GPU belongs to one running workload at a time.

A lease is a file named after what it leases, holding the workload's id, and linked into place
only where none exists (so two threads, or two agents' starts racing, never both win). Files
survive an agent restart, so a survivor keeps its uid and GPUs; reconciliation releases the
leases of workloads that no longer run here (``release_stale``).

Each owner also has an index (``owners/<owner>``: the keys it may hold), so that a start and an
exit read their own leases, not every lease of the node: with hundreds of short jobs running,
reading them all on each start and exit made the uid lease most of an isolated start's cost. The
index is written before a lease is taken, so it names every key its owner holds (and perhaps one
it failed to take); a key counts only while its lease file names that owner.
"""

import fcntl
import os
import threading
from collections.abc import Iterable
from pathlib import Path

INDEX = "owners"


class LeaseUnavailable(Exception):
    """Every candidate is leased to another workload."""


class Leases:
    def __init__(self, folder: Path):
        self.folder = folder
        self.index = folder / INDEX

    def take(self, owner: str, candidates: Iterable[str], *, count: int = 1) -> list[str]:
        """``count`` keys for ``owner``: those it holds already (a re-adopted workload keeps its
        uid), then the first free candidates in order. All or nothing."""
        held = self.held_by(owner)
        if len(held) >= count:
            return held[:count]
        taken, indexed = list(held), None
        for key in candidates:
            if len(taken) == count:
                break
            if key in taken:
                continue
            indexed = [*taken, key]
            self._write_index(owner, indexed)  # before the lease: the index never misses one
            if self._create(key, owner):
                taken.append(key)
        if len(taken) < count:
            for key in taken[len(held):]:
                (self.folder / key).unlink(missing_ok=True)
            self._write_index(owner, held)
            raise LeaseUnavailable(f"{count} wanted, {len(taken)} free")
        if indexed != taken:  # the usual first choice free: the index already says so
            self._write_index(owner, taken)
        return taken

    def _create(self, key: str, owner: str) -> bool:
        # Written aside, then linked into place: link fails where the key exists (as O_EXCL
        # would), and a lease is never seen empty, before it names its owner.
        tmp = self.folder / f".{key}.{owner}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.folder / key)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def owners(self) -> dict[str, str]:
        """{key: owner} for every lease held."""
        leases = {}
        try:
            # Leases only: not the index, nor an index being built (a dot name).
            entries = [entry for entry in os.scandir(self.folder) if entry.is_file() and not entry.name.startswith(".")]
        except FileNotFoundError:
            return {}
        for entry in entries:
            holder = self._holder(entry.name)
            if holder is not None:
                leases[entry.name] = holder
        return leases

    def held_by(self, owner: str) -> list[str]:
        self._indexed()
        try:
            keys = (self.index / owner).read_text().split()
        except FileNotFoundError:
            return []
        return sorted(key for key in keys if self._holder(key) == owner)

    def release(self, owner: str) -> None:
        for key in self.held_by(owner):
            (self.folder / key).unlink(missing_ok=True)
        (self.index / owner).unlink(missing_ok=True)

    def stale(self, known: set[str]) -> set[str]:
        """The owners holding a lease that are not in ``known`` (what runs here now)."""
        return {owner for owner in self.owners().values() if owner not in known}

    def _holder(self, key: str) -> str | None:
        try:
            return (self.folder / key).read_text()
        except FileNotFoundError:
            return None  # released meanwhile

    def _write_index(self, owner: str, keys: list[str]) -> None:
        tmp = self.index / f".{owner}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text("\n".join(keys))
        os.replace(tmp, self.index / owner)

    def _indexed(self) -> None:
        """Make the index, once per folder: from the leases themselves, where an older agent took
        them without one (so a survivor it started keeps its uid)."""
        if self.index.is_dir():
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One builder at a time: a second rename would replace an index still empty, while
        # another start is writing into it.
        with open(self.folder / f".{INDEX}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.index.is_dir():
                return
            building = self.folder / f".{INDEX}.{os.getpid()}.{threading.get_ident()}"
            building.mkdir(mode=0o700)
            by_owner: dict[str, list[str]] = {}
            for key, owner in self.owners().items():
                by_owner.setdefault(owner, []).append(key)
            for owner, keys in by_owner.items():
                (building / owner).write_text("\n".join(keys))
            os.rename(building, self.index)
