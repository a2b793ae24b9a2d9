"""The agent as a client of the control plane: its credential file, a doorbell that carries no
authority, a spool that survives the web server going away, and fencing per restart policy."""

import socket
import stat
import sys
import threading
import time
import uuid

import psutil
import pytest

from nodes.resources import Resources
from nodes.services import join_token_create
from tests.helpers import make_node, supervise_until, wait_for
from workloads.agent.client import ControlPlane, ControlPlaneBusy, CredentialRefused
from workloads.management.commands.runagent import join_and_register
from workloads.models import Workload, WorkloadLog, WorkloadStatus
from workloads.services import workload_submit

S = WorkloadStatus
pytestmark = pytest.mark.django_db(transaction=True)


def submit_here(node_id: str, command: str, *args: str, **extra) -> Workload:
    return workload_submit(owner=None, name="w", type="process", node=node_id,
                           config={"command": command, "args": list(args)},
                           requirements=Resources(cpu=100, gpu=0, memory=0, storage=0), **extra)


def test_a_join_token_is_exchanged_once_for_a_credential_kept_mode_0600_and_reused(live_server, tmp_path):
    node_id = f"joiner-{uuid.uuid4().hex[:6]}"
    client = ControlPlane(live_server.url, node_id=node_id, data_dir=tmp_path, join_token=join_token_create())
    credential = client.ensure_credential()
    path = tmp_path / "agent" / f"{node_id}.credential"
    assert path.read_text() == credential
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A later start: the token is used up, the kept credential is used instead.
    again = ControlPlane(live_server.url, node_id=node_id, data_dir=tmp_path, join_token="spent")
    assert again.ensure_credential() == credential
    assert again.work() == {"work": [], "running": [], "more": False}
    # Unknown credential: a clear error that says how to get one.
    path.write_text("cnode_forged")
    with pytest.raises(CredentialRefused, match="join token"):
        ControlPlane(live_server.url, node_id=node_id, data_dir=tmp_path).work()


def test_a_forged_start_for_work_not_placed_here_runs_nothing(make_agent):
    node_id = f"forged-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id)
    agent.register()
    other = f"other-{uuid.uuid4().hex[:6]}"
    make_node(other)
    elsewhere = submit_here(other, "sleep", "60")  # scheduled on another node
    done = submit_here(node_id, "true")
    Workload.objects.filter(pk=done.pk).update(status=S.SUCCEEDED)  # a replayed start of finished work
    for forged in (elsewhere.pk, done.pk, uuid.uuid4()):
        agent.start(str(forged))  # what a forged or replayed message on node.<id> does
    assert not agent.handles
    assert Workload.objects.get(pk=elsewhere.pk).status == S.SCHEDULED


class Gate:
    """A TCP forwarder in front of the live server that can be shut (connections refused and cut)
    and opened again: the control plane's web server going away, seen from the agent."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def shut(self) -> None:
        self.open = False
        for sock in self.conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def close(self) -> None:
        self.shut()
        self.listener.close()


def test_with_the_web_server_away_for_10s_every_line_and_the_exit_arrive_once_in_order(make_agent, live_server):
    port = int(live_server.url.rsplit(":", 1)[1])
    gate = Gate(port)
    try:
        node_id = f"spooler-{uuid.uuid4().hex[:6]}"
        agent = make_agent(node_id)
        agent.client.base = f"http://127.0.0.1:{gate.port}/api/node/"
        agent.register()
        code = "import sys, time\nfor i in range(40):\n    print(f'line {i}', flush=True); time.sleep(0.1)\nsys.exit(3)"
        workload = submit_here(node_id, sys.executable, "-c", code)
        agent.start(str(workload.pk))
        assert Workload.objects.get(pk=workload.pk).status == S.RUNNING
        gate.shut()
        away_until = time.monotonic() + 10
        supervise_until(agent, lambda: not agent.handles and time.monotonic() > away_until, timeout=20,
                        message="the workload exited while the web server was away")
        assert len(agent.spool) and Workload.objects.get(pk=workload.pk).status == S.RUNNING
        assert (agent.config.data_dir / "agent" / f"{node_id}.spool").stat().st_size > 0  # kept on disk
        gate.open = True
        supervise_until(agent, lambda: not len(agent.spool), timeout=15, message="the spool was delivered")
        ended = Workload.objects.get(pk=workload.pk)
        assert (ended.status, ended.exit_code) == (S.FAILED, 3)
        lines = "".join(WorkloadLog.objects.filter(workload=workload).order_by("seq").values_list("text", flat=True))
        assert lines == "".join(f"line {i}\n" for i in range(40))
        exited = ended.events.get(to_status=S.FAILED).created_at
        assert WorkloadLog.objects.filter(workload=workload, created_at__gt=exited).count() == 0
        agent.shutdown()
    finally:
        gate.close()


def test_a_silent_agent_fences_only_work_that_would_be_replaced_and_keeps_the_rest(make_agent):
    node_id = f"picky-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id)
    agent.register()
    replaceable = submit_here(node_id, "sleep", "60", restart_policy="on-failure")
    kept = submit_here(node_id, sys.executable, "-c",
                       "import time\nfor i in range(600):\n    print(i, flush=True); time.sleep(0.05)")
    agent.start(str(replaceable.pk))
    assert set(agent.handles) == {str(replaceable.pk), str(kept.pk)}
    agent.last_contact = time.monotonic() - agent.fence_after - 0.1  # silent that long
    assert agent.fence_once()
    assert set(agent.handles) == {str(kept.pk)} and set(agent.fenced) == {str(replaceable.pk)}
    supervise_until(agent, lambda: WorkloadLog.objects.filter(workload=kept).count() > 3, timeout=10,
                    message="the kept work goes on shipping its output")
    agent.heartbeat_once()  # back in touch: the fenced copy is reported lost, never two copies
    lost = Workload.objects.get(pk=replaceable.pk)
    assert lost.events.filter(to_status=S.LOST, reason__contains="self-fencing").count() == 1
    wait_for(lambda: Workload.objects.get(pk=kept.pk).status == S.RUNNING, timeout=2, message="kept runs")
    agent.shutdown()


def test_a_revoked_agent_is_refused_kills_its_copies_and_its_work_is_handled_as_lost(make_agent):
    from nodes.services import node_credential_revoke
    from workloads.control import mark_lost_on_offline_nodes

    node_id = f"revoked-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id)
    agent.register()
    workload = submit_here(node_id, "sleep", "60", restart_policy="on-failure")
    agent.start(str(workload.pk))
    pid = agent.handles[str(workload.pk)].handle.runtime()["pid"]

    assert node_credential_revoke(node_id=node_id)
    with pytest.raises(CredentialRefused, match="refused"):
        agent.heartbeat_once()
    agent.abandon("revoked")  # what runagent does with that error before it exits
    assert not agent.handles
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             timeout=5, message="its copy was killed")
    assert mark_lost_on_offline_nodes() == 1
    moved = Workload.objects.get(pk=workload.pk)
    assert moved.events.filter(to_status=S.LOST, node_id=node_id).exists()
    assert moved.status == S.PENDING and moved.restart_count == 1  # its policy sends it elsewhere


def test_a_workload_past_its_time_limit_is_stopped_and_fails_saying_so_even_across_an_agent_restart(make_agent):
    node_id = f"timed-{uuid.uuid4().hex[:6]}"
    first = make_agent(node_id, stop_grace_seconds=1)
    first.register()
    # It ignores SIGTERM, as some programs do: the grace period ends it anyway.
    limited = submit_here(node_id, "sh", "-c", "trap '' TERM; sleep 60", max_runtime_seconds=2)
    first.start(str(limited.pk))
    assert Workload.objects.get(pk=limited.pk).status == S.RUNNING
    # The agent restarts 1 s in: the new one takes the time left from the control plane's clock.
    supervise_until(first, lambda: time.monotonic() > first.handles[str(limited.pk)].time_limit_at - 1, timeout=5,
                    message="a second of its limit passed")
    second = make_agent(config=first.config)
    second.register()
    second.reconcile()
    assert 0 < second.handles[str(limited.pk)].time_limit_at - time.monotonic() <= 1.5
    supervise_until(second, lambda: not second.handles, timeout=second.config.stop_grace_seconds + 10,
                    message="it was stopped at its limit")
    ended = Workload.objects.get(pk=limited.pk)
    assert ended.status == S.FAILED and ended.reason == "time limit 2 s exceeded", ended.reason


def test_an_agent_deferred_while_others_register_keeps_its_appointment_then_registers(make_agent, settings, caplog):
    """A 503 with Retry-After is an appointment: the client hands it to runagent's loop, which
    waits for it (not a burst of retries) and registers once a slot is free."""
    node_id = f"deferred-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id)
    settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT = 0  # every slot taken
    with pytest.raises(ControlPlaneBusy) as busy:
        agent.register()
    assert busy.value.retry_after >= 1

    stop = threading.Event()
    registering = threading.Thread(target=join_and_register, args=(agent, stop))
    caplog.set_level("INFO", logger="workloads.management.commands.runagent")
    registering.start()
    try:
        wait_for(lambda: "busy registering others; back in" in caplog.text, message="the agent deferred")
        settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT = 2
        registering.join(timeout=30)
        assert not registering.is_alive()
        assert agent.epoch >= 1
    finally:
        stop.set()
        registering.join()
