"""Container start latency: submit → running through the API, vs ``docker run`` of the same image.

    .venv/bin/python bench/container_start.py [--runs 20] [--port 18510]

Starts, for the length of the run, a control plane (gunicorn, one worker) and one agent
(``manage.py runagent``) for a fresh node, on ``DATABASE_URL`` (default
postgres://postgres@127.0.0.1:5432/cnet_bench_containers, created if missing) and
``CELERY_BROKER_URL`` (default redis://127.0.0.1:6379/14). Needs a Docker engine; builds the
local busybox image with ``tests/containers/build_image.sh`` if missing.

Each round, interleaved so both see the same machine:
- API: POST /api/workloads (busybox ``sleep 300``), then GET it every 10 ms until it is
  ``running``; the client-side time, and the server-side one (``started_at - created_at``,
  no polling bias). Then DELETE, and wait until the agent has removed the container.
- Baseline: ``docker run -d`` of the same image and command with the flags the executor
  sets (init, memory and CPU limits, no-new-privileges), timed until the CLI returns (the
  container is running then), then ``docker rm -f``.
A figure, not a test: nothing here asserts a timing.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import ensure_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = ROOT / ".venv" / "bin" / "python"
IMAGE = "cnet-test/busybox:latest"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/cnet_bench_containers"
DEFAULT_BROKER = "redis://127.0.0.1:6379/14"


def setup(env: dict) -> str:
    """Migrate, and return an API token for a staff user."""
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", interactive=False, verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True,
                                                                                 "is_superuser": True})
    return Token.objects.get_or_create(user=user)[0].key


def figures(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   min {ms[0]:7.1f} ms   max {ms[-1]:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--port", type=int, default=18510)
    args = parser.parse_args()

    import docker
    import requests

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        print(f"container_start: no Docker engine reachable here ({error.__class__.__name__}), so nothing to measure; "
              "install docker.io and start dockerd to run it")
        return
    subprocess.run([str(ROOT / "tests" / "containers" / "build_image.sh"), IMAGE], check=True)

    database = os.environ.get("DATABASE_URL", DEFAULT_DB)
    if database.startswith("postgres"):
        ensure_database(database)
    node_id = f"bench-ct-{uuid.uuid4().hex[:6]}"
    env = {
        "DATABASE_URL": database,
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER),
        "CNET_DATA_DIR": os.environ.get("CNET_DATA_DIR") or tempfile.mkdtemp(prefix="cnet-bench-ct-"),
        "CNET_LOCAL_NODE_ID": node_id,
        "DJANGO_SETTINGS_MODULE": "cnetsite.settings",
        "SECRET_KEY": "bench-only-not-secret",  # a server database is not embedded
        "LOG_LEVEL": "WARNING",
        "CNET_STOP_GRACE_SECONDS": "2",
    }
    token = setup(env)
    from django.db import close_old_connections

    from nodes.models import Node
    from nodes.services import join_token_create
    from tests.helpers import wait_for
    from workloads.models import Workload

    child_env = {**os.environ, **env}
    logs = Path(env["CNET_DATA_DIR"])
    base = f"http://127.0.0.1:{args.port}"
    procs = [
        subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "cnetsite.wsgi", "-b", f"127.0.0.1:{args.port}",
                          "-w", "1", "--threads", "4"], cwd=ROOT, env=child_env,
                         stdout=open(logs / "gunicorn.log", "wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([str(PY), "manage.py", "runagent", "--node-id", node_id, "--port", str(args.port + 1),
                          "--server", base, "--join-token", join_token_create(ttl_seconds=3600, uses=1)],
                         cwd=ROOT, env=child_env, stdout=open(logs / "agent.log", "wb"), stderr=subprocess.STDOUT),
    ]
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    try:
        def ready():
            close_old_connections()
            node = Node.objects.filter(node_id=node_id, status="ready").first()
            return node and (node.capabilities.get("container") or {}).get("available")
        wait_for(ready, 60, message=f"agent {node_id} to register with a container engine")

        def api_health():
            try:
                return session.get(f"{base}/api/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(api_health, 60, message="the API")

        body = {"name": "bench", "type": "container", "node": node_id,
                "requirements": {"cpu": 0.1, "memory": 64 * 1024 * 1024},
                "config": {"image": IMAGE, "command": ["sleep"], "args": ["300"], "pull_policy": "never"}}

        def through_api() -> tuple[float, float]:
            t0 = time.perf_counter()
            response = session.post(f"{base}/api/workloads", json=body, timeout=30)
            response.raise_for_status()
            workload_id = response.json()["id"]
            while True:
                state = session.get(f"{base}/api/workloads/{workload_id}", timeout=30).json()
                if state["status"] == "running":
                    break
                if state["status"] not in {"pending", "scheduled"}:
                    raise SystemExit(f"workload {workload_id} ended {state['status']}: {state['reason']}")
                time.sleep(0.01)
            client_side = time.perf_counter() - t0
            close_old_connections()
            row = Workload.objects.values("created_at", "started_at").get(pk=workload_id)
            server_side = (row["started_at"] - row["created_at"]).total_seconds()
            session.delete(f"{base}/api/workloads/{workload_id}", timeout=30).raise_for_status()
            wait_for(lambda: not client.api.containers(all=True, filters={"label": f"cnet.workload_id={workload_id}"}),
                     30, message=f"container of {workload_id} to be removed")
            return client_side, server_side

        def docker_run() -> float:
            name = f"bench-direct-{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            # The same flags the executor sets: init, limits, no-new-privileges.
            subprocess.run(["docker", "run", "-d", "--init", "--name", name, "--memory", "64m", "--memory-swap", "64m",
                            "--cpus", "0.1", "--security-opt", "no-new-privileges", IMAGE, "sleep", "300"],
                           check=True, stdout=subprocess.DEVNULL)
            elapsed = time.perf_counter() - t0
            subprocess.run(["docker", "rm", "-f", name], check=True, stdout=subprocess.DEVNULL)
            return elapsed

        for _ in range(args.warmup):
            through_api()
            docker_run()
        api_client, api_server, direct = [], [], []
        for _ in range(args.runs):
            client_side, server_side = through_api()
            api_client.append(client_side)
            api_server.append(server_side)
            direct.append(docker_run())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    version = client.version()
    print(f"container start, {args.runs} runs each (after {args.warmup} warm-up), interleaved; "
          f"engine {version['Version']}, image {IMAGE}, {os.cpu_count()} CPUs, db {database.split('://')[0]}")
    print(f"  API submit -> running (client, 10 ms polls): {figures(api_client)}")
    print(f"  API created_at -> started_at (server side):  {figures(api_server)}")
    print(f"  docker run -d (baseline, same run):          {figures(direct)}")
    overhead = statistics.median(api_client) - statistics.median(direct)
    print(f"  median overhead of the API path over docker run: {overhead * 1000:.1f} ms "
          f"({statistics.median(api_client) / statistics.median(direct):.2f}x)")


if __name__ == "__main__":
    main()
