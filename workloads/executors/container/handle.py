"""A started container as the supervisor watches it: its exit (OOM kills included) and its logs.

Reading the engine's log stream blocks; one follower thread per stream copies it into the
workload's log files, so ``read_logs`` does not.
"""

import logging
import os
import threading
import time
from pathlib import Path

from ..base import Exit, Handle, LogTail
from ..process import log_path
from .engine import engine, remove_container

logger = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
# How long an unexplained SIGKILL waits for the engine's late OOMKilled before it is taken as is.
OOM_SETTLE_SECONDS = 1.0


class LogFollower(threading.Thread):
    """Copies one stream of a container's log into a file, skipping what the file already holds.

    The engine's log of a stream is append-only, so after an agent restart a follower that
    starts from the beginning and skips the file's current size continues it exactly.
    """

    def __init__(self, *, api, container_id: str, stream: str, path: Path):
        super().__init__(name=f"logs-{container_id[:12]}-{stream}", daemon=True)
        self.api = api
        self.container_id = container_id
        self.stream = stream
        self.path = path
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            skip = self.path.stat().st_size if self.path.exists() else 0
            chunks = self.api.logs(self.container_id, stream=True, follow=True,
                                   stdout=self.stream == "stdout", stderr=self.stream == "stderr")
            with open(self.path, "ab") as file:
                for chunk in chunks:
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    if chunk:
                        file.write(chunk)
                        file.flush()
        except Exception as error:  # engine gone or container removed: poll() finds out which
            self.error = error
            logger.debug("container %s: %s follower ended: %s", self.container_id[:12], self.stream, error)


class ContainerHandle(Handle):

    def __init__(self, *, workload_id: str, container_id: str, name: str, image: str, log_dir: Path,
                 scope, offsets: dict | None = None, extra: dict | None = None):
        self.workload_id = workload_id
        self.scope = scope  # its GPUs, given back by cleanup()
        self.container_id = container_id
        self.name = name
        self.image = image
        self.extra = extra or {}
        offsets = offsets or {}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.tails = {s: LogTail(log_path(log_dir, workload_id, s), offsets.get(s, 0)) for s in STREAMS}
        self.followers: dict[str, LogFollower] = {}
        self._exit: Exit | None = None
        self._killed = False  # we sent SIGKILL: a 137 is ours, not the OOM killer's
        self._oom_wait_until: float | None = None

    @classmethod
    def fresh(cls, **kwargs) -> "ContainerHandle":
        """A handle for a new container: its log files start empty (a restarted workload's
        earlier output is in the database already)."""
        for stream in STREAMS:
            log_path(kwargs["log_dir"], kwargs["workload_id"], stream).unlink(missing_ok=True)
        return cls(**kwargs)

    def runtime(self) -> dict:
        return {"container_id": self.container_id, "container_name": self.name, "image": self.image,
                "log_files": {s: str(t.path) for s, t in self.tails.items()}, **self.extra}

    def offsets(self) -> dict:
        return {stream: tail.offset for stream, tail in self.tails.items()}

    def follow(self) -> None:
        """Copy each stream into its file, (re)starting the followers that are not running."""
        api = engine().api
        for stream in STREAMS:
            follower = self.followers.get(stream)
            if follower is None or not follower.is_alive():
                follower = LogFollower(api=api, container_id=self.container_id, stream=stream,
                                       path=self.tails[stream].path)
                follower.start()
                self.followers[stream] = follower

    def poll(self) -> Exit | None:
        if self._exit is not None:
            return self._exit
        if not self.followers:
            self.follow()
        # A follow stream ends when the container does: no engine call while it runs.
        if any(f.is_alive() for f in self.followers.values()):
            return None
        import docker.errors

        try:
            state = engine().api.inspect_container(self.container_id)["State"]
        except docker.errors.NotFound:
            self._exit = Exit(None, f"container {self.name} was removed outside the agent; exit code unknown")
            return self._exit
        except Exception as error:
            logger.warning("workload %s: cannot inspect container %s (%s); retrying",
                           self.workload_id, self.name, error)
            return None
        if state.get("Running") or state.get("Status") in {"restarting", "paused"}:
            self.follow()  # the stream broke while it still runs: follow on from where the file ends
            return None
        if state.get("Status") == "created":  # made but never started (an agent died in between)
            self._exit = Exit(None, f"container {self.name} was created but never started")
            return self._exit
        if self._maybe_unreported_oom(state):
            return None  # asked again at the next poll, without blocking the supervisor
        self._exit = exit_from_state(state)
        return self._exit

    def _maybe_unreported_oom(self, state: dict) -> bool:
        """The engine sometimes misses an OOM kill (its event is dropped when the container's
        cgroup is gone first; seen here about 1 in 15): a SIGKILL nobody here sent is checked in
        the kernel's log, else given a moment for a late ``OOMKilled``."""
        if state.get("OOMKilled") or state.get("ExitCode") != 137 or self._killed:
            return False
        if kernel_logged_oom(self.container_id):
            state["OOMKilled"] = True
            return False
        now = time.monotonic()
        if self._oom_wait_until is None:
            self._oom_wait_until = now + OOM_SETTLE_SECONDS
        return now < self._oom_wait_until

    def terminate(self) -> None:
        # docker stop's first step; the agent sends the kill after its grace period.
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._killed = True
        self._signal("SIGKILL")

    def _signal(self, sig: str) -> None:
        import docker.errors

        try:
            engine().api.kill(self.container_id, signal=sig)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            if error.status_code != 409:  # 409: not running any more
                raise

    def read_logs(self, *, final: bool = False) -> list[tuple[str, str]]:
        if final:
            for follower in self.followers.values():
                follower.join(timeout=5)
        return [(stream, text) for stream, tail in self.tails.items() if (text := tail.read(final=final))]

    def cleanup(self) -> None:
        """Remove the container (its output is in the workload's logs by now)."""
        try:
            remove_container(engine(), self.container_id)
        except Exception as error:
            logger.warning("workload %s: could not remove container %s: %s", self.workload_id, self.name, error)
            return
        self.scope.release()
        for follower in self.followers.values():
            follower.join(timeout=5)
        for tail in self.tails.values():  # its output is in the spool by now
            tail.remove()
        logger.info("workload %s: removed container %s", self.workload_id, self.name)


def kernel_logged_oom(container_id: str) -> bool:
    """Whether the kernel log holds an OOM kill in this container's memory cgroup (its path ends
    in the container id under the cgroupfs and systemd drivers alike). False if unreadable."""
    needle = container_id.encode()
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False  # read everything there is
            except BrokenPipeError:
                continue  # a record was overwritten while we read; go on with the next
            if not record:
                return False
            if b"oom-kill:" in record and needle in record:
                return True
    except OSError:
        return False
    finally:
        os.close(fd)


def exit_from_state(state: dict) -> Exit:
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return Exit(code, "memory limit exceeded", oom=True)
    if state.get("Error"):
        return Exit(code, f"container error: {state['Error']}")
    return Exit(code, "exited with code 0" if code == 0 else f"exited with code {code}")
