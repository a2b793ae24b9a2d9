#!/usr/bin/env python3
"""Predict latency and throughput, three ways, in one run (issue 5):

1. through the API: ``POST /api/ml/models/{id}/predict`` on the control plane (gunicorn, as
   ``make run`` serves it) → the model server (gunicorn, started by a real agent) → back;
2. in-process ``model.predict`` (the floor: no network, no framework);
3. the seed's way: spawn ``simple_linear_regression.py predict`` per request.

Everything is fresh and local: a data folder in /tmp, SQLite (or ``DATABASE_URL``), ports
``BENCH_PORT`` (API, default 18490) and ``BENCH_PORT + 1`` (model server).

    .venv/bin/python bench/predict.py [--requests 2000] [--spawns 10]
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(tempfile.mkdtemp(prefix="cnet-bench-predict-"))
os.environ["CNET_DATA_DIR"] = str(DATA)
os.environ.setdefault("CNET_LOCAL_NODE_ID", "bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cnetsite.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def percentiles(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "mean": statistics.fmean(ordered)}


def report(name: str, samples_ms: list[float], wall_s: float) -> dict:
    stats = percentiles(samples_ms)
    rps = len(samples_ms) / wall_s
    print(f"{name:<34} n={len(samples_ms):>5}  p50 {stats['p50']:8.3f} ms  p99 {stats['p99']:8.3f} ms  "
          f"{rps:10.1f} req/s")
    return {**stats, "rps": rps}


def wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--spawns", type=int, default=10)
    args = parser.parse_args()
    port = int(os.environ.get("BENCH_PORT", "18490"))

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    try:
        bench(args, port)
    finally:
        shutil.rmtree(DATA, ignore_errors=True)


def bench(args: argparse.Namespace, port: int) -> None:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from mlmodels.models import MLModel
    from mlmodels.services import model_serve, model_version_create
    from tests.helpers import ML_NODE_CAPABILITIES, GiB, in_process_agents

    user = get_user_model().objects.create_superuser("bench", password="bench")
    token = Token.objects.create(user=user).key

    # A LinearRegression trained by the seed's script, stored as version 1.
    work = DATA / "work"
    work.mkdir()
    script = REPO / "examples" / "ml_models" / "simple_linear_regression.py"
    subprocess.run([sys.executable, str(script), "train", "models/lr.joblib", "1000"], cwd=work, check=True,
                   capture_output=True)
    artifact = work / "models" / "lr.joblib"
    model = MLModel.objects.create(owner=user, name="bench-lr", model_type="linear_regression",
                                   model_path="models/lr.joblib")
    model_version_create(model=model, data=artifact.read_bytes(), filename="lr.joblib", source="upload")
    model.refresh_from_db()

    # A real agent (in this process) starts the model server where the scheduler placed it.
    with in_process_agents() as make_agent:
        agent = make_agent("bench", cpu=2, memory=4 * GiB, port=port, work_dir=work, data_dir=DATA,
                           capabilities=ML_NODE_CAPABILITIES)
        agent.register()
        run = model_serve(model=model, port=port + 1, node="bench")
        agent.start(str(run.workload_id))

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        web = subprocess.Popen([sys.executable, "-m", "gunicorn", "cnetsite.wsgi:application", "--bind",
                                f"127.0.0.1:{port}", "--workers", "2", "--threads", "4", "--worker-class", "gthread",
                                "--keep-alive", "75", "--log-level", "warning"], cwd=REPO, env=env,
                               start_new_session=True)
        try:
            wait_port(port + 1)
            wait_port(port)
            body = json.dumps({"input_data": 5.5, "mode": "sync"})
            headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
            conn = http.client.HTTPConnection("127.0.0.1", port)

            def api_call() -> dict:
                conn.request("POST", f"/api/ml/models/{model.pk}/predict", body=body, headers=headers)
                response = conn.getresponse()
                data = json.loads(response.read())
                if response.status != 200:
                    raise SystemExit(f"API answered {response.status}: {data}")
                return data

            deadline = time.monotonic() + 30
            while True:  # the model server loads sklearn before it answers
                try:
                    first = api_call()
                    break
                except SystemExit:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            for _ in range(100):  # warm both gunicorn workers and their connections
                api_call()

            print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (others' work skews every figure)")
            print(f"model: LinearRegression, prediction(5.5) = {first['prediction']:.4f} via {first['served_by']}\n")
            results = {}
            samples = []
            started = time.perf_counter()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                api_call()
                samples.append((time.perf_counter() - t0) * 1000)
            results["api"] = report("API -> model server (sync)", samples, time.perf_counter() - started)

            server = http.client.HTTPConnection("127.0.0.1", port + 1)
            direct_body = json.dumps({"input_data": 5.5})
            samples = []
            started = time.perf_counter()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                server.request("POST", "/predict", body=direct_body, headers={"Content-Type": "application/json"})
                server.getresponse().read()
                samples.append((time.perf_counter() - t0) * 1000)
            results["server"] = report("model server direct", samples, time.perf_counter() - started)

            import joblib
            import numpy as np

            loaded = joblib.load(artifact)
            samples = []
            started = time.perf_counter()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                loaded.predict(np.asarray([[5.5]]))
                samples.append((time.perf_counter() - t0) * 1000)
            results["inprocess"] = report("in-process model.predict", samples, time.perf_counter() - started)

            samples = []
            started = time.perf_counter()
            for _ in range(args.spawns):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, str(script), "predict", "models/lr.joblib", "5.5"], cwd=work,
                               check=True, capture_output=True)
                samples.append((time.perf_counter() - t0) * 1000)
            results["spawn"] = report("spawn script per request (seed)", samples, time.perf_counter() - started)

            speedup = results["spawn"]["p50"] / results["api"]["p50"]
            verdict = "OK" if results["api"]["p50"] <= 5 else "MISSED"
            print(f"\nAPI p50 {results['api']['p50']:.2f} ms (aim <= 5 ms): {verdict}")
            print(f"API vs spawn-per-request, p50: {speedup:.0f}x faster (aim >= 100x): "
                  f"{'OK' if speedup >= 100 else 'MISSED'}")
        finally:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=10)


if __name__ == "__main__":
    main()
