"""Reads on ML models: what a user may see, the latest runs, serving endpoints, tasks."""

from dataclasses import dataclass

from django.db.models import CharField, Exists, OuterRef, Q, QuerySet, Subquery, Value

from workloads.models import ACTIVE, Workload, WorkloadStatus
from workloads.selectors import workload_log_tail, workload_log_tails

from .kind import MLMODEL
from .models import MLModel, ModelRun, ModelVersion, PredictionTask, RunKind, TaskStatus
from .serving import server_secret


def model_list(*, user) -> QuerySet[MLModel]:
    """Models a user may see (all for staff), each with its latest training run's workload."""
    latest = ModelRun.objects.filter(model=OuterRef("pk"), kind=RunKind.TRAINING).order_by("-created_at")
    models = MLModel.objects.select_related("promoted_version", "owner").defer("promoted_version__artifact").annotate(
        training_workload_id=Subquery(latest.values("workload_id")[:1]),
        training_status=Subquery(latest.values("workload__status")[:1]),
        training_started_at=Subquery(latest.values("workload__started_at")[:1]),
        serving_now=Exists(ModelRun.objects.filter(model=OuterRef("pk"), kind=RunKind.SERVING,
                                                   workload__status=WorkloadStatus.RUNNING)),
    )
    return models if user.is_staff else models.filter(owner=user)


# A model's status words beyond its training run's (pending, scheduled, running, succeeded, ...).
MODEL_SERVING, MODEL_READY, MODEL_CREATED = "serving", "ready", "created"


def model_status(*, model: MLModel) -> str:
    """The one word for a model read through ``model_list``, shown by the API and the console alike:
    serving while a server runs, else its latest training run's status, else ready (a version
    to serve) or created."""
    if getattr(model, "serving_now", False):
        return MODEL_SERVING
    return getattr(model, "training_status", None) or (MODEL_READY if model.promoted_version_id else MODEL_CREATED)


def model_training_run(*, model: MLModel) -> ModelRun | None:
    """Its latest training run, with the workload and its node."""
    return model.runs.filter(kind=RunKind.TRAINING).select_related("workload__node").first()


@dataclass(frozen=True)
class TrainingLog:
    model_id: str
    task_id: str | None
    status: str | None
    lines: list[str]


def model_training_log(*, model: MLModel, lines: int | None) -> TrainingLog:
    """The seed's model logs: its latest training run's last ``lines`` lines (all when None)."""
    run = model_training_run(model=model)
    if run is None:
        return TrainingLog(model_id=str(model.pk), task_id=None, status=None, lines=[])
    return TrainingLog(model_id=str(model.pk), task_id=str(run.workload_id), status=run.workload.status,
                       lines=workload_log_tail(workload=run.workload, lines=lines))


def model_for_predict(*, user, model_id) -> MLModel | None:
    """The lean read predict needs (no subqueries): it is on the hot path."""
    models = MLModel.objects.only("id", "name", "owner_id", "promoted_version_id")
    if not user.is_staff:
        models = models.filter(owner=user)
    return models.filter(pk=model_id).first()


def model_version_list(*, model: MLModel) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(model=model).defer("artifact").order_by("-number")


def model_version_get(*, model: MLModel, version_id) -> ModelVersion | None:
    return model_version_list(model=model).filter(pk=version_id).first()


def model_version_artifact(*, model: MLModel, version_id) -> dict | None:
    """What a download sends: the artifact's bytes, filename and checksum."""
    return ModelVersion.objects.filter(model=model, pk=version_id).values("artifact", "filename", "checksum").first()


def node_version(*, node, version_id, with_artifact: bool = False) -> dict | None:
    """A registry version as an agent may read it: only while a workload placed on ``node``
    serves it (scheduled or running there) or a prediction task runs it there; else None."""
    serving_here = Workload.objects.filter(node=node, status__in=ACTIVE, type=MLMODEL,
                                           config__model_version=str(version_id))
    predicting_here = PredictionTask.objects.filter(node=node, status=TaskStatus.RUNNING, version_id=version_id)
    if not (serving_here.exists() or predicting_here.exists()):
        return None
    fields = ["id", "number", "checksum", "size_bytes", "filename", "framework", "model_type"]
    return ModelVersion.objects.filter(pk=version_id).values(*fields, *(["artifact"] if with_artifact else [])).first()


def model_serving_endpoints(*, model_id) -> list[dict]:
    """Running model servers of a model that answered their health check (their agent recorded
    ``runtime["serving"]`` then): address, port, node, version number and the run's secret. One query."""
    rows = ModelRun.objects.filter(
        model_id=model_id, kind=RunKind.SERVING, workload__status=WorkloadStatus.RUNNING,
    ).order_by("-created_at").values("workload_id", "workload__scheduled_at", "workload__runtime",
                                     "workload__node__node_id", "workload__node__address", "version__number")
    endpoints = []
    for row in rows:
        serving = (row["workload__runtime"] or {}).get("serving") or {}
        if serving.get("port"):
            endpoints.append({"address": serving.get("address") or row["workload__node__address"] or "127.0.0.1",
                              "port": serving["port"], "node": row["workload__node__node_id"],
                              "version": row["version__number"],
                              "secret": server_secret(workload_id=row["workload_id"],
                                                      scheduled_at=row["workload__scheduled_at"])})
    return endpoints


def serving_port_holder(*, node_id: int, port: int, other_than) -> Workload | None:
    """An active model server on the node (pk ``node_id``) that asked for ``port`` or was given it."""
    holders = Workload.objects.filter(Q(config__port=port) | Q(runtime__server__port=port), node_id=node_id,
                                      status__in=ACTIVE, type=MLMODEL).exclude(pk=other_than)
    return holders.select_related("node").only("pk", "status", "node__node_id").first()


def node_server_secret(*, node, workload_id) -> str | None:
    """The secret of the current run of a model server placed on ``node`` (scheduled or running
    there), as its agent asks for it; None for any other workload."""
    workload = Workload.objects.filter(pk=workload_id, node=node, status__in=ACTIVE, type=MLMODEL).only(
        "pk", "scheduled_at", "config").first()
    if workload is None or workload.config.get("command") or workload.scheduled_at is None:
        return None
    return server_secret(workload_id=workload.pk, scheduled_at=workload.scheduled_at)


def model_serving_runs(*, model: MLModel) -> QuerySet[ModelRun]:
    return ModelRun.objects.filter(model=model, kind=RunKind.SERVING).select_related("workload__node", "version")


def ml_workload_list(*, user) -> QuerySet[Workload]:
    """The ML workloads (training runs and model servers) a user may see: the seed's tasks."""
    workloads = Workload.objects.filter(type=MLMODEL).select_related("node", "ml_run")
    return workloads if user.is_staff else workloads.filter(owner=user)


def prediction_task_list(*, user) -> QuerySet[PredictionTask]:
    tasks = PredictionTask.objects.select_related("version").defer("version__artifact")
    return tasks if user.is_staff else tasks.filter(owner=user)


@dataclass(frozen=True)
class TaskPage:
    """The seed's tasks, newest first: ML workloads and prediction tasks, with each workload's log tail."""

    items: list  # Workload | PredictionTask
    total: int
    logs: dict  # workload id -> its last lines


def _task_sources(*, user) -> dict[str, QuerySet]:
    return {"workload": ml_workload_list(user=user), "prediction": prediction_task_list(user=user)}


NEWEST_FIRST = ("-created_at", "-id")


def ml_task_page(*, user, limit: int, offset: int, lines: int) -> TaskPage:
    """One page of both kinds of task. The database orders and slices the union of their keys
    (no merging in Python); then one query per kind loads the page's rows, one their log tails.

    Each side of the union is first cut to its newest ``offset + limit`` rows (an index scan on
    ``created_at``), so the union sorts at most twice a page however many tasks there are.
    """
    sources = _task_sources(user=user)
    newest = [
        queryset.filter(pk__in=queryset.order_by(*NEWEST_FIRST).values("pk")[: offset + limit])
        .order_by().values("id", "created_at").annotate(source=Value(source, output_field=CharField()))
        for source, queryset in sources.items()
    ]
    page = newest[0].union(*newest[1:], all=True).order_by(*NEWEST_FIRST)[offset: offset + limit]
    every, *others = (queryset.order_by().values("pk") for queryset in sources.values())
    total = every.union(*others, all=True).count()
    return _task_page(user=user, keys=[(row["id"], row["source"]) for row in page], lines=lines, total=total)


def ml_task_get(*, user, task_id, lines: int) -> TaskPage:
    """A page of one task (or none) by id: a prediction task or an ML workload."""
    for source, queryset in _task_sources(user=user).items():
        if (pk := queryset.filter(pk=task_id).values_list("pk", flat=True).first()) is not None:
            return _task_page(user=user, keys=[(pk, source)], lines=lines, total=1)
    return TaskPage(items=[], total=0, logs={})


def _task_page(*, user, keys: list[tuple], lines: int, total: int) -> TaskPage:
    rows = {}
    wanted = {source: [pk for pk, of in keys if of == source] for source in ("workload", "prediction")}
    for source, queryset in _task_sources(user=user).items():
        if wanted[source]:
            rows.update({item.pk: item for item in queryset.filter(pk__in=wanted[source])})
    items = [rows[pk] for pk, _source in keys if pk in rows]  # in the database's order
    return TaskPage(items=items, total=total, logs=workload_log_tails(workload_ids=wanted["workload"], lines=lines))
