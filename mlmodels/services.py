"""Writes on ML models: deploy (a training workload), versions, promote, serve, stop, predict."""

import hashlib
import logging
import time
from datetime import timedelta
from pathlib import PurePosixPath

from django.db import IntegrityError, transaction
from django.db.models import F, Q, Subquery, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from core.errors import InvalidRequest, StateConflict
from nodes.models import Node, NodeStatus
from nodes.resources import Resources
from workloads.dispatch import node_queue, publish
from workloads.models import ACTIVE, TERMINAL, Workload
from workloads.services import workload_stop, workload_submit

from . import client, inference
from .errors import PayloadTooLarge, PredictionFailed
from .kind import KIND, MLMODEL
from .models import MLModel, ModelRun, ModelVersion, PredictionTask, RunKind, TaskStatus, VersionSource
from .selectors import model_serving_endpoints, model_training_run

logger = logging.getLogger(__name__)


def model_training_command(*, command: str, args: list[str], script_path: str,
                           model_path: str) -> tuple[str, list[str]]:
    """The command a deploy trains with. Naming none runs ``script_path`` with python3 the
    seed's way (``python3 <script> train <model_path>`` unless args are given)."""
    if command:
        return command, args
    if not script_path:
        raise InvalidRequest("required (or give script_path to run it with python3)", field="command")
    return "python3", args or [script_path, "train", model_path]


def model_deploy(*, owner, name: str, model_type: str, model_path: str, env: dict, working_dir: str,
                 resources: Resources, command: str = "", args: list[str] | None = None,
                 framework: str = "scikit-learn", script_path: str = "", node: str | None = None,
                 strategy: str | None = None, serve: bool = False, port: int | None = None) -> MLModel:
    """Record the model and submit its training run as an ``mlmodel`` workload, placed by the scheduler.

    The seed's ``MODEL_PATH``/``MODEL_TYPE`` join the env. Any refusal (no node could ever
    hold the resources, unknown node or strategy) rolls the model back too: nothing is written.
    """
    command, args = model_training_command(command=command, args=args or [], script_path=script_path,
                                           model_path=model_path)
    env = {**env, "MODEL_PATH": model_path, "MODEL_TYPE": model_type}
    with transaction.atomic():
        model = MLModel.objects.create(
            owner=owner, name=name, model_type=model_type, framework=framework, model_path=model_path,
            script_path=script_path, command=command, args=args, env=env, working_dir=working_dir,
            cpu_millicores=resources.cpu, memory_bytes=resources.memory, disk_bytes=resources.storage,
            serve_after_training=serve, serve_port=port,
        )
        config = {"model_path": model_path, "model_type": model_type, "framework": framework,
                  "command": command, "args": args, "env": env, "working_dir": working_dir,
                  "model_id": str(model.pk)}
        if script_path:
            config["script_path"] = script_path
        try:
            workload = workload_submit(owner=owner, name=f"{name}:train", type=MLMODEL, config=config,
                                       requirements=resources, node=node, strategy=strategy)
        except InvalidRequest as error:
            field = "resources" if error.field == "requirements" else error.field
            raise InvalidRequest(str(error), field=field) from None
        ModelRun.objects.create(model=model, workload=workload, kind=RunKind.TRAINING)
    logger.info("model %s: deployed, training run %s", model.pk, workload.pk)
    return model


def model_version_create(*, model: MLModel, data: bytes, filename: str, source: str, metrics: dict | None = None,
                         framework: str | None = None, workload_id=None) -> ModelVersion:
    """Store an artifact as the model's next version; the first version is promoted at once."""
    if not data:
        raise InvalidRequest("the artifact is empty", field="file")
    checksum = hashlib.sha256(data).hexdigest()
    for _attempt in range(5):
        try:
            with transaction.atomic():
                last = model.versions.order_by("-number").values_list("number", flat=True).first() or 0
                version = ModelVersion.objects.create(
                    model=model, number=last + 1, checksum=checksum, size_bytes=len(data),
                    framework=framework or model.framework, model_type=model.model_type,
                    filename=PurePosixPath(filename).name[:255] or "model.joblib", metrics=metrics or {},
                    source=source, workload_id=workload_id, artifact=data,
                )
                MLModel.objects.filter(pk=model.pk, promoted_version__isnull=True).update(promoted_version=version)
            break
        except IntegrityError:
            # Two versions raced for the same number (retry), or this run already stored its own.
            if workload_id and (done := ModelVersion.objects.defer("artifact").filter(workload_id=workload_id).first()):
                return done
    else:
        raise StateConflict("could not allocate a version number; try again")
    logger.info("model %s: version %s stored (%s bytes, sha256 %s)", model.pk, version.number, len(data), checksum)
    return version


def model_version_store_from_training(*, workload_id, data: bytes, metrics: dict, filename: str) -> ModelVersion:
    """Called on the agent when a training run exited 0: its artifact becomes a version.

    A training workload submitted through /api/workloads (not /api/ml/models) gets a model
    of its own, so every successful run lands in the registry.
    """
    run = ModelRun.objects.select_related("model").filter(workload_id=workload_id).first()
    if run is None:
        workload = Workload.objects.get(pk=workload_id)
        config = workload.config
        model = MLModel.objects.create(
            owner=workload.owner, name=workload.name, model_type=config.get("model_type", "custom"),
            framework=config.get("framework", "scikit-learn"), model_path=config["model_path"],
            command=config.get("command", ""), args=config.get("args", []), env=config.get("env", {}),
            working_dir=config.get("working_dir") or ".", cpu_millicores=max(1, workload.cpu_millicores),
            memory_bytes=max(1, workload.memory_bytes), disk_bytes=workload.storage_bytes,
        )
        run = ModelRun.objects.create(model=model, workload=workload, kind=RunKind.TRAINING)
    version = model_version_create(model=run.model, data=data, filename=filename, source=VersionSource.TRAINING,
                                   metrics=metrics, workload_id=workload_id)
    if run.version_id is None:
        ModelRun.objects.filter(pk=run.pk).update(version=version)
    if run.model.serve_after_training:
        transaction.on_commit(lambda: _serve_quietly(run.model, version))
    return version


def _serve_quietly(model: MLModel, version: ModelVersion) -> None:
    try:
        model_serve(model=model, version=version, port=model.serve_port)
    except Exception as error:  # the training run succeeded either way; say why serving did not start
        logger.warning("model %s: serving after training failed: %s", model.pk, error)


def model_version_promote(*, model: MLModel, version: ModelVersion) -> MLModel:
    if version.model_id != model.pk:
        raise InvalidRequest("that version belongs to another model", field="version")
    MLModel.objects.filter(pk=model.pk).update(promoted_version=version)
    model.refresh_from_db()
    return model


def model_serve(*, model: MLModel, version: ModelVersion | None = None, port: int | None = None,
                node: str | None = None, resources: Resources | None = None) -> ModelRun:
    """Start a model server for a version (the promoted one by default), placed by the scheduler."""
    version = version or model.promoted_version
    if version is None:
        raise StateConflict(f"model {model.name!r} has no version to serve yet; train it or upload an artifact",
                            field="version")
    if version.model_id != model.pk:
        raise InvalidRequest("that version belongs to another model", field="version")
    config = {"model_path": version.filename, "model_type": model.model_type, "framework": version.framework,
              "model_id": str(model.pk), "model_version": str(version.pk)}
    if port:
        config["port"] = port
    resources = resources or Resources(cpu=min(model.cpu_millicores, 500), gpu=0,
                                       memory=min(model.memory_bytes, 512_000_000), storage=0)
    with transaction.atomic():
        workload = workload_submit(owner=model.owner, name=f"{model.name}:serve:v{version.number}",
                                   type=MLMODEL, config=config, requirements=resources, node=node)
        run = ModelRun.objects.create(model=model, workload=workload, kind=RunKind.SERVING, version=version)
    logger.info("model %s: serving v%s as workload %s", model.pk, version.number, workload.pk)
    return run


def model_stop(*, model: MLModel, kinds: tuple[str, ...] = (RunKind.TRAINING, RunKind.SERVING)) -> int:
    """Stop the model's live training runs and servers. Returns how many were asked to stop."""
    stopped = 0
    for run in ModelRun.objects.select_related("workload__node").filter(
            model=model, kind__in=kinds, workload__status__in=[*ACTIVE, "pending"]):
        if run.workload.status in TERMINAL:
            continue
        workload_stop(workload=run.workload, reason=f"model {model.name} stopped")
        stopped += 1
    return stopped


def model_delete(*, model: MLModel) -> None:
    """The seed's DELETE (停止): stop what runs for it, then remove it and its versions.

    Its workloads stay, stopped, as history under /api/workloads."""
    model_stop(model=model)
    model.delete()


# --- predict ---------------------------------------------------------------------------------
def prediction_check_input(*, input_data) -> None:
    try:
        inference.check_input(input_data)
    except inference.BatchTooLarge as error:
        raise PayloadTooLarge(str(error), field="input_data") from None
    except inference.BadInput as error:
        raise InvalidRequest(str(error).removeprefix("input_data: "), field="input_data") from None


def model_predict(*, model: MLModel, input_data, mode: str = "auto", owner=None) -> tuple[int, dict]:
    """The seed's predict. Synchronous through a serving instance when one is up; otherwise (or
    when asked, ``mode="async"``) the seed's asynchronous form: a prediction task.

    ``mode="sync"`` insists on a serving instance (409 when there is none).
    """
    prediction_check_input(input_data=input_data)
    if mode != "async":
        endpoints = model_serving_endpoints(model_id=model.pk)
        if endpoints:
            answer = _predict_remote(model=model, endpoints=endpoints, input_data=input_data)
            return 200, {**answer, "message": "Prediction completed"}
        if mode == "sync":
            raise StateConflict(f"model {model.name!r} is not serving: start a server with "
                                f"POST /api/ml/models/{model.pk}/serve, or predict asynchronously")
    if model.promoted_version_id is None:
        raise StateConflict(f"model {model.name!r} is not serving and has no trained version yet "
                            f"(training: {_training_status(model)})")
    task = prediction_task_create(model=model, input_data=input_data, owner=owner)
    return 202, {"prediction_task_id": str(task.pk), "message": "Prediction task created", "status": task.status}


def _training_status(model: MLModel) -> str:
    run = model_training_run(model=model)
    return run.workload.status if run else "none"


def _predict_remote(*, model: MLModel, endpoints: list[dict], input_data) -> dict:
    last_error = ""
    for endpoint in endpoints:
        started = time.perf_counter()
        try:
            status, body = client.post_json(endpoint["address"], endpoint["port"], "/predict",
                                            {"input_data": input_data})
        except OSError as error:
            last_error = f"{endpoint['node']}:{endpoint['port']}: {error}"
            continue
        if status == 200:
            return {"prediction": body.get("prediction"), "model_id": str(model.pk),
                    "version": endpoint["version"], "served_by": endpoint["node"],
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        detail = body.get("detail", f"model server answered {status}") if isinstance(body, dict) else str(body)
        if status == 413:
            raise PayloadTooLarge(detail.removeprefix("input_data: "), field="input_data")
        if status == 400:
            raise InvalidRequest(detail.removeprefix("input_data: "), field="input_data")
        if status == 422:
            raise PredictionFailed(f"the model raised: {detail}")
        last_error = f"{endpoint['node']}:{endpoint['port']} answered {status}: {detail}"
    raise StateConflict(f"model {model.name!r} is not serving: its server is not accepting requests "
                        f"(starting or gone: {last_error})")


def prediction_task_create(*, model: MLModel, input_data, owner=None) -> PredictionTask:
    task = PredictionTask.objects.create(model=model, version_id=model.promoted_version_id, owner=owner,
                                         input_data=input_data)
    task_id = str(task.pk)
    transaction.on_commit(lambda: prediction_task_dispatch(task_id=task_id))
    return task


def prediction_task_dispatch(*, task_id: str) -> bool:
    """Send a prediction to an agent that runs models. Loading an artifact unpickles what a
    user uploaded or trained, so it happens where user code already runs, never on the control
    plane. No such node, or the broker down: it stays pending and the sweep sends it again."""
    node_id = (
        Node.objects.filter(status=NodeStatus.READY, **{f"capabilities__{KIND.capability}__available": True})
        .order_by("cpu_allocated_millicores", "node_id").values_list("node_id", flat=True).first()
    )
    if node_id is None:
        logger.warning("prediction %s: no ready node runs models; left pending", task_id)
        return False
    return publish("mlmodels.run_prediction", [task_id, node_id], node_queue(node_id))


_CACHE = inference.ModelCache(size=4)


def prediction_task_claim(*, task_id, node_id: str | None = None) -> int | None:
    """Move a pending task to running on ``node_id`` (the agent that took it), counting the
    attempt. Returns the attempt's number, or None when another caller claimed it first."""
    node = Subquery(Node.objects.filter(node_id=node_id).values("pk")[:1]) if node_id else None
    if not PredictionTask.objects.filter(pk=task_id, status=TaskStatus.PENDING).update(
            status=TaskStatus.RUNNING, started_at=timezone.now(), node=node, attempts=F("attempts") + 1):
        return None
    return PredictionTask.objects.values_list("attempts", flat=True).get(pk=task_id)


def prediction_task_run(*, task_id, node_id: str | None = None) -> bool:
    """Run one pending prediction task with the registry's artifact. Idempotent: only the caller
    that moves it pending → running does the work, and only while the sweep has not given its
    attempt up (retried or failed) does it write the answer."""
    attempt = prediction_task_claim(task_id=task_id, node_id=node_id)
    if attempt is None:
        return False
    task = PredictionTask.objects.select_related("version").defer("version__artifact").get(pk=task_id)
    version = task.version
    fields: dict
    if version is None:
        fields = {"status": TaskStatus.FAILED, "error": "the model version it was asked of no longer exists",
                  "error_status": 409}
    else:
        started = time.perf_counter()
        try:
            model = _CACHE.get(version.checksum, lambda: bytes(
                ModelVersion.objects.values_list("artifact", flat=True).get(pk=version.pk)))
            prediction = inference.predict(model, task.input_data)
            fields = {"status": TaskStatus.SUCCEEDED, "result": {"prediction": prediction, "version": version.number}}
        except (inference.BadInput, inference.BatchTooLarge, inference.ModelFailed) as error:
            fields = {"status": TaskStatus.FAILED, "error": str(error), "error_status": error.status}
        except Exception as error:  # an artifact that does not load: the task says so
            fields = {"status": TaskStatus.FAILED, "error": f"could not load version {version.number}: {error}",
                      "error_status": 422}
        elapsed = (time.perf_counter() - started) * 1000
        line = (f"{timezone.now().isoformat()} predicted with version {version.number} "
                f"(sha256 {version.checksum[:12]}) in {elapsed:.2f} ms: {fields['status']}"
                + (f": {fields.get('error')}" if fields.get("error") else ""))
        fields["log"] = Concat(F("log"), Value(line), output_field=TextField())  # after any retry notes
    written = PredictionTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, attempts=attempt).update(
        finished_at=timezone.now(), **fields)
    if not written:
        logger.warning("prediction %s: attempt %s finished after the sweep gave it up; answer dropped",
                       task_id, attempt)
    return bool(written)


def prediction_tasks_recover(*, run_deadline_seconds: float, max_attempts: int) -> tuple[int, int]:
    """Running tasks whose agent died (its node went offline, or the run is past its deadline)
    go back to pending for another agent, or fail with the reason once ``max_attempts`` runs
    have died. Returns (retried, failed). Each UPDATE re-checks ``status=running`` on the row
    itself, so an answer that lands meanwhile is never overwritten."""
    now = timezone.now()
    running = PredictionTask.objects.filter(status=TaskStatus.RUNNING)
    offline = Node.objects.filter(status=NodeStatus.OFFLINE).values("pk")
    causes = [
        ("its node went offline", Q(node__in=offline)),
        (f"it ran past the {run_deadline_seconds:g} s deadline", Q(started_at__lte=now - timedelta(
            seconds=run_deadline_seconds))),
    ]
    retried = failed = 0
    for cause, stuck in causes:
        note = f"{now.isoformat()} attempt lost: {cause} before its agent answered"
        failed += running.filter(stuck, attempts__gte=max_attempts).update(
            status=TaskStatus.FAILED, finished_at=now, error_status=503,
            error=f"no agent finished it in {max_attempts} attempts; the last was lost: {cause}",
            log=Concat(F("log"), Value(f"{note}; failed\n"), output_field=TextField()))
        retried += running.filter(stuck, attempts__lt=max_attempts).update(
            status=TaskStatus.PENDING, started_at=None,
            log=Concat(F("log"), Value(f"{note}; retried\n"), output_field=TextField()))
    if retried or failed:
        logger.warning("predictions: %s lost run(s) retried, %s failed after %s attempts", retried, failed,
                       max_attempts)
    return retried, failed


def prediction_tasks_dispatch_stranded(*, older_than_seconds: float, run_deadline_seconds: float,
                                       max_attempts: int, limit: int = 100) -> int:
    """The sweep: recover runs whose agent died, then send again prediction tasks still pending
    after a while (no node then, broker down, an agent that died holding the message, or just
    recovered); running one twice is harmless (idempotent). Returns how many were sent."""
    prediction_tasks_recover(run_deadline_seconds=run_deadline_seconds, max_attempts=max_attempts)
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = PredictionTask.objects.filter(status=TaskStatus.PENDING, created_at__lte=cutoff).order_by(
        "created_at").values_list("pk", flat=True)[:limit]
    return sum(prediction_task_dispatch(task_id=str(pk)) for pk in list(ids))

