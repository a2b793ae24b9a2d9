"""``manage.py runagent --config config.yaml --server URL [--join-token TOKEN]``: the agent of one node.

Without a control plane named (no ``--server``, ``server.address`` or ``CNET_SERVER_URL``) it hands
over to ``cnetsite.standalone``: the node joins the control plane its parent or a peer runs, or runs
its own, as the seed's ``./bin/cnet-agent -config config.yaml`` does.

The agent opens no database: it talks to the control plane's node API (``--server``), with its
node's credential (got once with ``--join-token`` and kept in its data folder). The main thread
registers the node, reconciles, then loops: heartbeat, supervise (the starts these ask for run in
a starter thread, so the loop beats on through a burst of them). A Celery worker in a thread
consumes only this node's queue (``node.<node_id>``): its messages are doorbells that make the
agent ask the control plane what to run or stop.
"""

import logging
import os
import random
import select
import signal
import threading
import time

from celery.worker import WorkController
from celery.worker import state as worker_state
from django.core.management.base import BaseCommand, CommandError

from cnetsite.celery import app as celery_app
from cnetsite.standalone import start_node
from workloads.agent.agent import Agent
from workloads.agent.client import ControlPlaneBusy, ControlPlaneError, CredentialRefused
from workloads.agent.config import ConfigError, Overrides, load_agent_settings
from workloads.agent.runtime import set_current_agent
from workloads.dispatch import node_queue
from workloads.executors.identity import IdentityError

logger = logging.getLogger(__name__)
SUPERVISE_SECONDS = 0.25  # log shipping lag and exit detection are bounded by this
RETRY_BEAT_SECONDS = 1.0  # after a failed heartbeat


class Command(BaseCommand):
    help = "Run the CNET agent for this node."

    def run_from_argv(self, argv):
        # The seed writes "-config"; argparse alone would not accept the single dash.
        super().run_from_argv([f"-{arg}" if arg == "-config" or arg.startswith("-config=") else arg
                               for arg in argv])

    def add_arguments(self, parser):
        parser.add_argument("--config", help="the seed's YAML config (agent, resources, parent, peers)")
        parser.add_argument("--node-id")
        parser.add_argument("--address")
        parser.add_argument("--port", type=int)
        parser.add_argument("--cpu", type=float, help="cores")
        parser.add_argument("--gpu", type=int)
        parser.add_argument("--memory", type=int, help="bytes")
        parser.add_argument("--storage", type=int, help="bytes")
        parser.add_argument("--parent", help="node_id or address:port of the parent")
        parser.add_argument("--peer", action="append", dest="peers", help="node_id or address:port (repeat)")
        parser.add_argument("--heartbeat", type=float, help="seconds between heartbeats")
        parser.add_argument("--shutdown-policy", choices=["stop", "requeue"])
        parser.add_argument("--server", help="the control plane's URL, e.g. http://10.0.0.1:8000")
        parser.add_argument("--join-token", help="exchanged once for this node's credential (kept in the data folder)")
        parser.add_argument("--credential-file", help="where the credential is kept (default: "
                                                      "<data dir>/agent/<node_id>.credential)")

    def handle(self, *args, **options):
        overrides = Overrides(**{key: options.get(key) for key in Overrides.__dataclass_fields__})
        try:
            config = load_agent_settings(options.get("config"), overrides)
        except ConfigError as error:
            raise CommandError(str(error)) from None
        if not config.server_named:  # the seed's node: join what its parent or a peer runs, or run one
            start_node(config_path=options.get("config"), config=config, overrides=overrides)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        wakeup = SignalWakeup()
        # A workload that exits wakes the supervisor at once: a short job is reported done in
        # milliseconds, not after up to SUPERVISE_SECONDS. Interrupted system calls restart.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.siginterrupt(signal.SIGCHLD, False)

        try:
            agent = Agent(config, wake=wakeup.wake)
        except IdentityError as error:  # how workloads are to be separated is misconfigured
            raise CommandError(str(error)) from None
        set_current_agent(agent)
        try:
            if not join_and_register(agent, stop):
                return
            agent.reconcile()
        except CredentialRefused as error:
            raise CommandError(str(error)) from None
        agent.start_beside_loop()
        worker, thread = start_worker(config.node_id)
        threading.Thread(target=fence_loop, args=(agent, stop), name="self-fence", daemon=True).start()
        self.stdout.write(f"agent {config.node_id} ready: queue {node_queue(config.node_id)}, "
                          f"limits via {agent.context.limiter.kind}")
        next_beat = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + agent.heartbeat_seconds  # what the control plane asks
                    agent.heartbeat_once()
            except CredentialRefused as error:
                agent.abandon(str(error))
                worker_state.should_terminate = 0
                thread.join(timeout=10)
                raise CommandError(str(error)) from None
            except ControlPlaneBusy as busy:  # registering again was deferred: keep the appointment
                next_beat = time.monotonic() + appointment(agent, busy)
            except ControlPlaneError as error:
                logger.warning("agent %s: heartbeat failed: %s", config.node_id, error)
                # Out of touch: try again soon, so a control plane that comes back hears from us
                # within a second, not a whole interval later (another outage may follow).
                next_beat = min(next_beat, time.monotonic() + RETRY_BEAT_SECONDS)
            except Exception:
                logger.exception("agent %s: heartbeat failed; continuing", config.node_id)
            try:
                agent.supervise_once()
            except Exception:
                logger.exception("agent %s: loop step failed; continuing", config.node_id)
            wakeup.wait(SUPERVISE_SECONDS)
        agent.begin_shutdown()  # starts that still arrive are ignored; placement skips us
        worker_state.should_terminate = 0  # the worker thread finishes its task and exits
        thread.join(timeout=10)
        agent.shutdown()


def join_and_register(agent: Agent, stop: threading.Event) -> bool:
    """Join (once) and register, waiting for a control plane that is not up yet with a bounded
    backoff, or until the appointment a busy one gives. A refused credential or join token is
    fatal: it will not get better by waiting."""
    delay = 0.25
    while not stop.is_set():
        try:
            agent.client.ensure_credential()
            agent.register()
            return True
        except CredentialRefused:
            raise
        except ControlPlaneBusy as busy:
            stop.wait(appointment(agent, busy))
            continue
        except ControlPlaneError as error:
            logger.warning("agent %s: control plane %s not reachable yet: %s", agent.config.node_id,
                           agent.config.server, error)
        stop.wait(delay)
        delay = min(delay * 2, 5.0)
    return False


def appointment(agent: Agent, busy: ControlPlaneBusy) -> float:
    """Seconds until the appointment a busy control plane gave, jittered over the second after
    it, so a fleet told the same second does not come back at once."""
    logger.info("agent %s: control plane busy registering others; back in %.0f s", agent.config.node_id,
                busy.retry_after)
    return busy.retry_after + random.random()


def fence_loop(agent: Agent, stop: threading.Event) -> None:
    """Self-fencing beside the main loop, which may hang on a dead connection."""
    while not stop.wait(SUPERVISE_SECONDS):
        try:
            agent.fence_once()
        except Exception:
            logger.exception("agent %s: self-fencing check failed; continuing", agent.config.node_id)


class SignalWakeup:
    """Sleep until a signal (SIGCHLD, SIGTERM, ...) arrives or the timeout passes.

    The kernel may hand a signal to any thread, and one taken by a Celery thread does not
    interrupt the main thread's ``Event.wait``; the wakeup fd, written by the C-level handler
    whichever thread runs it, does.
    """

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)

    def wake(self) -> None:
        """End the current (or next) ``wait`` early, from any thread."""
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wakeup is already pending

    def wait(self, timeout: float) -> None:
        select.select([self.read_fd], [], [], timeout)
        try:  # drain before the next pass, so a signal during that pass wakes the next wait
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass


def start_worker(node_id: str) -> tuple[WorkController, threading.Thread]:
    """A Celery worker for this node's queue only, in a thread of this process, so tasks can
    hand started work to the supervisor here. Prefetch 1 and late acks come from settings."""
    worker = WorkController(
        app=celery_app,
        hostname=f"agent@{node_id}",
        queues=[node_queue(node_id)],
        pool="threads",
        concurrency=2,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="INFO",
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    return worker, thread
