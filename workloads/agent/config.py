"""The agent's configuration: the seed's YAML, overridden by flags, defaults from the machine."""

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from django.conf import settings

from nodes.detect import detect_capacity, detect_gpus
from nodes.resources import MILLICORES_PER_CORE, Resources

from ..kinds import kind_capabilities


class ConfigError(Exception):
    pass


@dataclass
class AgentSettings:
    node_id: str
    address: str
    port: int
    capacity: Resources
    parent: str | None
    peers: list[str]
    labels: dict
    work_dir: Path
    data_dir: Path  # the state file (agent/<node_id>.json) and the storage whose usage is reported
    log_dir: Path  # workload output, under <node_id>/, until it is shipped to the database
    heartbeat_seconds: float = 5.0
    stop_grace_seconds: float = 10.0
    # On SIGTERM: "stop" ends running work (stopped); "requeue" hands it back to be placed again.
    shutdown_policy: str = "stop"
    capabilities: dict = field(default_factory=dict)
    # The control plane's base URL (its node API is under /api/node/), and the join token that
    # gets this node its credential the first time (kept in data_dir/agent/<node_id>.credential).
    server: str = "http://127.0.0.1:8000"
    join_token: str | None = None
    credential_file: Path | None = None  # default: data_dir/agent/<node_id>.credential
    # False when nothing names a control plane (no --server, no server.address, no CNET_SERVER_URL):
    # runagent then joins the one a parent or peer runs, or starts one (cnetsite/standalone.py).
    server_named: bool = True


@dataclass
class Overrides:
    node_id: str | None = None
    address: str | None = None
    port: int | None = None
    cpu: float | None = None
    gpu: int | None = None
    memory: int | None = None
    storage: int | None = None
    parent: str | None = None
    peers: list[str] | None = None
    heartbeat: float | None = None
    shutdown_policy: str | None = None
    server: str | None = None
    join_token: str | None = None
    credential_file: str | None = None


def load_agent_settings(path: str | None, overrides: Overrides) -> AgentSettings:
    """Read the seed's YAML (agent / resources / parent / peers / server); flags win over the file."""
    raw = _read_yaml(path) if path else {}
    agent = raw.get("agent") or {}
    resources = raw.get("resources") or {}
    parent = raw.get("parent") or {}
    peers = raw.get("peers") or {}
    server = raw.get("server") or {}

    data_dir = Path(settings.DATA_DIR)
    detected = detect_capacity(storage_path=data_dir)

    def pick(flag, section: dict, key: str, default):
        if flag is not None:
            return flag
        return section.get(key, default) if section.get(key) is not None else default

    cpu_cores = float(pick(overrides.cpu, resources, "cpu", detected.cpu / MILLICORES_PER_CORE))
    capacity = Resources(
        cpu=round(cpu_cores * MILLICORES_PER_CORE),
        gpu=int(pick(overrides.gpu, resources, "gpu", detected.gpu)),
        memory=int(pick(overrides.memory, resources, "memory", detected.memory)),
        storage=int(pick(overrides.storage, resources, "storage", detected.storage)),
    )
    parent_address = overrides.parent if overrides.parent is not None else (
        parent.get("address") if parent.get("enabled") else None
    )
    peer_addresses = overrides.peers if overrides.peers is not None else (
        list(peers.get("addresses") or []) if peers.get("enabled") else []
    )
    node_id = str(pick(overrides.node_id, agent, "node_id", settings.CNET_LOCAL_NODE_ID))
    return AgentSettings(
        node_id=node_id,
        address=str(pick(overrides.address, agent, "address", "127.0.0.1")),
        port=int(pick(overrides.port, agent, "port", 8080)),
        capacity=capacity,
        parent=parent_address or None,
        peers=[str(p) for p in peer_addresses],
        labels=dict(raw.get("labels") or {}),
        work_dir=Path(settings.CNET_WORK_DIR),
        data_dir=data_dir,
        log_dir=Path(settings.CNET_LOG_DIR),
        heartbeat_seconds=float(pick(overrides.heartbeat, agent, "heartbeat_seconds", settings.CNET_HEARTBEAT_SECONDS)),
        stop_grace_seconds=settings.CNET_STOP_GRACE_SECONDS,
        shutdown_policy=str(pick(overrides.shutdown_policy, agent, "shutdown_policy", "stop")),
        capabilities={**kind_capabilities(), "gpus": detect_gpus()},  # each registered kind, probed
        server=str(pick(overrides.server, server, "address", settings.CNET_SERVER_URL)),
        join_token=pick(overrides.join_token, server, "join_token", None) or None,
        credential_file=Path(overrides.credential_file) if overrides.credential_file else None,
        server_named=bool(overrides.server or server.get("address") or os.environ.get("CNET_SERVER_URL")),
    )


def _read_yaml(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping with agent/resources/parent/peers/server")
    return data
