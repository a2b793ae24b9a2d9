"""Reads on ML models: what a user may see, the latest runs, serving endpoints, tasks."""

from django.db.models import Exists, OuterRef, QuerySet, Subquery

from workloads.models import Workload, WorkloadStatus

from .kind import MLMODEL
from .models import MLModel, ModelRun, ModelVersion, PredictionTask, RunKind


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


def model_for_predict(*, user, model_id) -> MLModel | None:
    """The lean read predict needs (no subqueries): it is on the hot path."""
    models = MLModel.objects.only("id", "name", "owner_id", "promoted_version_id")
    if not user.is_staff:
        models = models.filter(owner=user)
    return models.filter(pk=model_id).first()


def model_version_list(*, model: MLModel) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(model=model).defer("artifact").order_by("-number")


def model_serving_endpoints(*, model_id) -> list[dict]:
    """Running model servers of a model: address, port, node, version number. One query."""
    rows = ModelRun.objects.filter(
        model_id=model_id, kind=RunKind.SERVING, workload__status=WorkloadStatus.RUNNING,
    ).order_by("-created_at").values("workload__runtime", "workload__node__node_id", "workload__node__address",
                                     "version__number")
    endpoints = []
    for row in rows:
        serving = (row["workload__runtime"] or {}).get("serving") or {}
        if serving.get("port"):
            endpoints.append({"address": serving.get("address") or row["workload__node__address"] or "127.0.0.1",
                              "port": serving["port"], "node": row["workload__node__node_id"],
                              "version": row["version__number"]})
    return endpoints


def model_serving_runs(*, model: MLModel) -> QuerySet[ModelRun]:
    return ModelRun.objects.filter(model=model, kind=RunKind.SERVING).select_related("workload__node", "version")


def ml_workload_list(*, user) -> QuerySet[Workload]:
    """The ML workloads (training runs and model servers) a user may see: the seed's tasks."""
    workloads = Workload.objects.filter(type=MLMODEL).select_related("node", "ml_run")
    return workloads if user.is_staff else workloads.filter(owner=user)


def prediction_task_list(*, user) -> QuerySet[PredictionTask]:
    tasks = PredictionTask.objects.select_related("version").defer("version__artifact")
    return tasks if user.is_staff else tasks.filter(owner=user)
