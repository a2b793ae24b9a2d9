from django.http import Http404, HttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response

from core.errors import InvalidRequest
from workloads.api.serializers import LogQuerySerializer
from workloads.selectors import workload_log_tail

from ..models import ModelVersion, RunKind, VersionSource
from ..selectors import (
    ml_workload_list,
    model_for_predict,
    model_list,
    model_serving_runs,
    model_version_list,
    prediction_task_list,
)
from ..services import (
    model_delete,
    model_deploy,
    model_predict,
    model_serve,
    model_stop,
    model_version_create,
    model_version_promote,
)
from .serializers import (
    DeploySerializer,
    MLModelSerializer,
    PredictionTaskSerializer,
    PredictSerializer,
    ServeSerializer,
    UploadSerializer,
    VersionSerializer,
)

UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


class MLModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                     viewsets.GenericViewSet):
    """The seed's /api/ml/models: deploy, list, inspect, delete (stop), predict, logs; plus the registry."""

    serializer_class = MLModelSerializer
    lookup_value_regex = UUID
    ordering_fields = ["created_at", "name"]
    ordering = ["-created_at"]
    filterset_fields = ["name", "model_type"]
    filterset_class = None

    def get_queryset(self):
        return model_list(user=self.request.user)

    @extend_schema(request=DeploySerializer, responses={201: MLModelSerializer})
    def create(self, request):
        deploy = DeploySerializer(data=request.data)
        deploy.is_valid(raise_exception=True)
        model = model_deploy(owner=request.user, **deploy.validated_data)
        return Response(MLModelSerializer(self.get_queryset().get(pk=model.pk)).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        model_delete(model=instance)

    @extend_schema(request=PredictSerializer, responses={200: dict, 202: dict})
    @action(detail=True, methods=["post"])
    def predict(self, request, pk=None):
        body = PredictSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        model = model_for_predict(user=request.user, model_id=pk)
        if model is None:
            raise Http404
        code, answer = model_predict(model=model, input_data=body.validated_data["input_data"],
                                     mode=body.validated_data["mode"], owner=request.user)
        if code == 200:
            answer = {**answer, "message": "Prediction completed"}
        return Response(answer, status=code)

    @extend_schema(parameters=[OpenApiParameter("lines", int, description="last N lines (default all)")])
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        model = self.get_object()
        run = model.runs.filter(kind=RunKind.TRAINING).select_related("workload").first()
        lines = workload_log_tail(workload=run.workload, lines=query.validated_data.get("lines")) if run else []
        return Response({"model_id": str(model.pk), "task_id": str(run.workload_id) if run else None,
                         "status": run.workload.status if run else None, "lines": lines, "logs": "\n".join(lines)})

    @extend_schema(request=ServeSerializer, responses={201: dict})
    @action(detail=True, methods=["post", "get", "delete"])
    def serve(self, request, pk=None):
        """POST: start a model server (promoted version by default); GET: list servers; DELETE: stop them."""
        model = self.get_object()
        if request.method == "GET":
            return Response([_serving(run) for run in model_serving_runs(model=model)[:100]])
        if request.method == "DELETE":
            return Response({"stopped": model_stop(model=model, kinds=(RunKind.SERVING,))})
        body = ServeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        version = None
        if "version" in data:
            version = model_version_list(model=model).filter(pk=data["version"]).first()
            if version is None:
                raise InvalidRequest("no such version of this model", field="version")
        run = model_serve(model=model, version=version, port=data.get("port"), node=data.get("node"),
                          resources=data.get("resources"))
        return Response(_serving(run), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=dict)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return Response({"stopped": model_stop(model=self.get_object())})

    @extend_schema(request=UploadSerializer, responses={200: VersionSerializer(many=True), 201: VersionSerializer})
    @action(detail=True, methods=["get", "post"], parser_classes=[MultiPartParser, JSONParser],
            pagination_class=None, filterset_class=None)
    def versions(self, request, pk=None):
        """GET: the versions, newest first. POST (multipart ``file``): upload an artifact as a new version."""
        model = self.get_object()
        context = {"promoted_version_id": model.promoted_version_id}
        if request.method == "GET":
            return Response(VersionSerializer(model_version_list(model=model), many=True, context=context).data)
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        version = model_version_create(model=model, data=data["file"].read(), filename=data["file"].name,
                                       source=VersionSource.UPLOAD, metrics=data["metrics"],
                                       framework=data.get("framework"))
        if data["promote"]:
            model = model_version_promote(model=model, version=version)
        model.refresh_from_db(fields=["promoted_version"])
        context = {"promoted_version_id": model.promoted_version_id}
        return Response(VersionSerializer(version, context=context).data, status=status.HTTP_201_CREATED)

    def _version(self, model, version_id) -> ModelVersion:
        version = model_version_list(model=model).filter(pk=version_id).first()
        if version is None:
            raise Http404
        return version

    @extend_schema(responses=VersionSerializer)
    @action(detail=True, methods=["get"], url_path=rf"versions/(?P<version_id>{UUID})")
    def version(self, request, pk=None, version_id=None):
        model = self.get_object()
        return Response(VersionSerializer(self._version(model, version_id),
                                          context={"promoted_version_id": model.promoted_version_id}).data)

    @extend_schema(request=None, responses=VersionSerializer)
    @action(detail=True, methods=["post"], url_path=rf"versions/(?P<version_id>{UUID})/promote")
    def promote(self, request, pk=None, version_id=None):
        model = self.get_object()
        model = model_version_promote(model=model, version=self._version(model, version_id))
        return Response(VersionSerializer(self._version(model, version_id),
                                          context={"promoted_version_id": model.promoted_version_id}).data)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"], url_path=rf"versions/(?P<version_id>{UUID})/download")
    def download(self, request, pk=None, version_id=None):
        model = self.get_object()
        row = ModelVersion.objects.filter(model=model, pk=version_id).values("artifact", "filename", "checksum").first()
        if row is None:
            raise Http404
        response = HttpResponse(bytes(row["artifact"]), content_type="application/octet-stream")
        response["Content-Disposition"] = content_disposition_header(True, row["filename"])
        response["X-Checksum-SHA256"] = row["checksum"]
        return response


def _serving(run) -> dict:
    workload = run.workload
    serving = (workload.runtime or {}).get("serving") or {}
    return {"task_id": str(workload.pk), "status": workload.status,
            "version": run.version.number if run.version else None,
            "node": workload.node.node_id if workload.node else None, "address": serving.get("address"),
            "port": serving.get("port") or workload.config.get("port"), "reason": workload.reason}


class TaskViewSet(viewsets.ViewSet):
    """The seed's /api/tasks: ML training runs, model servers and prediction tasks, as one plain array,
    each with its ``log_file`` (on its node) and ``log`` (the last ``lines`` lines, from the database)."""

    lookup_value_regex = UUID
    MAX_LIMIT = 1000

    def _int(self, name: str, default: int, high: int) -> int:
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) > high:
            raise InvalidRequest(f"must be an integer from 0 to {high}", field=name)
        return int(raw)

    @extend_schema(parameters=[OpenApiParameter("lines", int), OpenApiParameter("limit", int),
                               OpenApiParameter("offset", int)], responses=dict)
    def list(self, request):
        limit = self._int("limit", 100, self.MAX_LIMIT)
        offset = self._int("offset", 0, 10**9)
        lines = self._int("lines", 20, 100_000)
        workloads = ml_workload_list(user=request.user).order_by("-created_at")
        predictions = prediction_task_list(user=request.user).order_by("-created_at")
        merged = sorted([*workloads[: offset + limit], *predictions[: offset + limit]],
                        key=lambda item: item.created_at, reverse=True)[offset: offset + limit]
        total = workloads.count() + predictions.count()
        return Response([self._represent(item, lines) for item in merged], headers={"X-Total-Count": str(total)})

    def retrieve(self, request, pk=None):
        lines = self._int("lines", 100, 1_000_000)
        task = prediction_task_list(user=request.user).filter(pk=pk).first()
        if task is None:
            task = ml_workload_list(user=request.user).filter(pk=pk).first()
        if task is None:
            raise Http404
        return Response(self._represent(task, lines))

    def _represent(self, item, lines: int) -> dict:
        if not hasattr(item, "config"):
            return PredictionTaskSerializer(item).data
        config = item.config or {}
        runtime = item.runtime or {}
        run = getattr(item, "ml_run", None) if hasattr(item, "ml_run") else None
        kind = "training" if config.get("command") else "serving"
        log = workload_log_tail(workload=item, lines=lines) if lines else []
        return {
            "id": str(item.pk), "kind": kind, "type": "ml_model", "name": item.name,
            "model_id": str(run.model_id) if run else config.get("model_id"), "status": item.status,
            "command": config.get("command"), "args": config.get("args", []),
            "node": item.node.node_id if item.node else None,
            "serving": runtime.get("serving"), "exit_code": item.exit_code, "reason": item.reason,
            "log_file": (runtime.get("log_files") or {}).get("stdout"), "log": "\n".join(log),
            "created_at": _iso(item.created_at), "started_at": _iso(item.started_at),
            "finished_at": _iso(item.finished_at),
        }


def _iso(value):
    from rest_framework.fields import DateTimeField

    return DateTimeField().to_representation(value) if value else None
