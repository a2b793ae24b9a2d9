"""The simulated agents of bench/fleet.py: N nodes in one process that speak the real node API.

Each joins with one join token, registers, beats at the interval each answer gives, takes work from
its heartbeat's ``work`` list and from the doorbell (the Redis lists of the fleet's node queues,
popped as Redis announces each push), reports it ``running`` and then ``succeeded``.
"""

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleet_http import KeepAliveClient, TransportError

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
# Celery publishes a start to the default exchange, so kombu pushes it on the list named after the
# queue. Redis announces each push on that key's keyspace channel (notify-keyspace-events "Kl"),
# and the tap pops that list then: O(1) for Redis per message, as an agent's BRPOP on its own
# queue is (a sweep of every queue cost it O(N) per sweep: 10 % of a core at 10,000 nodes).
KEYSPACE_EVENTS = "Kl"
GIB = 1024**3
CAPACITY = {"cpu": 8, "gpu": 0, "memory": 32 * GIB, "storage": 100 * GIB}


@dataclass
class SimNode:
    node_id: str
    credential: str = ""
    epoch: int = 0
    interval: float = 5.0
    beating: bool = True
    registered_at: float = 0.0
    last_beat_sent: float = 0.0  # time.time() of the last beat sent
    answer_seconds: float | None = None  # how long its last beat (or registration) waited: the next beat says
    running: dict[str, str] = field(default_factory=dict)  # workload id -> its run's scheduled_at
    fetching: bool = False
    fetch_again: bool = False


@dataclass
class Stats:
    beats_ok: int = 0
    beats_failed: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds a beat was sent after it was due
    false_offline: set[str] = field(default_factory=set)
    unhealthy_answers: int = 0
    reregistered: int = 0
    registrations_deferred: int = 0  # joins and registrations answered 503 (sent again after Retry-After)
    errors: dict[str, int] = field(default_factory=dict)
    doorbells: int = 0
    started_by_doorbell: int = 0
    started_by_heartbeat: int = 0
    intervals: set[float] = field(default_factory=set)
    offline_after: set[float] = field(default_factory=set)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Fleet:
    """N simulated agents sharing one HTTP client (bounded concurrency) and one doorbell tap."""

    def __init__(self, *, base: str, prefix: str, count: int, join_token: str, concurrency: int) -> None:
        self.base = base
        self.prefix = prefix
        self.nodes = [SimNode(f"{prefix}-{i:05d}") for i in range(count)]
        self.by_queue = {f"node.{node.node_id}": node for node in self.nodes}
        self.join_token = join_token
        self.stats = Stats()
        address = urlsplit(base)
        # --concurrency connections, each one request at a time: at most that many in flight.
        self.client = KeepAliveClient(host=address.hostname, port=address.port, connections=concurrency)
        self.closing = False
        self.tasks: list[asyncio.Task] = []
        self.registered = 0
        self.all_registered = asyncio.Event()

    # -- HTTP -----------------------------------------------------------------------------
    async def call(self, method: str, path: str, node: SimNode | None, body=None, *, what: str):
        """One request (retried once on a dropped keep-alive connection); the response or None."""
        headers = {"Authorization": f"Node {node.credential}"} if node and node.credential else {}
        for attempt in range(2):
            try:
                return await self.client.request(method, path, json_body=body, headers=headers)
            except TransportError as exc:
                if attempt:
                    self.stats.error(f"{what}: {exc}")
        return None

    # -- life of one agent ----------------------------------------------------------------
    async def live(self, node: SimNode) -> None:
        try:
            if not await self.join(node) or not await self.register(node):
                return
            self.registered += 1
            if self.registered == len(self.nodes):
                self.all_registered.set()
            loop = asyncio.get_running_loop()
            due = loop.time() + random.uniform(0, node.interval)  # spread the beats over the interval
            while node.beating and not self.closing:
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not node.beating or self.closing:
                    break
                self.stats.lateness.append(max(0.0, loop.time() - due))
                sent = loop.time()
                await self.beat(node)
                due = sent + node.interval  # the interval the last answer gave
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bench bug must not pass silently
            self.stats.error(f"agent loop: {exc!r}")

    async def admitted(self, method: str, path: str, node: SimNode | None, body, *, what: str):
        """A join or registration, sent again while the control plane answers 503 (it runs only a
        few at once, so that beats are not held behind them): at the appointment its Retry-After
        gives, jittered over the second after it, as runagent's join_and_register keeps it.
        With the seconds the answered attempt took (the appointments kept are not answer time)."""
        while True:
            sent = time.monotonic()
            response = await self.call(method, path, node, body, what=what)
            if response is None or response.status_code != 503:
                return response, round(time.monotonic() - sent, 3)
            self.stats.registrations_deferred += 1
            await asyncio.sleep(float(response.headers.get("retry-after", 1)) + random.random())

    async def join(self, node: SimNode) -> bool:
        response, _took = await self.admitted("POST", "/api/node/join", None,
                                              {"join_token": self.join_token, "node_id": node.node_id}, what="join")
        if response is None or response.status_code != 201:
            self.stats.error(f"join: {response.status_code if response else 'no answer'}")
            return False
        node.credential = response.json()["credential"]
        return True

    async def register(self, node: SimNode) -> bool:
        body = {"node_id": node.node_id, "address": "127.0.0.1", "port": 8080, "capacity": CAPACITY,
                "parent": None, "peers": [], "labels": {"fleet": "simulated"}, "capabilities": {}}
        # The first beat tells how long the registration took to be answered, as an agent's does.
        response, node.answer_seconds = await self.admitted("POST", "/api/node/register", node, body, what="register")
        if response is None or response.status_code != 200:
            self.stats.error(f"register: {response.status_code if response else 'no answer'}")
            return False
        answer = response.json()
        node.epoch, node.registered_at = answer["epoch"], time.time()
        self.obey(node, answer)
        return True

    def obey(self, node: SimNode, answer: dict) -> None:
        node.interval = float(answer["heartbeat_seconds"])
        self.stats.intervals.add(node.interval)
        self.stats.offline_after.add(float(answer["offline_after_seconds"]))

    async def beat(self, node: SimNode) -> None:
        node.last_beat_sent = time.time()
        body = {"epoch": node.epoch, "usage": {"cpu": 0.1 * len(node.running)}, "running": list(node.running),
                "previous_answer_seconds": node.answer_seconds}
        sent = time.monotonic()
        response = await self.call("POST", "/api/node/heartbeat", node, body, what="heartbeat")
        # As an agent times it: from sending to the answer, a wait for a free connection included.
        node.answer_seconds = round(time.monotonic() - sent, 3)
        if response is None:
            self.stats.beats_failed += 1
            return
        if response.status_code == 409:  # another epoch: register again
            self.stats.beats_failed += 1
            self.stats.reregistered += 1
            await self.register(node)
            return
        if response.status_code != 200:
            self.stats.beats_failed += 1
            self.stats.error(f"heartbeat: {response.status_code}")
            return
        self.stats.beats_ok += 1
        answer = response.json()
        self.obey(node, answer)
        if answer["status"] == "offline":
            if node.beating:
                self.stats.false_offline.add(node.node_id)
            self.stats.reregistered += 1
            node.running.clear()  # its work was handed on
            await self.register(node)
            return
        if answer["status"] == "unhealthy":
            self.stats.unhealthy_answers += 1
        for workload_id in answer["kill"]:
            node.running.pop(workload_id, None)
        self.start(node, answer["work"], by="heartbeat")

    # -- work ----------------------------------------------------------------------------
    def start(self, node: SimNode, work: list[dict], *, by: str) -> None:
        for item in work:
            if item["status"] != "scheduled" or item["id"] in node.running:
                continue
            node.running[item["id"]] = item["scheduled_at"]
            if by == "doorbell":
                self.stats.started_by_doorbell += 1
            else:
                self.stats.started_by_heartbeat += 1
            self.spawn(self.run_workload(node, item["id"], item["scheduled_at"]))

    async def run_workload(self, node: SimNode, workload_id: str, scheduled_at: str) -> None:
        report = {"workload_id": workload_id, "epoch": node.epoch, "scheduled_at": scheduled_at}
        if not await self.report(node, {**report, "status": "running", "runtime": {"pid": 1}}):
            node.running.pop(workload_id, None)
            return
        await asyncio.sleep(random.uniform(0.05, 0.2))
        await self.report(node, {**report, "status": "succeeded", "exit_code": 0, "reason": "exited with code 0"})
        node.running.pop(workload_id, None)

    async def report(self, node: SimNode, item: dict) -> bool:
        response = await self.call("POST", "/api/node/reports", node, {"reports": [item]}, what="reports")
        if response is None or response.status_code != 200:
            self.stats.error(f"report {item['status']}: {response.status_code if response else 'no answer'}")
            return False
        return bool(response.json()["results"][0]["accepted"])

    async def fetch_work(self, node: SimNode) -> None:
        """A doorbell rang for ``node``: ask for its work (rings during a fetch coalesce into one more)."""
        if node.fetching:
            node.fetch_again = True
            return
        node.fetching = True
        try:
            while True:
                node.fetch_again = False
                response = await self.call("GET", "/api/node/work", node, what="work")
                if response is not None and response.status_code == 200:
                    self.start(node, response.json()["work"], by="doorbell")
                else:
                    self.stats.error(f"work: {response.status_code if response else 'no answer'}")
                if not node.fetch_again:
                    break
        finally:
            node.fetching = False

    # -- the doorbell tap -----------------------------------------------------------------
    async def doorbells(self, listening: asyncio.Event) -> None:
        """Pop each node queue as Redis announces a push on it, and ring that node: it asks for
        its work. ``listening`` is set once the subscription is in place."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(BROKER_URL)
        events = (await client.config_get("notify-keyspace-events"))["notify-keyspace-events"]
        await client.config_set("notify-keyspace-events", "".join(dict.fromkeys(events + KEYSPACE_EVENTS)))
        channels = client.pubsub()
        prefix = f"__keyspace@{client.connection_pool.connection_kwargs.get('db', 0)}__:"
        await channels.psubscribe(f"{prefix}node.{self.prefix}*")
        listening.set()
        try:
            while not self.closing:
                event = await channels.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if event is None or event["data"] != b"lpush":
                    continue
                queue = event["channel"].decode()[len(prefix):]
                while (raw := await client.rpop(queue)) is not None:
                    self.ring(queue, json.loads(raw))
        finally:
            await channels.aclose()
            await client.config_set("notify-keyspace-events", events)
            await client.aclose()

    def ring(self, queue: str, message: dict) -> None:
        if message.get("headers", {}).get("task") != "workloads.start":
            return
        self.stats.doorbells += 1
        node = self.by_queue.get(queue)
        if node is not None and node.beating and node.credential:
            self.spawn(self.fetch_work(node))

    # -- running it ----------------------------------------------------------------------
    def spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        try:
            self.tasks.remove(task)
        except ValueError:
            pass

    async def boot(self) -> None:
        listening = asyncio.Event()
        self.spawn(self.doorbells(listening))
        await listening.wait()
        for node in self.nodes:
            self.spawn(self.live(node))

    async def close(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()
