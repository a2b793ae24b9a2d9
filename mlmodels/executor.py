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
  the workload's working directory, never from anywhere else. A port something else has bound
  fails the start, saying so; the run's secret (``mlmodels.serving``) is asked of the control
  plane and given to the server in its environment; the endpoint (``runtime["serving"]``) is
  recorded only once the server answers its health check.

Every step runs as the workload (``workloads.executors.process.spawn``): under a root agent its
own uid and workspace, always its cgroups, the training's ``evaluate`` included.

The agent has no database: everything it asks goes through its client (``mlmodels.agentside``).

Registered from ``MlmodelsConfig.ready()``; ``workloads`` never imports this module.
"""

import errno
import http.client
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from django.conf import settings

from workloads.agent.client import ControlPlaneError, CredentialRefused, Refused
from workloads.executors.base import (
    AgentContext,
    Executor,
    ExecutorError,
    Exit,
    Handle,
    WorkloadContext,
    workload_context,
    workload_env,
)
from workloads.executors.limits import Limits
from workloads.executors.process import ProcessExecutor, ProcessHandle, log_path, resolve_command, spawn, working_dir

from .agentside import ArtifactUnavailable, ml_python, readable_artifact, registry_artifact, this_agent
from .inference import sha256_file
from .serving import serving_ports

logger = logging.getLogger(__name__)

EVALUATE_TIMEOUT_SECONDS = 300
MAX_STORE_BACKOFF_SECONDS = 30.0
# A model server loads its artifact before it answers: a big one takes a while.
HEALTH_DEADLINE_SECONDS = 120.0
HEALTH_EVERY_SECONDS = 0.1


def store_retry_seconds() -> float:
    """How long a trained artifact waits for a control plane out of reach before the run fails."""
    return float(getattr(settings, "CNET_ML_STORE_RETRY_SECONDS", 300))


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


class Wrapping(Handle):
    """A handle around the process of a run (``inner``), which answers for it unless told otherwise."""

    def __init__(self, inner: ProcessHandle):
        self.inner = inner
        self.workload_id = inner.workload_id

    def runtime(self) -> dict:
        return self.inner.runtime()

    def early_runtime(self) -> dict:
        return self.inner.early_runtime()

    def runtime_settled(self) -> bool:
        return self.inner.runtime_settled()

    def offsets(self) -> dict:
        return self.inner.offsets()

    def read_logs(self, *, final=False):
        return self.inner.read_logs(final=final)

    def memory_bytes(self):
        return self.inner.memory_bytes()

    def poll(self) -> Exit | None:
        return self.inner.poll()

    def terminate(self) -> None:
        self.inner.terminate()

    def kill(self) -> None:
        self.inner.kill()

    def cleanup(self) -> None:
        self.inner.cleanup()


class TrainingHandle(Wrapping):
    """A training command, then its ``evaluate``, then the artifact stored as a version (phases
    ``train``, ``evaluate``, ``store``). ``evaluate`` runs as the training did: same uid and
    workspace, same cgroups and limits, its output after the training's in the same log."""

    def __init__(self, *, inner: ProcessHandle, config: dict, cwd: Path, env: dict, limits: Limits):
        super().__init__(inner)
        self.config = config
        self.cwd = cwd
        self.env = env
        self.limits = limits
        self.phase = "train"
        self.evaluation: ProcessHandle | None = None
        self.evaluation_deadline = 0.0
        self.evaluation_offset = 0
        self.stopping = False
        self.result: Exit | None = None
        self.metrics: dict = {}
        self.store_deadline = self.store_retry_at = 0.0
        self.store_backoff = 1.0

    @property
    def scope(self) -> WorkloadContext:
        return self.inner.scope

    def runtime(self) -> dict:
        return {**self.inner.runtime(), "ml": "training", "phase": self.phase}

    def early_runtime(self) -> dict:
        return {**self.inner.early_runtime(), "ml": "training", "phase": self.phase}

    def terminate(self) -> None:
        self.stopping = True
        self.inner.terminate()
        if self.evaluation:
            self.evaluation.terminate()

    def kill(self) -> None:
        self.stopping = True
        self.inner.kill()
        if self.evaluation:
            self.evaluation.kill()

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
        ended = self.evaluation.poll()
        if ended is None and time.monotonic() < self.evaluation_deadline:
            return None
        if ended is None:
            self.evaluation.kill()
            self.evaluation.popen.wait()  # reaped here: nothing polls it again
            self._note(f"evaluate did not finish in {EVALUATE_TIMEOUT_SECONDS}s; stored without metrics")
        if self.stopping:
            return self._end(Exit(ended and ended.code, "stopped during evaluation"))
        return self._store(metrics=self._metrics() if ended and ended.code == 0 else {})

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
        out_path = log_path(self.scope.log_dir, self.workload_id, "stdout")
        self.evaluation_offset = out_path.stat().st_size if out_path.exists() else 0
        try:
            argv[0] = ml_python() if argv[0] in {"python", "python3"} else resolve_command(argv[0],
                                                                                           self.env.get("PATH"))
            # The training's own uid, workspace and cgroups (still there: cleanup() comes at the end).
            self.evaluation = spawn(workload_id=self.workload_id, argv=argv, env=self.env, cwd=self.cwd,
                                    context=self.scope, limits=self.limits, append=True)
        except ExecutorError as error:
            self._note(f"evaluate could not start ({error}); stored without metrics")
            return False
        self.phase = "evaluate"
        self.evaluation_deadline = time.monotonic() + EVALUATE_TIMEOUT_SECONDS
        return True

    def _metrics(self) -> dict:
        out_path = log_path(self.scope.log_dir, self.workload_id, "stdout")
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


class ServingHandle(Wrapping):
    """A model server. Its endpoint (``runtime["serving"]``: what the control plane forwards
    predictions to) is recorded only once the server answers its health check; a server that
    does not within ``HEALTH_DEADLINE_SECONDS`` is killed and the workload fails saying so. The
    check runs in a thread of its own, which wakes the supervisor when it has news."""

    def __init__(self, inner: ProcessHandle, *, server: dict, wake, healthy: bool = False):
        super().__init__(inner)
        self.server = server  # address, port, checksum, model_version: known from the start
        self.healthy = threading.Event()
        self.ended = threading.Event()
        self.failure: str | None = None
        if healthy:
            self.healthy.set()
        else:
            threading.Thread(target=self._await_health, args=(wake,), name=f"health-{self.workload_id}",
                             daemon=True).start()

    def runtime(self) -> dict:
        return self._with_endpoint(self.inner.runtime())

    def early_runtime(self) -> dict:
        return self._with_endpoint(self.inner.early_runtime())

    def _with_endpoint(self, runtime: dict) -> dict:
        runtime = {**runtime, "server": self.server}
        if self.healthy.is_set():
            runtime["serving"] = self.server
        return runtime

    def poll(self) -> Exit | None:
        ended = self.inner.poll()
        if ended is None:
            return None
        self.ended.set()
        if self.failure:
            return Exit(None, self.failure)
        if not self.healthy.is_set():
            return Exit(ended.code if ended.code else None,
                        f"the model server ended before it answered its health check ({ended.reason})", oom=ended.oom)
        return ended

    def terminate(self) -> None:
        self.ended.set()
        self.inner.terminate()

    def kill(self) -> None:
        self.ended.set()
        self.inner.kill()

    def _await_health(self, wake) -> None:
        address, port = self.server["address"], self.server["port"]
        deadline = time.monotonic() + HEALTH_DEADLINE_SECONDS
        while not self.ended.is_set():
            if server_answers(address, port):
                self.healthy.set()
                logger.info("workload %s: model server answers on %s:%s", self.workload_id, address, port)
                break
            if time.monotonic() > deadline:
                self.failure = (f"the model server did not answer its health check on {address}:{port} in "
                                f"{HEALTH_DEADLINE_SECONDS:g} s")
                self.inner.kill()
                break
            self.ended.wait(HEALTH_EVERY_SECONDS)  # pacing between probes; a stop ends it at once
        wake()


def server_answers(address: str, port: int) -> bool:
    """Whether a model server answers ``GET /health`` there (the bare check needs no secret)."""
    connection = http.client.HTTPConnection(address, port, timeout=2.0)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status == 200 and json.loads(response.read() or b"null") == {"status": "ok"}
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()


class MLModelExecutor(Executor):
    def start(self, workload, context: AgentContext | WorkloadContext) -> Handle:
        scope = workload_context(context, str(workload.pk))
        try:
            if workload.config.get("command"):
                return self._start_training(workload, scope)
            return self._start_serving(workload, scope)
        except ExecutorError:
            scope.release()
            raise

    def _start_training(self, workload, scope: WorkloadContext) -> TrainingHandle:
        config = workload.config
        env = workload_env(workload, scope)
        command = config["command"]
        command = ml_python() if command in {"python", "python3"} else resolve_command(command, env.get("PATH"))
        cwd = working_dir(scope.work_dir, config.get("working_dir"))
        limits = Limits.of(workload)
        inner = spawn(workload_id=str(workload.pk), argv=[command, *config.get("args", [])], env=env, cwd=cwd,
                      context=scope, limits=limits)
        return TrainingHandle(inner=inner, config=config, cwd=cwd, env=env, limits=limits)

    def _start_serving(self, workload, scope: WorkloadContext) -> ServingHandle:
        config = workload.config
        if config.get("model_version"):
            artifact, checksum = self._from_registry(config["model_version"])
            artifact = readable_artifact(scope, artifact)  # the cache is the agent's, closed to workloads
        else:
            cwd = working_dir(scope.work_dir, config.get("working_dir"))
            artifact = inside(cwd, config["model_path"])
            if not artifact.is_file():
                raise ExecutorError(f"model_path {config['model_path']!r} is not a file in the working directory")
            checksum, _size = sha256_file(str(artifact))
        host = this_agent().config.address  # the address this node advertises: the control plane reaches it there
        port = config.get("port") or free_port(host)
        refuse_taken(host, port)
        secret = self._secret(str(workload.pk))
        base = Path(settings.BASE_DIR)
        argv = [ml_python(), "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", "1",
                "--worker-class", "gthread", "--threads", str(settings_int("CNET_ML_SERVER_THREADS", 4)),
                "--keep-alive", "75", "--timeout", "60", "--graceful-timeout", "3", "--chdir", str(base),
                "--log-level", "warning", "mlmodels.server:app"]
        env = workload_env(
            workload, scope, CNET_MODEL_ARTIFACT=str(artifact), CNET_MODEL_CHECKSUM=checksum,
            CNET_MODEL_TYPE=config.get("model_type", ""), CNET_MODEL_VERSION=str(config.get("model_version", "")),
            CNET_MODEL_SECRET=secret,  # its own run's, nothing of the agent's
            # One process serves; numpy's own thread pools would only fight its threads.
            OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
        )
        inner = spawn(workload_id=str(workload.pk), argv=argv, env=env, cwd=base, context=scope,
                      limits=Limits.of(workload))
        server = {"address": host, "port": port, "checksum": checksum, "model_version": config.get("model_version")}
        return ServingHandle(inner, server=server, wake=scope.wake)

    def _secret(self, workload_id: str) -> str:
        try:
            return this_agent().client.model_server_secret(workload_id)
        except (ControlPlaneError, Refused) as error:
            raise ExecutorError(f"the model server's secret could not be fetched: {error}") from None

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

    def adopt(self, workload, context: AgentContext | WorkloadContext) -> Handle | None:
        handle = ProcessExecutor().adopt(workload, context)
        if handle is None:
            return None
        runtime = workload.runtime or {}
        if runtime.get("ml") == "training" and runtime.get("phase") == "train":
            # Still training: supervise it as a training run again, so its artifact is stored.
            config = workload.config
            return TrainingHandle(inner=handle, config=config, env=workload_env(workload, handle.scope),
                                  cwd=working_dir(handle.scope.work_dir, config.get("working_dir")),
                                  limits=Limits.of(workload))
        server = runtime.get("server") or runtime.get("serving")
        if server:
            return ServingHandle(handle, server=server, wake=handle.scope.wake, healthy="serving" in runtime)
        return handle


def settings_int(name: str, default: int) -> int:
    return int(getattr(settings, name, 0) or os.environ.get(name, default))


def _bindable(host: str, port: int) -> OSError | None:
    """Whether a server could bind ``host:port`` now (as gunicorn does: SO_REUSEADDR, so a closed
    connection's TIME_WAIT does not count); the error if not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


def refuse_taken(host: str, port: int) -> None:
    """Fail the start, saying so, when something else has bound the port."""
    error = _bindable(host, port)
    if error is None:
        return
    if error.errno == errno.EADDRINUSE:
        raise ExecutorError(f"port {port} on {host} is taken (another process listens there): "
                            f"the model server was not started")
    raise ExecutorError(f"port {port} on {host} cannot be bound: {error.strerror or error}")


def free_port(host: str) -> int:
    """A free port for a model server, from ``CNET_ML_SERVE_PORTS``."""
    ports = serving_ports()
    for port in ports:
        if _bindable(host, port) is None:
            return port
    raise ExecutorError(f"no free port for a model server in {ports.start}-{ports.stop - 1} (CNET_ML_SERVE_PORTS)")
