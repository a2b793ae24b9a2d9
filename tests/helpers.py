"""Shared test helpers: polling with a deadline, free ports, node builders, in-process agents."""

import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from mlmodels.serving import serving_ports
from nodes.models import Node, NodeCredential
from nodes.resources import MILLICORES_PER_CORE, Resources
from nodes.services import join_token_create, node_join, node_register
from workloads.agent.agent import Agent
from workloads.agent.client import ControlPlane
from workloads.agent.config import AgentSettings
from workloads.executors.limits import CGROUP_ROOT
from workloads.models import ACTIVE, Workload
from workloads.services import workload_submit

GiB = 1024**3
# What a node that runs processes only reports, and one that runs models too.
PROCESS_NODE_CAPABILITIES = {"process": {"available": True}}
ML_NODE_CAPABILITIES = {**PROCESS_NODE_CAPABILITIES, "mlmodel": {"available": True}}


def kill_group(proc: subprocess.Popen, *, wait: float = 10) -> None:
    """SIGKILL a child started in its own session, with its whole process group, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05, message: str = "condition"):
    """Poll until ``predicate()`` is truthy; return its value. Never sleep-and-hope."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{message} not met within {timeout}s")


def at_once(count: int, step: Callable[[], object]) -> list:
    """``step()`` run by ``count`` threads released together (a barrier), each with a database
    connection of its own; what each returned. Races between control-loop passes are tested so."""
    results, barrier = [], threading.Barrier(count)

    def run() -> None:
        try:
            barrier.wait()
            results.append(step())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def free_port() -> int:
    """A TCP port nothing listens on now, as the kernel chooses one (bind to port 0), so tests
    running side by side never share one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_serving_port(host: str = "127.0.0.1") -> int:
    """A port of ``CNET_ML_SERVE_PORTS`` nothing is bound to now (from a random place in it: other
    test runs may be serving meanwhile)."""
    ports = serving_ports()
    start = secrets.randbelow(len(ports))
    for offset in range(len(ports)):
        port = ports[(start + offset) % len(ports)]
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {ports}")


def make_node(node_id: str, *, cpu: float = 4, memory: int = 8 * GiB, gpu: int = 0, storage: int = 100 * GiB,
              parent: str | None = None, peers: tuple[str, ...] = (), capabilities: dict | None = None) -> Node:
    """Register a node the way an agent does (cpu in cores, memory in bytes)."""
    return node_register(
        node_id=node_id,
        capacity=Resources(cpu=round(cpu * MILLICORES_PER_CORE), gpu=gpu, memory=memory, storage=storage),
        parent=parent,
        peers=peers,
        capabilities=capabilities if capabilities is not None else PROCESS_NODE_CAPABILITIES,
    )


def submit_process(*, owner=None, cpu: float = 1.0, memory: int = GiB, name: str = "w", **extra) -> Workload:
    """Submit ``sleep 60`` as a process workload (cpu in cores, memory in bytes)."""
    return workload_submit(
        owner=owner, name=name, type="process", config={"command": "sleep", "args": ["60"]},
        requirements=Resources(cpu=round(cpu * MILLICORES_PER_CORE), memory=memory), **extra,
    )


def database_url(db: dict | None = None, name: str | None = None) -> str:
    """A database (default: the test database this process uses), as a ``DATABASE_URL`` a child
    process can open; ``name`` opens another database on the same server."""
    db = db or connection.settings_dict
    name = name or str(db["NAME"])
    if db["ENGINE"] == "django.db.backends.sqlite3":
        assert name != ":memory:" and "mode=memory" not in name, "a child process needs a file database"
        return f"sqlite:///{name}"
    auth = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or ""
    if host.startswith("/"):  # a socket folder goes in the query string
        return f"postgres://{auth}@/{name}?host={quote(host, safe='')}"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{name}"


def node_credential(node_id: str, data_dir: Path, *, path: Path | None = None) -> str:
    """A new credential for the node (``node_join`` with a fresh join token), kept where its agent
    looks for it (``data_dir/agent/<node_id>.credential``); whatever the node held before is gone."""
    NodeCredential.objects.filter(node__node_id=node_id).delete()  # a row from an agent before
    credential = node_join(token=join_token_create(), node_id=node_id)
    ControlPlane("http://unused", node_id=node_id, data_dir=data_dir, credential_path=path)._save_credential(credential)
    return credential


@contextmanager
def in_process_agents(server: str) -> Iterator[Callable[..., Agent]]:
    """Yield ``make(node_id, **options)``, which builds the agent ``runagent`` runs, in this process
    and driven by the test (not registered yet), talking to the control plane at ``server`` (the
    test's ``live_server.url``) with a credential of its node's own. On exit, whatever the test
    did, every process they still supervise is killed and the cgroup folders each made for its
    node are removed.

    ``make`` takes the node's size (cpu in cores, memory and storage in bytes), ``port`` (a free
    one if not given), ``work_dir`` and ``data_dir`` (default: the test data folder),
    ``capabilities`` (default: processes only), and any other ``AgentSettings`` field. Given an
    agent's ``config`` instead of a node id, it builds one more agent with those settings: the
    node's agent after a restart."""
    made: list[Agent] = []

    def make(node_id: str | None = None, *, config: AgentSettings | None = None, cpu: float = 1,
             memory: int = GiB, storage: int = 0, port: int | None = None, work_dir: Path | None = None,
             data_dir: Path | None = None, capabilities: dict | None = None, **options) -> Agent:
        assert (node_id is None) != (config is None), "make(node_id, ...) or make(config=...)"
        if config is None:
            data_dir = data_dir or Path(settings.DATA_DIR)
            options = {"parent": None, "peers": [], "labels": {}, **options}
            config = AgentSettings(
                node_id=node_id, address="127.0.0.1", port=port or free_port(),
                capacity=Resources(cpu=round(cpu * MILLICORES_PER_CORE), gpu=0, memory=memory, storage=storage),
                work_dir=work_dir or data_dir, data_dir=data_dir, log_dir=data_dir / "logs",
                capabilities=capabilities or PROCESS_NODE_CAPABILITIES, server=server, **options,
            )
        credential = node_credential(config.node_id, config.data_dir)
        agent = Agent(config, client=ControlPlane(server, node_id=config.node_id, data_dir=config.data_dir,
                                                  credential=credential, attempts=2, backoff=0.05))
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            for supervised in list(agent.handles.values()):
                supervised.handle.kill()
                supervised.handle.cleanup()
            for base in ("", "memory", "cpu"):  # what detect_limiter made (v2, v1) for the node
                try:
                    (CGROUP_ROOT / base / "cnet" / agent.config.node_id).rmdir()
                except OSError:
                    pass


def supervise_until(agent: Agent, predicate, *, timeout: float, message: str):
    """Drive an in-process agent's supervision passes (as ``runagent`` does) until ``predicate()``
    is truthy; return its value."""
    def step():
        agent.supervise_once()
        return predicate()

    return wait_for(step, timeout=timeout, message=message)


def supervise_until_done(agent: Agent, workload: Workload, *, timeout: float = 15) -> Workload:
    """Drive an in-process agent's supervision passes until the workload has ended; return its row."""
    def ended():
        row = Workload.objects.get(pk=workload.pk)
        return row if row.status not in ACTIVE else None

    return supervise_until(agent, ended, timeout=timeout, message="the workload ended")


def workload_row(workload_id) -> Workload:
    return Workload.objects.select_related("node").get(pk=workload_id)


def wait_status(workload_id, *statuses: str, node: str | None = None, timeout: float = 30.0) -> Workload:
    """Poll the database until the workload is in one of ``statuses`` (on ``node``, if named);
    on a timeout, say where it is instead."""
    def reached():
        workload = workload_row(workload_id)
        ok = workload.status in statuses and (node is None or (workload.node and workload.node.node_id == node))
        return workload if ok else None

    try:
        return wait_for(reached, timeout=timeout, message=f"workload {workload_id} {statuses}")
    except AssertionError:
        workload = workload_row(workload_id)
        raise AssertionError(f"workload {workload_id} is {workload.status} on {workload.node} ({workload.reason}),"
                             f" not {statuses} on {node or 'any node'} after {timeout}s") from None


def node_status(node_id: str) -> str:
    return Node.objects.values_list("status", flat=True).get(node_id=node_id)
