"""A workload's own working folder: the agent's work folder as it sees it, its writes its own.

When workloads run as their own uids, each gets ``<CNET_WORKSPACE_DIR>/<node>/<workload>/``:
an overlay whose lower layer is the agent's work folder (read through, so ``working_dir: "."``
and ``examples/ml_models/…`` name the same files as before) and whose upper layer is the
workload's (``upper/``, owned by its uid, 0700). The view (``view/``) is mounted where the agent
can read it too, so an artifact written at ``model_path`` is found there by the agent.

- What it writes lands in its upper layer, never in the work folder, and goes with the workspace
  once the workload has ended (like a container's filesystem): artifacts are kept by the
  registry, output by the database.
- The view's top is the workload's own and the folders directly in it are open to it (0777 in
  the view only: no other uid can enter the view), so ``models/x.joblib`` can be written even
  where ``models/`` exists; deeper folders of the work folder keep their owners and modes.
- The agent's data folder, its log folder, the control plane's data folder and the workspaces
  themselves are hidden from the view (overlay whiteouts) where they lie inside the work folder;
  what is left is guarded by the files' own modes.

Those open folders and whiteouts are a layer of their own between the two (a shape), made once
for a work folder's top and shared by every workspace: made per start, in its upper layer, they
were most of an isolated start's system time (a chown copied each top folder up: 20 of them in
this repository).
"""

import ctypes
import functools
import hashlib
import logging
import os
import re
import subprocess
import threading
import uuid
from pathlib import Path

from .identity import Identity

logger = logging.getLogger(__name__)

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str, options: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode()) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {fstype} on {target}: {os.strerror(error)}")


def _unmount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"umount {target}: {os.strerror(error)}")


def node_workspaces(root: Path, node_id: str) -> Path:
    return root / node_id.replace("/", "_")


class Workspace:
    def __init__(self, *, root: Path, node_id: str, workload_id: str):
        self.base = node_workspaces(root, node_id) / workload_id
        self.upper = self.base / "upper"
        self.work = self.base / "work"
        self.view = self.base / "view"

    def prepare(self, *, lower: Path, identity: Identity, hidden: list[Path]) -> Path:
        """Mount the view (once: a re-adopted workload finds it mounted) and return it."""
        if self.view.is_mount():
            return self.view
        lower = lower.resolve()
        if any(char in str(lower) for char in ",:\\"):
            raise OSError(f"the work folder {lower} has a character overlayfs options cannot carry")
        self.base.parent.mkdir(parents=True, exist_ok=True, mode=0o711)  # no uid may list the ids in it
        shape = shape_for(self.base.parent, lower, hidden)
        self.remove()  # what a start that crashed half-way left
        self.base.mkdir(mode=0o711)
        for folder in (self.upper, self.work, self.view):
            folder.mkdir(mode=0o700)
        os.chown(self.upper, identity.uid, identity.gid)
        _mount("overlay", str(self.view), "overlay",
               f"lowerdir={shape}:{lower},upperdir={self.upper},workdir={self.work}")
        return self.view

    def remove(self) -> None:
        """Unmount the view and take the workspace away at once (``Trash``): its path is free
        for the next run, and its files are deleted later, not on the path of this exit."""
        if self.view.is_mount():
            _unmount(str(self.view))
        if self.base.exists():
            trash_for(self.base.parent).put(self.base)


class Trash:
    """Removed workspaces: renamed into a root-only folder beside them (one rename, so no workload
    uid can reach what they hold from then on) and deleted by one niced ``rm`` for all that
    piled up. Deleting a workspace's files took a fifth of the agent's time in a burst of short
    jobs (bench/throughput.py), and each exit's report waited for it. What a crash left here is
    deleted with the next one put."""

    BATCH = 1000  # paths per rm: far below the kernel's limit on an argv

    def __init__(self, folder: Path):
        self.folder = folder
        self._wanted = threading.Event()
        self._started = self._made = False
        self._lock = threading.Lock()

    def put(self, path: Path) -> None:
        if not self._made:  # once per process: whatever made it before, it is the agent's alone now
            self.folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.folder, 0o700)
            self._made = True
        os.rename(path, self.folder / f"{path.name}.{uuid.uuid4().hex}")
        self._wanted.set()
        with self._lock:
            if not self._started:
                threading.Thread(target=self._empty_loop, name="workspace-trash", daemon=True).start()
                self._started = True

    def _empty_loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            self.empty()

    def empty(self) -> None:
        """Delete everything in the trash now."""
        entries = sorted(str(entry) for entry in self.folder.iterdir()) if self.folder.is_dir() else []
        for start in range(0, len(entries), self.BATCH):
            result = subprocess.run(["nice", "-n", "19", "rm", "-rf", "--one-file-system", "--",
                                     *entries[start:start + self.BATCH]], capture_output=True, check=False)
            if result.returncode:
                logger.warning("workspace trash %s: rm failed: %s", self.folder, result.stderr.decode(errors="replace"))


TRASH_FOLDER = ".trash"  # in a node's workspaces: never a workload's id
_trash: dict[Path, Trash] = {}
_trash_lock = threading.Lock()


def trash_for(workspaces: Path) -> Trash:
    """The one ``Trash`` of a node's workspaces folder in this process."""
    with _trash_lock:
        if workspaces not in _trash:
            _trash[workspaces] = Trash(workspaces / TRASH_FOLDER)
        return _trash[workspaces]


SHAPES_FOLDER = ".shapes"  # in a node's workspaces: never a workload's id
NOT_WORKSPACES = {TRASH_FOLDER, SHAPES_FOLDER}
_shapes: dict[tuple, Path] = {}
_shapes_lock = threading.Lock()


def shape_for(workspaces: Path, lower: Path, hidden: list[Path]) -> Path:
    """The layer that opens ``lower``'s top folders and hides ``hidden`` in it, as ``lower`` is
    now: looked up per start (a listing of its top and a few stats), made when it changed."""
    whiteouts = sorted({place for path in _outermost(tuple(hidden)) if (place := _whiteout_place(lower, path))})
    folders = sorted({entry.name for entry in os.scandir(lower) if entry.is_dir(follow_symlinks=False)}
                     - {str(place) for place in whiteouts})
    key = (workspaces, lower, tuple(folders), tuple(whiteouts))
    with _shapes_lock:
        if key not in _shapes:
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
            _shapes[key] = _made_shape(workspaces / SHAPES_FOLDER / digest, lower, folders, whiteouts)
        return _shapes[key]


def _made_shape(shape: Path, lower: Path, folders: list[str], whiteouts: list[Path]) -> Path:
    """Make ``shape`` unless an earlier agent did: built aside, then renamed into place whole."""
    if shape.is_dir():
        return shape
    shape.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    building = shape.with_name(f"{shape.name}.{uuid.uuid4().hex}.building")
    building.mkdir(mode=0o700)
    for name in folders:
        (building / name).mkdir()
        os.chmod(building / name, 0o777)
    for place in whiteouts:
        for folder in list(reversed(place.parents))[1:]:  # on the way, made as the lower layer has them
            if not (building / folder).exists():
                stat = (lower / folder).stat()
                (building / folder).mkdir(mode=stat.st_mode & 0o7777)
                os.chown(building / folder, stat.st_uid, stat.st_gid)
        os.mknod(building / place, 0o600 | 0o020000, os.makedev(0, 0))  # S_IFCHR 0/0: a whiteout
    os.rename(building, shape)
    return shape


def prune_shapes(workspaces: Path) -> None:
    """Put in the trash the shapes that neither a mounted view (its mount options name its shape)
    nor this agent stands on: what earlier agents made for a work folder that has changed since."""
    folder = workspaces / SHAPES_FOLDER
    if not folder.is_dir():
        return
    standing = _overlay_lower_layers()
    with _shapes_lock:
        for shape in set(folder.iterdir()) - set(_shapes.values()):
            if str(shape) not in standing:
                trash_for(workspaces).put(shape)


def _overlay_lower_layers() -> set[str]:
    """The lower layers of every overlay mounted here (/proc/self/mounts escapes a space as \\040)."""
    layers = set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split(" ")
        if len(fields) > 3 and fields[2] == "overlay":
            for option in fields[3].split(","):
                if option.startswith("lowerdir="):
                    unescaped = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), option[len("lowerdir="):])
                    layers.update(unescaped.split(":"))
    return layers


@functools.cache
def _outermost(paths: tuple[Path, ...]) -> list[Path]:
    """The paths not inside another of them: hiding a folder hides what it holds."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda path: len(path.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path == outer or outer in path.parents for outer in kept):
            kept.append(path)
    return kept


def _whiteout_place(lower: Path, hidden: Path) -> Path | None:
    """Where, relative to ``lower``, a whiteout hides ``hidden``: at its place, or at its first
    folder that does not exist yet (so it stays hidden once made); None when it is not inside."""
    if hidden == lower or lower not in hidden.parents:
        return None
    relative = hidden.relative_to(lower)
    for depth in range(1, len(relative.parts)):
        if not (lower / (place := Path(*relative.parts[:depth]))).exists():
            return place
    return relative
