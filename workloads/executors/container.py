"""Containers through the Docker Engine API: image policy, limits, labels, logs, adoption.

Every container this agent starts is labelled with its workload and node, named
``cnet-<node>-<workload>``, runs with ``no-new-privileges`` and under the workload's
memory and CPU request. Output goes, one reader thread per stream, into the same log files
the process executor uses, so the supervisor ships both kinds the same way (``LogTail``).
Reading the engine's log stream is blocking; the threads keep ``read_logs`` non-blocking.
"""

import logging
import os
import re
import threading
import time
from pathlib import Path

from ..container_policy import mount_allowed, network_allowed, privileged_allowed
from .base import AgentContext, Executor, ExecutorError, Exit, Handle, LogTail, register_executor
from .process import log_path

logger = logging.getLogger(__name__)

LABEL_WORKLOAD = "cnet.workload_id"
LABEL_NODE = "cnet.node_id"
STREAMS = ("stdout", "stderr")
# The engine refuses smaller memory limits (20.10: 6 MiB).
MIN_MEMORY_BYTES = 6 * 1024 * 1024
# The engine's smallest CPU quota is 0.01 CPU.
MIN_NANO_CPUS = 10_000_000
ENGINE_TIMEOUT_SECONDS = 30
# How long an unexplained SIGKILL waits for the engine's late OOMKilled before it is taken as is.
OOM_SETTLE_SECONDS = 1.0
POOL_SIZE = 256

_client_lock = threading.Lock()
_client = None


def engine():
    """One Docker client per process (it pools its connections); ExecutorError if unreachable."""
    global _client
    with _client_lock:
        if _client is None:
            import docker  # imported here: nodes without the SDK can still run processes

            try:
                # Each running container holds two streaming connections (its log followers).
                client = docker.from_env(timeout=ENGINE_TIMEOUT_SECONDS, max_pool_size=POOL_SIZE)
                client.ping()
            except Exception as error:  # the SDK raises DockerException, requests errors, OSError
                raise ExecutorError(f"no container engine reachable on this node: {error}") from error
            _client = client
        return _client


def detect_container_engine() -> dict:
    """The node's container capability, as the agent reports it at registration."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            version = client.version()
        finally:
            client.close()
    except Exception as error:
        return {"available": False, "reason": f"no container engine reachable: {error}"}
    return {
        "available": True,
        "engine": "docker",
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
    }


def container_name(node_id: str, workload_id: str) -> str:
    # Engine names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*; node ids may hold anything.
    return f"cnet-{re.sub(r'[^a-zA-Z0-9_.-]', '-', node_id)}-{workload_id}"


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
    workload_type = "container"

    def __init__(self, *, workload_id: str, container_id: str, name: str, image: str, log_dir: Path,
                 offsets: dict | None = None, extra: dict | None = None):
        self.workload_id = workload_id
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

    def _follow(self) -> None:
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
            self._follow()
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
            self._follow()  # the stream broke while it still runs: follow on from where the file ends
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
        import docker.errors

        try:
            engine().api.remove_container(self.container_id, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as error:
            logger.warning("workload %s: could not remove container %s: %s", self.workload_id, self.name, error)
            return
        for follower in self.followers.values():
            follower.join(timeout=5)
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


class ContainerExecutor(Executor):
    type = "container"

    def start(self, workload, context: AgentContext) -> ContainerHandle:
        import docker.errors
        from docker.types import DeviceRequest

        config = workload.config or {}
        refuse_unsafe(config)
        client = engine()
        workload_id = str(workload.pk)
        image = config.get("image") or ""
        if not image:
            raise ExecutorError("config.image is required for a container workload")
        ensure_image(client, image, config.get("pull_policy") or "if-not-present", context.node_id)

        name = container_name(context.node_id, workload_id)
        _remove_stale(client, name)  # left by a start that crashed before reporting running
        host = {
            "mem_limit": None, "memswap_limit": None, "nano_cpus": None, "device_requests": None,
        }
        if workload.memory_bytes:
            if workload.memory_bytes < MIN_MEMORY_BYTES:
                raise ExecutorError(f"requirements.memory {workload.memory_bytes} bytes is below the container "
                                    f"engine's minimum of {MIN_MEMORY_BYTES} bytes")
            # Swap equal to memory: the limit is the limit, so OOM comes when it is reached.
            host["mem_limit"] = host["memswap_limit"] = workload.memory_bytes
        if workload.cpu_millicores:
            ceiling = _engine_cpus(client) * 1_000_000_000
            host["nano_cpus"] = min(max(workload.cpu_millicores * 1_000_000, MIN_NANO_CPUS), ceiling)
        if workload.gpu_count:
            gpus = context.capabilities.get("gpus") or []
            if len(gpus) < workload.gpu_count:
                raise ExecutorError(f"needs {workload.gpu_count} GPU(s); node {context.node_id} has {len(gpus)}")
            host["device_requests"] = [DeviceRequest(count=workload.gpu_count, capabilities=[["gpu"]])]
        command = config.get("command")
        if isinstance(command, str):
            command = [command] if command else []
        args = list(config.get("args") or [])
        volumes = {
            v["source"]: {"bind": v["target"], "mode": "ro" if v.get("read_only") else "rw"}
            for v in config.get("volumes") or []
        }
        try:
            container = client.containers.create(
                image,
                # The seed's command/args: command replaces the image's entrypoint, args its CMD.
                entrypoint=command or None,
                command=args if (args or command) else None,
                name=name,
                labels={LABEL_WORKLOAD: workload_id, LABEL_NODE: context.node_id},
                environment={**(config.get("env") or {}),
                             "CNET_WORKLOAD_ID": workload_id, "CNET_NODE_ID": context.node_id},
                ports=config.get("ports") or None,
                working_dir=config.get("working_dir") or None,
                volumes=volumes or None,
                privileged=bool(config.get("privileged")),
                network_mode=config.get("network_mode") or None,
                security_opt=["no-new-privileges"],
                init=True,  # PID 1 forwards SIGTERM, so a graceful stop can be graceful
                stdin_open=False,
                tty=False,
                detach=True,
                **{key: value for key, value in host.items() if value is not None},
            )
        except docker.errors.ImageNotFound as error:
            raise ExecutorError(f"image not found: {image!r} ({error.explanation})") from error
        except docker.errors.APIError as error:
            raise ExecutorError(f"container for image {image!r} could not be created: {error.explanation}") from error
        try:
            container.start()
        except docker.errors.APIError as error:
            _remove_stale(client, name)
            raise ExecutorError(f"container for image {image!r} could not start: {error.explanation}") from error
        ports = {}
        if config.get("ports"):
            container.reload()  # the host ports the engine chose, where the request left them open
            ports = {
                port: [binding.get("HostPort") for binding in bindings or []]
                for port, bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).items()
            }
        handle = ContainerHandle.fresh(workload_id=workload_id, container_id=container.id, name=name, image=image,
                                 log_dir=context.log_dir, extra={"ports": ports} if ports else {})
        handle._follow()
        logger.info("workload %s: started container %s (%s) from %s", workload_id, name, container.id[:12], image)
        return handle

    def adopt(self, workload, context: AgentContext) -> ContainerHandle | None:
        """Re-attach to its container, running or already exited (then its real exit code is known)."""
        import docker.errors

        workload_id = str(workload.pk)
        runtime = workload.runtime or {}
        client = engine()
        ref = runtime.get("container_id") or container_name(context.node_id, workload_id)
        try:
            attrs = client.api.inspect_container(ref)
        except docker.errors.NotFound:
            return None
        labels = attrs.get("Config", {}).get("Labels") or {}
        if labels.get(LABEL_WORKLOAD) != workload_id or labels.get(LABEL_NODE) != context.node_id:
            return None
        offsets = runtime.get("log_offsets") or shipped_offsets(workload_id, since=workload.started_at)
        return ContainerHandle(workload_id=workload_id, container_id=attrs["Id"], name=attrs["Name"].lstrip("/"),
                               image=attrs.get("Config", {}).get("Image", ""), log_dir=context.log_dir,
                               offsets=offsets)

    def reap_orphans(self, *, known: set[str], context: AgentContext) -> list[str]:
        """Remove this node's containers whose workloads are not running here any more."""
        import docker.errors

        try:
            client = engine()
        except ExecutorError:
            return []
        reaped = []
        for attrs in client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={context.node_id}"}):
            workload_id = (attrs.get("Labels") or {}).get(LABEL_WORKLOAD, "")
            if workload_id in known:
                continue
            try:
                client.api.remove_container(attrs["Id"], v=True, force=True)
            except docker.errors.NotFound:
                continue
            logger.warning("workload %s: removed orphan container %s on %s", workload_id or "?",
                           attrs["Id"][:12], context.node_id)
            reaped.append(workload_id)
        return reaped


def refuse_unsafe(config: dict) -> None:
    """The API refuses these with 400; refuse again here for rows written some other way."""
    if not privileged_allowed(bool(config.get("privileged"))):
        raise ExecutorError("privileged containers are not allowed on this cluster")
    network = config.get("network_mode") or ""
    if not network_allowed(network):
        raise ExecutorError(f"network_mode {network!r} is not allowed on this cluster")
    for volume in config.get("volumes") or []:
        source = str(volume.get("source", ""))
        if not mount_allowed(source):
            raise ExecutorError(f"host bind mount {source!r} is not allowed on this cluster")


def ensure_image(client, image: str, policy: str, node_id: str) -> None:
    """Apply the pull policy; a missing image that cannot be pulled fails naming the image."""
    import docker.errors

    if policy not in {"if-not-present", "always", "never"}:
        raise ExecutorError(f"unknown pull_policy {policy!r}")
    present = True
    if policy != "always":
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            present = False
        except docker.errors.APIError as error:
            raise ExecutorError(f"image {image!r}: {error.explanation}") from error
    if present and policy != "always":
        return
    if policy == "never":
        raise ExecutorError(f"image not found: {image!r} is not on node {node_id} and pull_policy is never")
    try:
        client.images.pull(image)
    except docker.errors.APIError as error:
        if policy == "always" and _has_image(client, image):
            raise ExecutorError(f"image {image!r} could not be pulled (pull_policy always): "
                                f"{error.explanation}") from error
        raise ExecutorError(f"image not found: {image!r} is not on node {node_id} and could not be pulled "
                            f"({error.explanation})") from error
    logger.info("pulled image %s on %s", image, node_id)


def _has_image(client, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def _remove_stale(client, name: str) -> None:
    import docker.errors

    try:
        client.api.remove_container(name, v=True, force=True)
    except docker.errors.NotFound:
        pass


_ncpu: int | None = None


def _engine_cpus(client) -> int:
    global _ncpu
    if _ncpu is None:
        _ncpu = int(client.info().get("NCPU") or 1)
    return _ncpu


def shipped_offsets(workload_id: str, *, since) -> dict:
    """How many bytes of each stream of this run (chunks since it started) the database holds,
    so a re-adopting agent resumes there instead of shipping the output twice (exact for UTF-8)."""
    from ..models import WorkloadLog

    offsets = dict.fromkeys(STREAMS, 0)
    chunks = WorkloadLog.objects.filter(workload_id=workload_id)
    if since is not None:
        chunks = chunks.filter(created_at__gte=since)
    for stream, text in chunks.values_list("stream", "text").iterator():
        offsets[stream] = offsets.get(stream, 0) + len(text.encode("utf-8"))
    return offsets


register_executor(ContainerExecutor())
