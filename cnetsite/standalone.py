"""A node started with no control plane named, as the seed starts one: ``./bin/cnet-agent -config X``.

``runagent`` hands over here when no ``--server``, ``server.address`` or ``CNET_SERVER_URL`` names a
control plane. If the config's parent, or else one of its peers, names an address where a control
plane answers, the agent joins that one over the node API; if none answers, the node runs its own
(``manage.py up``: the web on the config's ``agent.port``, control worker, beat and its own agent).
Either way it keeps its data in ``<data root>/nodes/<node_id>`` (the data root is ``CNET_DATA_DIR``,
default ``var/``), so two terminals on one machine never share a database, and a node started again
finds its own.

Joining takes a join token, except on the same machine under the same data root: an embedded
control plane keeps a token in ``local_join.json`` in its data folder (see ``up``), which the agent
reads here and spends in this process, never on a command line. That file is 0600 in a 0700 folder
beside the SQLite database, the secret key and the admin's password, so whoever can read it owns
that control plane already; other users of the machine, and other machines, need a token from
``manage.py create_join_token``. The node API itself trusts no address: a request from 127.0.0.1
may come through a proxy or from another user's process.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.management.base import CommandError

from core.files import write_private_file
from nodes.services import join_token_create, join_token_revoke
from workloads.agent.client import ControlPlane, ControlPlaneError, CredentialRefused
from workloads.agent.config import AgentSettings, Overrides

LOCAL_JOIN_FILE = "local_join.json"
JOINED_FILE = "joined.json"  # in a joined node's folder: where it is named, which control plane it joined
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"})
PROBE_SECONDS = 2.0
# The flags that shape the node, passed on to the agent of whichever launch is chosen.
NODE_FLAGS = ("node_id", "address", "port", "cpu", "gpu", "memory", "storage", "parent", "heartbeat",
              "shutdown_policy")


@dataclass
class Launch:
    """The process that becomes this node: argv, the environment it adds, and what to tell the user."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    says: str = ""


def node_data_dir(node_id: str) -> Path:
    if node_id in {".", ".."}:
        raise CommandError(f"node_id {node_id!r} cannot name a data folder")
    return Path(settings.DATA_DIR) / "nodes" / node_id


def start_node(*, config_path: str | None, config: AgentSettings, overrides: Overrides):
    """Become this node's process (exec): the agent of a control plane a link names, or a whole node."""
    launch = prepare_node(config_path=config_path, config=config, overrides=overrides)
    print(launch.says, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(launch.argv[0], launch.argv, {**os.environ, **launch.env})


def prepare_node(*, config_path: str | None, config: AgentSettings, overrides: Overrides) -> Launch:
    """Choose how this node runs; to join a control plane, get its credential first."""
    data_dir = node_data_dir(config.node_id)
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    config_file = str(Path(config_path).resolve()) if config_path else None
    flags = agent_flags(overrides)
    found = reachable_control_plane(config)
    if found is None:
        (data_dir / JOINED_FILE).unlink(missing_ok=True)  # it serves its own now: nobody joins through it
        links = [name for name in [config.parent, *config.peers] if name]
        why = f"none answers at {', '.join(links)}" if links else "no control plane named"
        return Launch(
            argv=[sys.executable, manage, "up", "--port", str(config.port), "--bind", _bind(config.address),
                  *(["--agent-config", config_file] if config_file else []), "--", *flags],
            env={"CNET_DATA_DIR": str(data_dir), "CNET_LOCAL_NODE_ID": config.node_id, **_allowed_hosts(config)},
            says=f"node {config.node_id}: {why}; running its own control plane on http://127.0.0.1:{config.port} "
                 f"(data in {data_dir})",
        )
    link, url = found
    credential = Path(overrides.credential_file) if overrides.credential_file else (
        data_dir / "agent" / f"{config.node_id}@{_endpoint_name(url)}.credential")
    local = local_join(url)
    join(config=config, url=url, link=link, credential=credential, data_dir=data_dir,
         token=config.join_token or (local or {}).get("join_token"))
    write_private_file(data_dir / JOINED_FILE, json.dumps({"endpoint": f"http://{config.address}:{config.port}",
                                                           "server": url}))
    env = {"CNET_DATA_DIR": str(data_dir)}
    if local and local.get("broker_dir") and not os.environ.get("CELERY_BROKER_URL"):
        env["CNET_BROKER_DIR"] = local["broker_dir"]  # its doorbells ring here at once
    return Launch(
        argv=[sys.executable, manage, "runagent", *(["--config", config_file] if config_file else []), *flags,
              "--server", url,
              "--credential-file", str(credential)],
        env=env,
        says=f"node {config.node_id}: joining the control plane at {url} (its {link}); data in {data_dir}",
    )


def agent_flags(overrides: Overrides) -> list[str]:
    """The command-line flags that gave ``overrides`` (server and credential flags aside)."""
    flags = []
    for name in NODE_FLAGS:
        value = getattr(overrides, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    for peer in overrides.peers or []:
        flags += ["--peer", peer]
    return flags


def reachable_control_plane(config: AgentSettings) -> tuple[str, str] | None:
    """(``"parent 127.0.0.1:8080"``, the control plane's URL) for the first of the parent, then the
    peers, that runs a control plane that answers, or is a node of this machine that joined one
    (an agent serves no HTTP itself); None if none does (names without a port are node ids)."""
    links = [("parent", config.parent)] if config.parent else []
    links += [("peer", peer) for peer in config.peers]
    for role, name in links:
        url = _url_for(name)
        for server in (url, _joined_server(url)) if url else ():
            if server and _answers(server):
                return f"{role} {name}", server
    return None


def _joined_server(url: str) -> str | None:
    """The control plane a node of this machine and data root serving nowhere at ``url`` joined."""
    for path in sorted(Path(settings.DATA_DIR).glob(f"nodes/*/{JOINED_FILE}")):
        try:
            joined = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(joined, dict) and _same_local_endpoint(str(joined.get("endpoint", "")), url):
            return str(joined.get("server", "")) or None
    return None


def local_join(url: str) -> dict | None:
    """What an embedded control plane serving ``url`` on this machine left for local agents under
    this data root (``up`` writes it): its ``join_token`` and ``broker_dir``. None if none did."""
    root = Path(settings.DATA_DIR)
    for path in [root / LOCAL_JOIN_FILE, *sorted(root.glob(f"nodes/*/{LOCAL_JOIN_FILE}"))]:
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and _same_local_endpoint(str(found.get("server", "")), url):
            return found
    return None


def local_join_offer(*, server: str) -> str:
    """Leave a join token for agents of this machine and data root in the data folder (0600); a
    token a control plane that died left behind is revoked first. Returns the new token."""
    path = Path(settings.DATA_DIR) / LOCAL_JOIN_FILE
    _revoke_left_behind(path)
    token = join_token_create(ttl_seconds=None, uses=None)
    broker_dir = str(settings.BROKER_DIR) if settings.CELERY_BROKER_URL.startswith("filesystem://") else None
    write_private_file(path, json.dumps({"server": server, "node_id": settings.CNET_LOCAL_NODE_ID,
                                         "join_token": token, "broker_dir": broker_dir}))
    return token


def local_join_withdraw(token: str) -> None:
    """The control plane stops: its local token joins nobody any more (credentials got with it stay)."""
    join_token_revoke(key=token)
    path = Path(settings.DATA_DIR) / LOCAL_JOIN_FILE
    if _token_in(path) == token:
        path.unlink()


def _revoke_left_behind(path: Path) -> None:
    left = _token_in(path)
    if left:
        join_token_revoke(key=left)
    path.unlink(missing_ok=True)


def _token_in(path: Path) -> str | None:
    try:
        token = json.loads(path.read_text()).get("join_token")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def join(*, config: AgentSettings, url: str, link: str, credential: Path, data_dir: Path, token: str | None) -> None:
    """Get this node its credential from ``url`` unless it holds one: here, so the token is on no
    command line (``ps`` shows those to every user)."""
    if credential.exists():
        return
    if not token:
        raise CommandError(
            f"node {config.node_id}: the control plane at {url} (its {link}) asks a node to join with a join token "
            f"the first time. On its machine run: CNET_DATA_DIR=<its data folder: var/nodes/<its node_id>, or var/ "
            f"under make run> .venv/bin/python manage.py create_join_token; then start this agent again with "
            f"--join-token TOKEN (or server.join_token in its YAML). On the same machine under the same data root "
            f"(CNET_DATA_DIR) no token is needed.")
    client = ControlPlane(url, node_id=config.node_id, data_dir=data_dir, join_token=token, credential_path=credential)
    try:
        client.ensure_credential()
    except CredentialRefused as error:
        raise CommandError(str(error)) from None
    except ControlPlaneError as error:
        raise CommandError(f"node {config.node_id}: could not join the control plane at {url}: {error}") from None


def _url_for(name: str) -> str | None:
    if "://" in name:
        return name.rstrip("/")
    host, sep, port = name.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def _answers(url: str) -> bool:
    try:
        answer = requests.get(f"{url}/api/health/live", timeout=PROBE_SECONDS)
        return answer.status_code == 200 and answer.json().get("status") == "ok"
    except (requests.RequestException, ValueError, AttributeError):
        return False


def _same_local_endpoint(a: str, b: str) -> bool:
    a, b = urlsplit(a), urlsplit(b)
    return a.port is not None and a.port == b.port and {a.hostname, b.hostname} <= LOOPBACK_HOSTS


def _endpoint_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}_{parts.port}"


def _bind(address: str) -> str:
    """Loopback stays on loopback; an address other machines name the node by is served on every
    interface, so the seed's ``curl http://localhost:…`` answers too."""
    return "127.0.0.1" if address in LOOPBACK_HOSTS - {"0.0.0.0"} else "0.0.0.0"


def _allowed_hosts(config: AgentSettings) -> dict[str, str]:
    if config.address in LOOPBACK_HOSTS:
        return {}
    hosts = [host for host in os.environ.get("ALLOWED_HOSTS", "").split(",") if host.strip()]
    return {"ALLOWED_HOSTS": ",".join([*hosts, config.address])}
