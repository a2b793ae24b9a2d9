"""Writes on ML models: deploy (a training workload), versions, promote, serve, stop, predict, and what
agents store and note over the node API (``mlmodels.nodeapi``). Prediction tasks: ``predictions``."""

import hashlib
import logging
from pathlib import PurePosixPath

from django.conf import settings
from django.db import IntegrityError, transaction

from core.errors import Forbidden, InvalidRequest, StateConflict
from nodes.models import Node
from nodes.resources import Resources
from workloads.models import ACTIVE, TERMINAL, Workload, WorkloadStatus
from workloads.services import workload_note, workload_stop, workload_submit

from . import inference
from .errors import PayloadTooLarge
from .kind import MLMODEL
from .models import MLModel, ModelRun, ModelVersion, RunKind, VersionSource
from .predictions import predict_remote, prediction_task_create
from .selectors import model_serving_endpoints, model_training_run, serving_port_holder

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
    """A training run exited 0 (its agent says so through ``model_version_store_from_node``): its
    artifact becomes a version.

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


def _placed_on(*, node: Node, workload_id) -> Workload:
    """The workload, if it is placed on ``node``; another node's (or none) is refused whole."""
    workload = Workload.objects.filter(pk=workload_id).only("pk", "node_id", "status", "type", "config").first()
    if workload is None or workload.node_id != node.pk:
        raise Forbidden(f"workload {workload_id} is not placed on node {node.node_id}", field="workload_id")
    return workload


def model_version_store_from_node(*, node: Node, workload_id, data: bytes, filename: str,
                                  metrics: dict) -> ModelVersion:
    """The node API's artifact upload: a training run placed on, and running on, ``node`` stores
    the artifact it wrote as a version (once per run: a retried upload answers the same one)."""
    workload = _placed_on(node=node, workload_id=workload_id)
    if workload.type != MLMODEL or not workload.config.get("command"):
        raise InvalidRequest(f"workload {workload_id} is not a training run", field="workload_id")
    if workload.status != WorkloadStatus.RUNNING:
        raise StateConflict(f"workload {workload_id} is {workload.status}, not running: its artifact is not taken",
                            field="workload_id")
    limit = settings.CNET_ML_MAX_ARTIFACT_BYTES
    if len(data) > limit:
        raise PayloadTooLarge(f"the artifact is {len(data)} bytes, over the limit of {limit}", field="file")
    return model_version_store_from_training(workload_id=workload_id, data=data, metrics=metrics, filename=filename)


def workload_note_from_node(*, node: Node, workload_id, reason: str) -> None:
    """A note in the history of a workload placed on ``node`` (its agent's words, e.g. why a
    training run was stored without metrics)."""
    _placed_on(node=node, workload_id=workload_id)
    workload_note(workload_id=workload_id, reason=reason)


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
        holder = port and workload.node_id and serving_port_holder(node_id=workload.node_id, port=port,
                                                                   other_than=workload.pk)
        if holder:  # refused whole: the placement rolls back with it
            raise InvalidRequest(f"port {port} is held on node {holder.node.node_id} by workload {holder.pk} "
                                 f"({holder.status})", field="port")
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
            answer = predict_remote(model=model, endpoints=endpoints, input_data=input_data)
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
