from django.http import Http404, HttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response

from workloads.api.serializers import LogQuerySerializer

from ..models import ModelVersion, RunKind, VersionSource
from ..selectors import (
    ml_task_get,
    ml_task_page,
    model_for_predict,
    model_list,
    model_serving_runs,
    model_training_log,
    model_version_artifact,
    model_version_get,
    model_version_list,
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
from .filters import MLModelFilter
from .serializers import (
    DeploySerializer,
    MLModelSerializer,
    MLWorkloadTaskSerializer,
    PredictionTaskSerializer,
    PredictSerializer,
    ServeSerializer,
    ServingRunSerializer,
    TaskListQuerySerializer,
    TaskQuerySerializer,
    TaskSerializer,
    TrainingLogSerializer,
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
    filterset_class = MLModelFilter

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
        code, answer = model_predict(model=model, owner=request.user, **body.validated_data)
        return Response(answer, status=code)

    @extend_schema(parameters=[OpenApiParameter("lines", int, description="last N lines (default all)")],
                   responses=TrainingLogSerializer)
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        log = model_training_log(model=self.get_object(), lines=query.validated_data.get("lines"))
        return Response(TrainingLogSerializer(log).data)

    @extend_schema(request=ServeSerializer, responses={201: ServingRunSerializer})
    @action(detail=True, methods=["post", "get", "delete"])
    def serve(self, request, pk=None):
        """POST: start a model server (promoted version by default); GET: list servers; DELETE: stop them."""
        model = self.get_object()
        if request.method == "GET":
            return Response(ServingRunSerializer(model_serving_runs(model=model)[:100], many=True).data)
        if request.method == "DELETE":
            return Response({"stopped": model_stop(model=model, kinds=(RunKind.SERVING,))})
        body = ServeSerializer(data=request.data, context={"model": model})
        body.is_valid(raise_exception=True)
        run = model_serve(model=model, **body.validated_data)
        return Response(ServingRunSerializer(run).data, status=status.HTTP_201_CREATED)

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
            model_version_promote(model=model, version=version)
        # Read back: the first version of a model is promoted by the service on its own.
        return Response(VersionSerializer(model_version_get(model=model, version_id=version.pk)).data,
                        status=status.HTTP_201_CREATED)

    def _version(self, model, version_id) -> ModelVersion:
        version = model_version_get(model=model, version_id=version_id)
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
        row = model_version_artifact(model=self.get_object(), version_id=version_id)
        if row is None:
            raise Http404
        response = HttpResponse(bytes(row["artifact"]), content_type="application/octet-stream")
        response["Content-Disposition"] = content_disposition_header(True, row["filename"])
        response["X-Checksum-SHA256"] = row["checksum"]
        return response


def _task_schema(many: bool = False) -> PolymorphicProxySerializer:
    return PolymorphicProxySerializer(component_name="Task", resource_type_field_name=None, many=many,
                                      serializers=[MLWorkloadTaskSerializer, PredictionTaskSerializer])


class TaskViewSet(viewsets.ViewSet):
    """The seed's /api/tasks: ML training runs, model servers and prediction tasks, as one plain array
    (newest first; ``X-Total-Count`` counts them all), each with its ``log_file`` (on its node) and
    ``log`` (its last ``lines`` lines, from the database)."""

    lookup_value_regex = UUID

    @extend_schema(parameters=[TaskListQuerySerializer], responses=_task_schema(many=True))
    def list(self, request):
        query = TaskListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = ml_task_page(user=request.user, **query.validated_data)
        return Response(TaskSerializer(page.items, many=True, context={"logs": page.logs}).data,
                        headers={"X-Total-Count": str(page.total)})

    @extend_schema(parameters=[TaskQuerySerializer], responses=_task_schema())
    def retrieve(self, request, pk=None):
        query = TaskQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = ml_task_get(user=request.user, task_id=pk, **query.validated_data)
        if not page.items:
            raise Http404
        return Response(TaskSerializer(page.items[0], context={"logs": page.logs}).data)
