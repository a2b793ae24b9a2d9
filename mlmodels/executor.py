"""The ``mlmodel`` executor: training runs and model servers, on the agent's node.

A workload of type ``mlmodel`` is one of two things:

- **a training run** (its config has a ``command``, the seed's deployment): the command runs
  like a process; when it exits 0 the script's ``evaluate`` is run for metrics, and the
  artifact it wrote at ``model_path`` is stored in the registry as a new version *before*
  the workload is reported succeeded, so it survives the node. It is sent over the node API
  (``POST /api/node/ml/artifacts``); a control plane out of reach is retried with backoff for
  ``CNET_ML_STORE_RETRY_SECONDS`` before the run fails saying so.
- **a model server** (no ``command``: seed 000's ``config.model_path/model_type/framework/port``):
  gunicorn runs ``mlmodels.server``, which loads the artifact once and answers on ``port`` at
  the address the agent advertises. The artifact comes from the registry (``model_version``,
  fetched over the node API into the agent's cache and checked against its sha256) or from
  the workload's working directory, never from anywhere else.

The agent has no database: everything it asks goes through its client (``mlmodels.agentside``).

Registered from ``MlmodelsConfig.ready()``; ``workloads`` never imports this module.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from workloads.agent.client import ControlPlaneError, CredentialRefused, Refused
from workloads.executors.base import AgentContext, Executor, ExecutorError, Exit, Handle, workload_env
from workloads.executors.limits import Limits
from workloads.executors.process import ProcessExecutor, ProcessHandle, log_path, resolve_command, spawn, working_dir

from .agentside import ArtifactUnavailable, registry_artifact, this_agent
from .inference import sha256_file

logger = logging.getLogger(__name__)

EVALUATE_TIMEOUT_SECONDS = 300
MAX_STORE_BACKOFF_SECONDS = 30.0


def store_retry_seconds() -> float:
    """How long a trained artifact waits for a control plane out of reach before the run fails."""
    return float(getattr(settings, "CNET_ML_STORE_RETRY_SECONDS", 300))


def ml_python() -> str:
    """The interpreter "python"/"python3" means in an ML deployment: the agent's own, which has
    the ML requirements installed (the system python3 usually has no scikit-learn)."""
    return getattr(settings, "CNET_ML_PYTHON", "") or os.environ.get("CNET_ML_PYTHON") or sys.executable


def inside(root: Path, relative: str) -> Path:
    """``root/relative`` resolved (symlinks too), refused if it leaves ``root``."""
    if Path(relative).is_absolute() or "\x00" in relative:
        raise ExecutorError(f"model_path {relative!r} must be relative to the working directory")
    root = root.resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise ExecutorError(f"model_path {relative!r} leaves the working directory")
    return path


def max_artifact_bytes() -> int:
    return settings.CNET_ML_MAX_ARTIFACT_BYTES


class TrainingHandle(Handle):
    """A training command, then its ``evaluate``, then the artifact stored as a version (phases
    ``train``, ``evaluate``, ``store``)."""

    def __init__(self, *, inner: ProcessHandle, workload_id: str, config: dict, cwd: Path, env: dict,
                 context: AgentContext):
        self.inner = inner
        self.workload_id = workload_id
        self.config = config
        self.cwd = cwd
        self.env = env
        self.context = context
        self.phase = "train"
        self.evaluation: subprocess.Popen | None = None
        self.evaluation_deadline = 0.0
        self.evaluation_offset = 0
        self.stopping = False
        self.result: Exit | None = None
        self.metrics: dict = {}
        self.store_deadline = self.store_retry_at = 0.0
        self.store_backoff = 1.0

    def runtime(self) -> dict:
        return {**self.inner.runtime(), "ml": "training", "phase": self.phase}

    def early_runtime(self) -> dict:
        return {**self.inner.early_runtime(), "ml": "training", "phase": self.phase}

    def runtime_settled(self) -> bool:
        return self.inner.runtime_settled()

    def offsets(self) -> dict:
        return self.inner.offsets()

    def read_logs(self, *, final=False):
        return self.inner.read_logs(final=final)

    def memory_bytes(self):
        return self.inner.memory_bytes()

    def terminate(self) -> None:
        self.stopping = True
        self.inner.terminate()
        if self.evaluation and self.evaluation.poll() is None:
            self.evaluation.terminate()

    def kill(self) -> None:
        self.stopping = True
        self.inner.kill()
        if self.evaluation and self.evaluation.poll() is None:
            self.evaluation.kill()

    def cleanup(self) -> None:
        self.inner.cleanup()

    def poll(self) -> Exit | None:
        if self.result is not None:
            return self.result
        if self.phase == "store":
            if self.stopping:
                return self._end(Exit(None, "stopped before its artifact was stored"))
            return self._try_store() if time.monotonic() >= self.store_retry_at else None
        if self.phase == "train":
            ended = self.inner.poll()
            if ended is None:
                return None
            # None: re-adopted after an agent restart, exit code unknown; its artifact decides.
            if ended.code not in (0, None) or ended.oom or self.stopping:
                return self._end(ended)
            try:
                self.artifact = self._artifact()
            except ExecutorError as error:
                how = "exited 0" if ended.code == 0 else "ended while re-adopted"
                return self._end(Exit(None, f"training {how} but {error}"))  # None: the run failed
            if not self._start_evaluation():
                return self._store(metrics={})
            return None
        # phase == "evaluate"
        code = self.evaluation.poll()
        if code is None and time.monotonic() < self.evaluation_deadline:
            return None
        if code is None:
            self.evaluation.kill()
            self.evaluation.wait()
            self._note(f"evaluate did not finish in {EVALUATE_TIMEOUT_SECONDS}s; stored without metrics")
        if self.stopping:
            return self._end(Exit(code, "stopped during evaluation"))
        return self._store(metrics=self._metrics() if code == 0 else {})

    def _artifact(self) -> Path:
        path = inside(self.cwd, self.config["model_path"])
        if not path.is_file():
            raise ExecutorError(f"it wrote no artifact at model_path {self.config['model_path']!r}")
        size = path.stat().st_size
        if size > max_artifact_bytes():
            raise ExecutorError(f"its artifact is {size} bytes, over the limit of {max_artifact_bytes()}")
        return path

    def _evaluate_argv(self) -> list[str] | None:
        args = list(self.config.get("args") or [])
        command = self.config.get("command")
        if "train" in args:
            at = args.index("train")
            target = args[at + 1] if len(args) > at + 1 else self.config["model_path"]
            return [command, *args[:at], "evaluate", target]
        if self.config.get("script_path"):
            return [command, self.config["script_path"], "evaluate", self.config["model_path"]]
        return None

    def _start_evaluation(self) -> bool:
        argv = self._evaluate_argv()
        if argv is None:
            return False
        argv[0] = ml_python() if argv[0] in {"python", "python3"} else resolve_command(argv[0], self.env.get("PATH"))
        out_path = log_path(self.context.log_dir, self.workload_id, "stdout")
        self.evaluation_offset = out_path.stat().st_size if out_path.exists() else 0
        with open(out_path, "ab") as out, open(log_path(self.context.log_dir, self.workload_id, "stderr"), "ab") as err:
            try:
                self.evaluation = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                                   env=self.env, cwd=self.cwd, start_new_session=True)
            except OSError as error:
                self._note(f"evaluate could not start ({error}); stored without metrics")
                return False
        self.phase = "evaluate"
        self.evaluation_deadline = time.monotonic() + EVALUATE_TIMEOUT_SECONDS
        return True

    def _metrics(self) -> dict:
        out_path = log_path(self.context.log_dir, self.workload_id, "stdout")
        with open(out_path, "rb") as file:
            file.seek(self.evaluation_offset)
            lines = file.read(1024 * 1024).decode("utf-8", errors="replace").splitlines()
        for line in reversed(lines):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                metrics = data.get("metrics")
                return metrics if isinstance(metrics, dict) else {}
        return {}

    def _store(self, *, metrics: dict) -> Exit | None:
        """Send the artifact; the run is reported succeeded only once it is stored."""
        self.phase, self.metrics = "store", metrics
        self.store_deadline = time.monotonic() + store_retry_seconds()
        return self._try_store()

    def _try_store(self) -> Exit | None:
        """One try (the supervisor polls again after a backoff): the run's end, or None to wait."""
        try:
            data = self.artifact.read_bytes()
        except OSError as error:
            return self._end(Exit(None, f"training exited 0 but its artifact could not be read: {error}"))
        try:
            version = this_agent().client.artifact_store(workload_id=self.workload_id, filename=self.artifact.name,
                                                         data=data, metrics=self.metrics, attempts=1)
        except Refused as error:
            return self._end(Exit(None, f"training exited 0 but the control plane refused its artifact: {error}"))
        except CredentialRefused as error:
            return self._end(Exit(None, f"training exited 0 but its artifact could not be stored: {error}"))
        except ControlPlaneError as error:
            if time.monotonic() >= self.store_deadline:
                return self._end(Exit(None, f"training exited 0 but its artifact could not be stored: the control "
                                            f"plane was out of reach for {store_retry_seconds():g} s ({error})"))
            logger.warning("workload %s: artifact not stored yet (again in %.0f s): %s", self.workload_id,
                           self.store_backoff, error)
            self.store_retry_at = time.monotonic() + self.store_backoff
            self.store_backoff = min(self.store_backoff * 2, MAX_STORE_BACKOFF_SECONDS)
            return None
        return self._end(Exit(0, f"exited with code 0; artifact stored as version {version['number']} "
                                 f"(sha256 {version['checksum'][:12]}, {version['size_bytes']} bytes)"))

    def _end(self, result: Exit) -> Exit:
        self.result = result
        return result

    def _note(self, message: str) -> None:
        """A note in the workload's history; best effort (the run goes on either way)."""
        try:
            this_agent().client.workload_note(workload_id=self.workload_id, reason=message)
        except (ControlPlaneError, Refused) as error:
            logger.warning("workload %s: note not delivered (%s): %s", self.workload_id, error, message)


class MLModelExecutor(Executor):
    def start(self, workload, context: AgentContext) -> Handle:
        if workload.config.get("command"):
            return self._start_training(workload, context)
        return self._start_serving(workload, context)

    def _start_training(self, workload, context: AgentContext) -> TrainingHandle:
        config = workload.config
        env = workload_env(workload, context)
        command = config["command"]
        command = ml_python() if command in {"python", "python3"} else resolve_command(command, env.get("PATH"))
        cwd = working_dir(context.work_dir, config.get("working_dir"))
        inner = spawn(workload_id=str(workload.pk), argv=[command, *config.get("args", [])], env=env, cwd=cwd,
                      context=context, limits=Limits.of(workload))
        return TrainingHandle(inner=inner, workload_id=str(workload.pk), config=config, cwd=cwd, env=env,
                              context=context)

    def _start_serving(self, workload, context: AgentContext) -> ProcessHandle:
        config = workload.config
        if config.get("model_version"):
            artifact, checksum = self._from_registry(config["model_version"])
        else:
            cwd = working_dir(context.work_dir, config.get("working_dir"))
            artifact = inside(cwd, config["model_path"])
            if not artifact.is_file():
                raise ExecutorError(f"model_path {config['model_path']!r} is not a file in the working directory")
            checksum, _size = sha256_file(str(artifact))
        host = this_agent().config.address  # the address this node advertises: the control plane reaches it there
        port = config.get("port") or free_port(host)
        base = Path(settings.BASE_DIR)
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", "1",
                "--worker-class", "gthread", "--threads", str(settings_int("CNET_ML_SERVER_THREADS", 4)),
                "--keep-alive", "75", "--timeout", "60", "--graceful-timeout", "3", "--chdir", str(base),
                "--log-level", "warning", "mlmodels.server:app"]
        env = workload_env(
            workload, context, CNET_MODEL_ARTIFACT=str(artifact), CNET_MODEL_CHECKSUM=checksum,
            CNET_MODEL_TYPE=config.get("model_type", ""), CNET_MODEL_VERSION=str(config.get("model_version", "")),
            # One process serves; numpy's own thread pools would only fight its threads.
            OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
        )
        handle = spawn(workload_id=str(workload.pk), argv=argv, env=env, cwd=base, context=context,
                       limits=Limits.of(workload))
        handle.extra["serving"] = {"address": host, "port": port, "checksum": checksum,
                                   "model_version": config.get("model_version")}
        return handle

    def _from_registry(self, version_id: str) -> tuple[Path, str]:
        agent = this_agent()
        try:
            version = agent.client.model_version(version_id)
            return registry_artifact(agent.client, version, cache_dir=agent.config.data_dir / "models"), \
                version["checksum"]
        except Refused as error:
            raise ExecutorError(f"model version {version_id}: the control plane refused it here ({error})") from None
        except (ControlPlaneError, ArtifactUnavailable) as error:
            raise ExecutorError(f"model version {version_id}: {error}") from None

    def adopt(self, workload, context: AgentContext) -> Handle | None:
        handle = ProcessExecutor().adopt(workload, context)
        if handle is None:
            return None
        runtime = workload.runtime or {}
        if runtime.get("ml") == "training" and runtime.get("phase") == "train":
            # Still training: supervise it as a training run again, so its artifact is stored.
            config = workload.config
            return TrainingHandle(inner=handle, workload_id=str(workload.pk), config=config,
                                  cwd=working_dir(context.work_dir, config.get("working_dir")),
                                  env=workload_env(workload, context), context=context)
        serving = (workload.runtime or {}).get("serving")
        if serving:
            handle.extra["serving"] = serving
        return handle


def settings_int(name: str, default: int) -> int:
    return int(getattr(settings, name, 0) or os.environ.get(name, default))


def free_port(host: str) -> int:
    """A free port for a model server: from ``CNET_ML_SERVE_PORTS`` ("lo-hi") if set, else any."""
    span = getattr(settings, "CNET_ML_SERVE_PORTS", "") or os.environ.get("CNET_ML_SERVE_PORTS", "")
    candidates = [0]
    if span:
        low, _, high = span.partition("-")
        candidates = list(range(int(low), int(high or low) + 1))
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ExecutorError(f"no free port for a model server in {span}")
