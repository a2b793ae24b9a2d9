"""Exclusive leases on disk: a uid or a GPU belongs to one running workload at a time.

A lease is a file named after what it leases, created with ``O_EXCL`` (so two threads, or two
agents' starts racing, never both win) and holding the workload's id. Files survive an agent
restart, so a survivor keeps its uid and GPUs; reconciliation releases the leases of workloads
that no longer run here (``release_stale``).
"""

import errno
import os
from collections.abc import Iterable
from pathlib import Path


class LeaseUnavailable(Exception):
    """Every candidate is leased to another workload."""


class Leases:
    def __init__(self, folder: Path):
        self.folder = folder

    def take(self, owner: str, candidates: Iterable[str], *, count: int = 1) -> list[str]:
        """``count`` keys for ``owner``: those it holds already (a re-adopted workload keeps its
        uid), then the first free candidates in order. All or nothing."""
        held = self.held_by(owner)
        if len(held) >= count:
            return held[:count]
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        taken = list(held)
        for key in candidates:
            if len(taken) == count:
                break
            if key not in taken and self._create(key, owner):
                taken.append(key)
        if len(taken) < count:
            for key in taken[len(held):]:
                (self.folder / key).unlink(missing_ok=True)
            raise LeaseUnavailable(f"{count} wanted, {len(taken)} free")
        return taken

    def _create(self, key: str, owner: str) -> bool:
        try:
            fd = os.open(self.folder / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            if error.errno == errno.EEXIST:
                return False
            raise
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        return True

    def owners(self) -> dict[str, str]:
        """{key: owner} for every lease held."""
        leases = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return {}
        for entry in entries:
            try:
                leases[entry.name] = Path(entry.path).read_text()
            except FileNotFoundError:
                continue  # released meanwhile
        return leases

    def held_by(self, owner: str) -> list[str]:
        return sorted(key for key, holder in self.owners().items() if holder == owner)

    def release(self, owner: str) -> None:
        for key in self.held_by(owner):
            (self.folder / key).unlink(missing_ok=True)

    def stale(self, known: set[str]) -> set[str]:
        """The owners holding a lease that are not in ``known`` (what runs here now)."""
        return {owner for owner in self.owners().values() if owner not in known}
