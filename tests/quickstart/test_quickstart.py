"""The seed's quick start (000_f51ff985df3de545.txt, 快速开始), as a new user types it, in terminals:

1. ``make build``
2. ``./bin/cnet-agent -config config.yaml``, then the seed's curls (with the auth header)
3. ``./bin/cnet-agent -config configs/config_parent.yaml`` and ``… configs/config_child.yaml``
4. ``./bin/cnet-agent -config configs/config_peer1.yaml`` and ``… configs/config_peer2.yaml``

Each command runs as written, in a folder holding ``bin`` (a link to the repo's) and the shipped
configs, copied with one change: the seed's ports 8080 and 8081 become free ones, so a system
already running on this machine does not collide with the test. The data root
(``CNET_DATA_DIR``) is fresh; the embedded defaults apply (no ``DATABASE_URL`` or
``CELERY_BROKER_URL``, as on a new machine), so this runs the same in both CI passes. Ctrl-C is
SIGINT to the terminal's process group; a node must then exit 0 having stopped everything.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from tests.helpers import free_port, kill_group, wait_for

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 180  # a first start migrates a fresh database, on a machine shared with other tests
# What a new user's shell has not: the test run's own settings and databases.
NOT_IN_A_NEW_SHELL = ("DATABASE_URL", "CELERY_BROKER_URL", "CNET_SERVER_URL", "CNET_LOCAL_NODE_ID",
                      "DJANGO_SETTINGS_MODULE", "SECRET_KEY", "CNET_THROTTLE_SUBMISSIONS", "CNET_THROTTLE_LOGIN",
                      "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
PROCESS = {  # the seed's bodies, word for word
    "name": "test-process", "type": "process", "requirements": {"cpu": 1.0, "memory": 536870912},
    "config": {"command": "sleep", "args": ["60"], "env": {"TEST": "value"}},
}
CONTAINER = {
    "name": "test-container", "type": "container", "requirements": {"cpu": 1.0, "memory": 536870912},
    "config": {"image": "nginx:alpine", "command": ["nginx"], "args": ["-g", "daemon off;"]},
}
MLMODEL = {
    "name": "test-ml-model", "type": "mlmodel", "requirements": {"cpu": 2.0, "memory": 2147483648},
    "config": {"model_path": "models/model.joblib", "model_type": "sklearn", "framework": "scikit-learn",
               "port": 9000},
}


class Terminal:
    """One terminal running one command: its output collected line by line, Ctrl-C on demand."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict):
        self.argv = argv
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = START_SECONDS) -> re.Match:
        def seen():
            if self.proc.poll() is not None and not any(re.search(pattern, line) for line in self.lines):
                raise AssertionError(f"{' '.join(self.argv)} exited {self.proc.returncode}:\n{self.output[-4000:]}")
            return next((found for line in list(self.lines) if (found := re.search(pattern, line))), None)
        return wait_for(seen, timeout=timeout, every=0.2, message=f"{pattern!r} in the output of {self.argv}")

    def ctrl_c(self, timeout: float = 60) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def machine(tmp_path):
    """A fresh data root, a folder to type the commands in, and the terminals opened there."""
    data_root = tmp_path / "var"
    workdir = tmp_path / "checkout"
    (workdir / "configs").mkdir(parents=True)
    (workdir / "bin").symlink_to(REPO / "bin")
    ports = {"8080": free_port(), "8081": free_port()}
    for config in [REPO / "config.yaml", *sorted((REPO / "configs").glob("config_*.yaml"))]:
        text = config.read_text()
        for seed_port, port in ports.items():
            text = re.sub(rf"\b{seed_port}\b", str(port), text)
        (workdir / config.relative_to(REPO)).write_text(text)
    env = {key: value for key, value in os.environ.items() if key not in NOT_IN_A_NEW_SHELL}
    env |= {"CNET_DATA_DIR": str(data_root), "PYTHONUNBUFFERED": "1"}
    opened: list[Terminal] = []

    def terminal(command: str) -> Terminal:
        opened.append(Terminal(command.split(), cwd=workdir, env=env))
        return opened[-1]

    terminal.env, terminal.data_root, terminal.ports = env, data_root, ports
    try:
        yield terminal
    finally:
        for term in opened:
            kill_group(term.proc)
        for proc in processes_under(data_root):  # a node's own children live in sessions of their own
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()


def processes_under(folder: Path) -> list[psutil.Process]:
    """Live processes whose data folder is ``folder`` or one inside it."""
    found = []
    for proc in psutil.process_iter():
        try:
            data_dir = proc.environ().get("CNET_DATA_DIR")
            if data_dir and Path(data_dir).is_relative_to(folder) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def curl(*args: str, token: str) -> tuple[int, object]:
    """The seed's curl line plus the auth header; returns the status code and the parsed body."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args, "-H", f"Authorization: Token {token}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    body, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(body) if body else None
    except ValueError:
        return int(code), body


def post(url: str, body: dict, token: str) -> tuple[int, object]:
    return curl("-X", "POST", url, "-H", "Content-Type: application/json", "-d", json.dumps(body), token=token)


def started(term: Terminal, node_id: str) -> tuple[str, str]:
    """The first lines of a node running its own control plane, as ``make run`` prints them: its URL and token."""
    url = term.wait_line(r"CNET Agent is starting on (http://\S+)")[1]
    term.wait_line(r"Web UI:   \S+/admin/   user 'admin', password '")
    token = term.wait_line(r"API token: (\S+)")[1]
    term.wait_line(rf'Try:      curl -H "Authorization: Token {token}" {url}/api/nodes')
    term.wait_line(rf"agent {node_id} ready")
    return url, token


def ended(term: Terminal, machine, node_id: str) -> None:
    """Ctrl-C: the node exits 0, and nothing of it (web, control worker, beat, agent) runs on."""
    assert term.ctrl_c() == 0, term.output[-4000:]
    assert not processes_under(machine.data_root / "nodes" / node_id), term.output[-4000:]


def nodes(url: str, token: str) -> dict[str, dict]:
    code, listed = curl(f"{url}/api/nodes", token=token)
    assert code == 200, listed
    return {node["node_id"]: node for node in (listed["results"] if isinstance(listed, dict) else listed)}


def workload(url: str, token: str, workload_id: str) -> dict:
    code, found = curl(f"{url}/api/workloads/{workload_id}", token=token)
    assert code == 200, found
    return found


@pytest.mark.skipif(shutil.which("curl") is None, reason="the seed's API examples need curl")
def test_the_seeds_quick_start_as_written(machine):
    port, second_port = machine.ports["8080"], machine.ports["8081"]

    # 1. 编译: make build (twice: the second run finds everything done).
    for _ in range(2):
        built = subprocess.run(["make", "build"], cwd=REPO, env=machine.env, capture_output=True, text=True,
                               timeout=600)
        assert built.returncode == 0, built.stdout + built.stderr
    assert "No migrations to apply" in built.stdout and "0 static files copied" in built.stdout, built.stdout

    # 2. 单节点运行: one node, the seed's curls against it, Ctrl-C, and again with its data kept.
    single = machine("./bin/cnet-agent -config config.yaml")
    url, token = started(single, "agent-1")
    assert url == f"http://127.0.0.1:{port}"
    api = f"http://localhost:{port}/api"
    code, process = post(f"{api}/workloads", PROCESS, token)
    assert code == 201, process
    for body in (CONTAINER, MLMODEL):
        code, answer = post(f"{api}/workloads", body, token)
        assert code == 201, answer
    code, listed = curl(f"{api}/workloads", token=token)
    assert code == 200 and {"test-process", "test-container", "test-ml-model"} <= {w["name"] for w in listed}
    wait_for(lambda: workload(url, token, process["id"])["status"] == "running", timeout=60, message="running")
    code, logs = curl(f"{api}/workloads/{process['id']}/logs?lines=100", token=token)
    assert code == 200, logs
    code, answer = curl("-X", "POST", f"{api}/workloads/{process['id']}/stop", token=token)
    assert code in (200, 202), answer
    wait_for(lambda: workload(url, token, process["id"])["status"] == "stopped", timeout=60, message="stopped")
    for path in ("resources", "resources/stats", "nodes", "health"):
        code, answer = curl(f"{api}/{path}", token=token)
        assert code == 200, (path, answer)
    assert list(nodes(url, token)) == ["agent-1"]
    ended(single, machine, "agent-1")
    again = machine("./bin/cnet-agent -config config.yaml")
    assert started(again, "agent-1") == (url, token)
    assert workload(url, token, process["id"])["status"] == "stopped"  # its data is kept
    code, answer = curl("-X", "DELETE", f"{api}/workloads/{process['id']}", token=token)
    assert code in (200, 202, 204), answer
    ended(again, machine, "agent-1")

    # 3. 层次化集群: the parent in terminal 1, the child in terminal 2; work too big for the parent runs on the child.
    parent = machine("./bin/cnet-agent -config configs/config_parent.yaml")
    url, token = started(parent, "parent")
    child = machine("./bin/cnet-agent -config configs/config_child.yaml")
    child.wait_line(rf"joining the control plane at http://127.0.0.1:{port} \(its parent 127.0.0.1:{port}\)")
    child.wait_line(r"agent child ready")
    listed = wait_for(lambda: (found := nodes(url, token)).get("child", {}).get("status") == "ready" and found,
                      timeout=30, message="the child listed")
    assert listed["child"]["parent"] == "parent" and listed["parent"]["children"] == ["child"]
    too_big = {"name": "on-child", "type": "process", "requirements": {"cpu": 3.0, "memory": 536870912},
               "config": {"command": "echo", "args": ["hello from the child"]}}
    code, submitted = post(f"http://localhost:{port}/api/workloads", too_big, token)
    assert code == 201, submitted
    done = wait_for(lambda: (w := workload(url, token, submitted["id"]))["status"] == "succeeded" and w,
                    timeout=60, message="the work ran")
    assert done["node"] == "child"
    code, logs = curl(f"{url}/api/workloads/{submitted['id']}/logs?lines=100", token=token)
    assert "hello from the child" in json.dumps(logs)
    ended(child, machine, "child")
    ended(parent, machine, "parent")

    # 4. P2P集群: peer1 in terminal 1, peer2 in terminal 2; what peer1 cannot hold spills to peer2.
    peer1 = machine("./bin/cnet-agent -config configs/config_peer1.yaml")
    url, token = started(peer1, "peer1")
    peer2 = machine("./bin/cnet-agent -config configs/config_peer2.yaml")
    peer2.wait_line(rf"joining the control plane at http://127.0.0.1:{port} \(its peer 127.0.0.1:{port}\)")
    peer2.wait_line(r"agent peer2 ready")
    listed = wait_for(lambda: (found := nodes(url, token)).get("peer2", {}).get("peers") == ["peer1"] and found,
                      timeout=30, message="the peers linked")
    assert listed["peer1"]["peers"] == ["peer2"] and listed["peer2"]["port"] == second_port
    placed = []
    for name in ("big-1", "big-2"):
        code, submitted = post(f"http://localhost:{port}/api/workloads", {**PROCESS, "name": name,
                               "requirements": {"cpu": 6.0, "memory": 536870912}}, token)
        assert code == 201, submitted
        placed.append(wait_for(lambda w=submitted: (f := workload(url, token, w["id"]))["status"] == "running" and f,
                               timeout=60, message=f"{name} running"))
    assert [w["node"] for w in placed] == ["peer1", "peer2"]
    ended(peer2, machine, "peer2")
    ended(peer1, machine, "peer1")
