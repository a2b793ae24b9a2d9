"""Start, re-adopt and reap the containers of workloads, labelled with their workload and node."""

import logging
import re
import socket

from ...container_policy import (
    capabilities_kept,
    is_host_path,
    mount_allowed,
    network_allowed,
    privileged_allowed,
    volume_allowed,
)
from ..base import AgentContext, Executor, ExecutorError, WorkloadContext, workload_context
from ..limits import Limits
from .engine import engine, engine_cpus, ensure_image, remove_container
from .handle import STREAMS, ContainerHandle

logger = logging.getLogger(__name__)

LABEL_WORKLOAD = "cnet.workload_id"
LABEL_NODE = "cnet.node_id"
# The engine refuses smaller memory limits (20.10: 6 MiB).
MIN_MEMORY_BYTES = 6 * 1024 * 1024
# The engine's smallest CPU quota is 0.01 CPU.
MIN_NANO_CPUS = 10_000_000


def container_name(node_id: str, workload_id: str) -> str:
    # Engine names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*; node ids may hold anything.
    return f"cnet-{re.sub(r'[^a-zA-Z0-9_.-]', '-', node_id)}-{workload_id}"


class ContainerExecutor(Executor):
    def start(self, workload, context: AgentContext | WorkloadContext) -> ContainerHandle:
        scope = workload_context(context, str(workload.pk))
        try:
            return self._start(workload, scope)
        except ExecutorError:
            scope.release()
            raise

    def _start(self, workload, context: WorkloadContext) -> ContainerHandle:
        import docker.errors

        config = workload.config or {}
        refuse_unsafe(config, owner=context.owner)
        client = engine()
        workload_id = str(workload.pk)
        image = config.get("image") or ""
        if not image:
            raise ExecutorError("config.image is required for a container workload")
        ensure_image(client, image, config.get("pull_policy") or "if-not-present", context.node_id)

        name = container_name(context.node_id, workload_id)
        remove_container(client, name)  # left by a start that crashed before reporting running
        host = host_limits(workload, client, context)
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
                ports=bound_ports(config.get("ports"), context.address),
                working_dir=config.get("working_dir") or None,
                volumes=volumes or None,
                privileged=bool(config.get("privileged")),
                network_mode=config.get("network_mode") or None,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                cap_add=capabilities_kept() or None,
                pids_limit=Limits.of(workload).pids or None,
                init=True,  # PID 1 forwards SIGTERM, so a graceful stop can be graceful
                stdin_open=False,
                tty=False,
                detach=True,
                **{key: value for key, value in host.items() if key != "gpus"},
            )
        except docker.errors.ImageNotFound as error:
            raise ExecutorError(f"image not found: {image!r} ({error.explanation})") from error
        except docker.errors.APIError as error:
            raise ExecutorError(f"container for image {image!r} could not be created: {error.explanation}") from error
        try:
            container.start()
        except docker.errors.APIError as error:
            remove_container(client, name)
            raise ExecutorError(f"container for image {image!r} could not start: {error.explanation}") from error
        ports = published_ports(container) if config.get("ports") else {}
        extra = {**({"ports": ports} if ports else {}), **({"gpus": host["gpus"]} if host.get("gpus") else {})}
        handle = ContainerHandle.fresh(workload_id=workload_id, container_id=container.id, name=name, image=image,
                                       log_dir=context.log_dir, extra=extra, scope=context)
        handle.follow()
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
                               offsets=offsets, scope=workload_context(context, workload_id))

    def reap_orphans(self, *, known: set[str], context: AgentContext) -> list[str]:
        """Remove this node's containers whose workloads are not running here any more."""
        try:
            client = engine()
        except ExecutorError:
            return []
        reaped = []
        for attrs in client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={context.node_id}"}):
            workload_id = (attrs.get("Labels") or {}).get(LABEL_WORKLOAD, "")
            if workload_id in known or not remove_container(client, attrs["Id"]):
                continue
            logger.warning("workload %s: removed orphan container %s on %s", workload_id or "?",
                           attrs["Id"][:12], context.node_id)
            reaped.append(workload_id)
        return reaped


def host_limits(workload, client, context: WorkloadContext) -> dict:
    """The engine's memory, CPU and GPU settings for the workload's request (none: unlimited).
    GPUs by device id, leased to this workload alone (``gpus``: which)."""
    from docker.types import DeviceRequest

    host = {}
    if workload.memory_bytes:
        if workload.memory_bytes < MIN_MEMORY_BYTES:
            raise ExecutorError(f"requirements.memory {workload.memory_bytes} bytes is below the container "
                                f"engine's minimum of {MIN_MEMORY_BYTES} bytes")
        # Swap equal to memory: the limit is the limit, so OOM comes when it is reached.
        host["mem_limit"] = host["memswap_limit"] = workload.memory_bytes
    if workload.cpu_millicores:
        ceiling = engine_cpus(client) * 1_000_000_000
        host["nano_cpus"] = min(max(workload.cpu_millicores * 1_000_000, MIN_NANO_CPUS), ceiling)
    if workload.gpu_count:
        host["gpus"] = context.gpu_ids(workload.gpu_count)
        host["device_requests"] = [DeviceRequest(device_ids=host["gpus"], capabilities=[["gpu"]])]
    return host


def bound_ports(ports: dict | None, address: str) -> dict | None:
    """Published ports bound to the node's address only, not every interface of the host."""
    if not ports:
        return None
    try:
        ip = socket.gethostbyname(address)
    except OSError as error:
        raise ExecutorError(f"the node's address {address!r} does not resolve: {error}") from error
    return {container: (ip, host) if host else (ip,) for container, host in ports.items()}


def published_ports(container) -> dict:
    """The host ports the engine bound, where the request left them for it to choose."""
    container.reload()
    return {
        port: [binding.get("HostPort") for binding in bindings or []]
        for port, bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).items()
    }


def refuse_unsafe(config: dict, *, owner: str | None) -> None:
    """The API refuses these with 400; refuse again here for rows written some other way. Whose
    a named volume is can be told only where the agent was sent the owner."""
    if not privileged_allowed(bool(config.get("privileged"))):
        raise ExecutorError("privileged containers are not allowed on this cluster")
    network = config.get("network_mode") or ""
    if network and not network_allowed(network):
        raise ExecutorError(f"network_mode {network!r} is not allowed on this cluster")
    for volume in config.get("volumes") or []:
        source = str(volume.get("source", ""))
        if is_host_path(source) and not mount_allowed(source):
            raise ExecutorError(f"host bind mount {source!r} is not allowed on this cluster")
        if not is_host_path(source) and owner and not volume_allowed(source, owner=owner):
            raise ExecutorError(f"volume {source!r} is neither on the allowlist nor {owner}'s")


def shipped_offsets(workload_id: str, *, since) -> dict:
    """How many bytes of each stream of this run (chunks since it started) the database holds,
    so a re-adopting agent resumes there instead of shipping the output twice (exact for UTF-8)."""
    from ...models import WorkloadLog

    offsets = dict.fromkeys(STREAMS, 0)
    chunks = WorkloadLog.objects.filter(workload_id=workload_id)
    if since is not None:
        chunks = chunks.filter(created_at__gte=since)
    for stream, text in chunks.values_list("stream", "text").iterator():
        offsets[stream] = offsets.get(stream, 0) + len(text.encode("utf-8"))
    return offsets
