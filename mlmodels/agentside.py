"""What an agent does for ML work with no database: over the node API (``mlmodels.nodeapi``), through
its ``ControlPlane`` client, and never loading an artifact in its own process.

- ``registry_artifact``: a registry version's artifact in the agent's cache, fetched once and
  checked against its sha256 (model servers and predictions load it from there);
- ``prediction_run``: a prediction task sent to this node (the ``mlmodels.run_prediction``
  doorbell): claim it, fetch its version, predict in a one-shot ``python -m
  mlmodels.predict_once`` started as a workload of the task's owner is (under a root agent a uid
  of its own and a workspace holding a copy of the artifact; its cgroups, the workload
  environment, its own session, a timeout), post the answer.

A process start and the framework's import cost about a second (measured here), which an
asynchronous task can afford; a model served for low latency runs as a model server instead.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from django.conf import settings

from workloads.agent.client import ControlPlane, ControlPlaneError, Refused
from workloads.agent.runtime import current_agent
from workloads.executors.base import AgentContext, ExecutorError, WorkloadContext, workload_env
from workloads.executors.limits import Limits
from workloads.executors.process import log_path, spawn

from .inference import sha256_file

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a prediction's JSON; anything longer is refused, not read
MAX_ERROR_CHARACTERS = 4000
# One thread per numeric library: the process predicts one batch and exits.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ml_python() -> str:
    """The interpreter "python"/"python3" means in an ML deployment, and the one model servers and
    predictions run: the agent's own, which has the ML requirements installed (the system python3
    usually has no scikit-learn). Under a root agent, workload uids must be able to run it."""
    return getattr(settings, "CNET_ML_PYTHON", "") or os.environ.get("CNET_ML_PYTHON") or sys.executable


def this_agent():
    """The agent this process runs (``runagent`` sets it; tests set their in-process one)."""
    return current_agent()


def prediction_limits() -> tuple[Limits, float]:
    """What one prediction process may use: memory, cpu, processes (a workload's default) and
    seconds (settings, with defaults)."""
    limits = Limits(memory_bytes=int(getattr(settings, "CNET_ML_PREDICT_MEMORY_BYTES", 1024**3)),
                    cpu_millicores=int(getattr(settings, "CNET_ML_PREDICT_CPU_MILLICORES", 1000)),
                    pids=settings.CNET_WORKLOAD_PIDS_LIMIT)
    return limits, float(getattr(settings, "CNET_ML_PREDICT_TIMEOUT_SECONDS", 60))


class ArtifactUnavailable(Exception):
    """The version's artifact could not be fetched (or did not match its checksum)."""


def registry_artifact(client: ControlPlane, version: dict, *, cache_dir: Path) -> Path:
    """``version``'s artifact (its facts: ``id``, ``checksum``, ``filename``) as a file in the
    agent's cache, ``<cache_dir>/<sha256><suffix>``: fetched over the node API unless a file
    there already has that checksum, and written whole (renamed into place) once it matches."""
    suffix = Path(version["filename"]).suffix or ".joblib"
    path = cache_dir / f"{version['checksum']}{suffix}"
    if path.is_file() and sha256_file(str(path))[0] == version["checksum"]:
        return path
    try:
        data = client.model_version_artifact(version["id"])
    except (ControlPlaneError, Refused) as error:
        raise ArtifactUnavailable(f"could not fetch its artifact: {error}") from error
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
    if sha256_file(tmp.name)[0] != version["checksum"]:
        os.unlink(tmp.name)
        raise ArtifactUnavailable("its artifact does not match its checksum")
    os.replace(tmp.name, path)
    return path


def prediction_run(agent, task_id: str) -> bool:
    """Run a prediction task sent to this node; whether its answer was recorded. A task another
    attempt has, or one sent elsewhere, is refused by the control plane and runs nothing here."""
    client = agent.client
    try:
        claim = client.prediction_claim(task_id)
    except Refused as error:
        logger.info("prediction %s: not run here: %s", task_id, error)
        return False
    except ControlPlaneError as error:
        logger.warning("prediction %s: control plane out of reach (its sweep sends it again): %s", task_id, error)
        return False
    version = claim["version"]
    started = time.perf_counter()
    try:
        artifact = registry_artifact(client, version, cache_dir=agent.config.data_dir / "models")
        outcome = predict_in_subprocess(artifact=artifact, input_data=claim["input_data"],
                                        name=f"prediction-{task_id}", context=agent.context,
                                        owner=claim.get("owner"))
    except ArtifactUnavailable as error:
        outcome = {"error": str(error), "stage": "load"}
    if outcome.pop("stage", None) == "load":
        outcome = {"error": f"could not load version {version['number']}: {outcome['error']}", "error_status": 422}
    outcome["elapsed_ms"] = (time.perf_counter() - started) * 1000
    try:
        return client.prediction_result(task_id, {"attempt": claim["attempt"], **outcome})["recorded"]
    except (ControlPlaneError, Refused) as error:
        logger.warning("prediction %s: answer not delivered (the sweep retries the task): %s", task_id, error)
        return False


def predict_in_subprocess(*, artifact: Path, input_data, name: str, context: AgentContext,
                          owner: str | None = None) -> dict:
    """One prediction by ``python -m mlmodels.predict_once`` under ``prediction_limits()``, started as
    a workload of ``owner``'s is (``spawn``: its own uid and workspace under a root agent, its own
    cgroups, the workload environment): its answer (``prediction``, or ``error`` with
    ``error_status``, or ``error`` with ``stage`` "load"). It is confined before it is given its
    input, and it loads nothing before that."""
    limits, timeout = prediction_limits()
    scope = context.for_workload(name, owner=owner)
    try:
        env = workload_env(SimpleNamespace(pk=name, config={}, gpu_count=0), scope, **SINGLE_THREADED)
        argv = [ml_python(), "-m", "mlmodels.predict_once", str(readable_artifact(scope, artifact))]
        handle = spawn(workload_id=name, argv=argv, env=env, cwd=Path(settings.BASE_DIR), context=scope,
                       limits=limits, stdin=subprocess.PIPE)
    except ExecutorError as error:
        scope.release()
        return {"error": f"the prediction process could not start: {error}", "error_status": 503}
    try:
        handle.runtime()  # waits until it is in its cgroups (v2: moved there after the spawn)
        try:
            handle.popen.communicate(json.dumps({"input_data": input_data}).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"the prediction did not finish in {timeout:g} s", "error_status": 504}
        finally:
            handle.kill()  # whatever the model started dies with it
            handle.popen.wait()
        ended = handle.poll()
        if ended.oom:
            return {"error": f"the model went over its memory limit of {limits.memory_bytes} bytes",
                    "error_status": 422}
        with open(log_path(scope.log_dir, name, "stdout"), "rb") as out, \
                open(log_path(scope.log_dir, name, "stderr"), "rb") as err:
            return _answer(out, err, code=handle.popen.returncode)
    finally:
        handle.cleanup()  # its cgroups, output files, workspace and uid


def readable_artifact(scope: WorkloadContext, artifact: Path) -> Path:
    """``artifact`` (in the agent's private cache) where the workload's uid can read it: a copy in
    its own workspace, 0400 and its own, when it has a uid of its own; else the cached file."""
    identity = scope.identity
    if identity is None:
        return artifact
    copy = scope.work_dir / f".cnet-model-{artifact.name}"
    try:
        shutil.copyfile(artifact, copy)
        os.chown(copy, identity.uid, identity.gid)
        os.chmod(copy, 0o400)
    except OSError as error:
        raise ExecutorError(f"its artifact could not be put in its workspace: {error}") from error
    return copy


def _answer(out, err, *, code: int) -> dict:
    out.seek(0)
    raw = out.read(MAX_ANSWER_BYTES + 1)
    if len(raw) > MAX_ANSWER_BYTES:
        return {"error": f"the prediction is over {MAX_ANSWER_BYTES} bytes", "error_status": 422}
    try:
        reply = json.loads(raw)
    except ValueError:
        err.seek(0, os.SEEK_END)
        err.seek(max(0, err.tell() - 2000))
        tail = err.read().decode("utf-8", errors="replace").strip()
        return {"error": f"the prediction process ended (exit {code}) without an answer: {tail}", "error_status": 422}
    # The model's code ran in that process: take only the fields an answer has, in their ranges.
    if not isinstance(reply, dict) or not ({"prediction", "error"} & set(reply)):
        return {"error": "the prediction process answered nonsense", "error_status": 422}
    if "prediction" in reply:
        return {"prediction": reply["prediction"]}
    error = str(reply["error"])[:MAX_ERROR_CHARACTERS]
    if reply.get("stage") == "load":
        return {"error": error, "stage": "load"}
    status = reply.get("error_status")
    return {"error": error, "error_status": status if status in (400, 413, 422) else 422}
