from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from ..logs import workload_log_read
from ..models import WorkloadArray
from ..plan import workload_queues
from ..selectors import (
    dependencies_by_array,
    schedule_list,
    schedule_runs,
    workload_array_counts,
    workload_array_list,
    workload_dependencies,
    workload_list,
)
from ..services import (
    schedule_create,
    schedule_delete,
    schedule_pause,
    schedule_resume,
    workload_array_delete,
    workload_array_stop,
    workload_array_submit,
    workload_delete,
    workload_stop,
    workload_submit,
    workloads_submit_graph,
)
from .filters import WorkloadFilter
from .pagination import WorkloadPagination
from .serializers import (
    LogQuerySerializer,
    ScheduleEventSerializer,
    ScheduleRunSerializer,
    ScheduleSerializer,
    ScheduleSubmitSerializer,
    WorkloadArrayEventSerializer,
    WorkloadArraySerializer,
    WorkloadDependenciesSerializer,
    WorkloadEventSerializer,
    WorkloadGraphSerializer,
    WorkloadLogsSerializer,
    WorkloadSerializer,
    WorkloadSubmitSerializer,
)


class WorkloadViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """The seed's /api/workloads: submit, list, inspect, stop, delete, read logs."""

    serializer_class = WorkloadSerializer
    filterset_class = WorkloadFilter
    pagination_class = WorkloadPagination  # limit/offset, and a cursor beside it
    ordering_fields = ["created_at", "priority", "name", "status", "started_at", "finished_at"]
    throttle_actions = {"create": "submissions"}  # core.throttles; the rate is a setting

    @property
    def ordering(self) -> list[str]:
        """Newest first, the id ordering an array's instances submitted at once (as a cursor
        does); one array's instances by index (the ``workload_array_index_once`` index)."""
        request = getattr(self, "request", None)
        if request is not None and request.query_params.get("array"):
            return ["array_index"]
        return ["-created_at", "-id"]

    def get_queryset(self):
        return workload_list(user=self.request.user)

    def paginate_queryset(self, queryset):
        # The page's queue places and estimates in a few queries, not a few per pending row.
        self._page = super().paginate_queryset(queryset)
        return self._page

    def get_serializer_context(self):
        context = super().get_serializer_context()
        page = getattr(self, "_page", None)
        if page is not None:
            context["queue"] = workload_queues(workloads=page)
        return context

    @extend_schema(request=WorkloadSubmitSerializer, responses={201: WorkloadSerializer})
    def create(self, request):
        """One workload (the seed's body); with ``count``, an array; ``{"workloads": [...]}``, a graph;
        with ``schedule``, a schedule (as ``POST /api/schedules``)."""
        if isinstance(request.data, dict) and "workloads" in request.data:
            return self._create_graph(request)
        if isinstance(request.data, dict) and "schedule" in request.data:
            return _create_schedule(request)
        submission = WorkloadSubmitSerializer(data=request.data, context={"request": request})
        submission.is_valid(raise_exception=True)
        if "count" in submission.validated_data:
            array = workload_array_submit(owner=request.user, **submission.validated_data)
            return Response(WorkloadArraySerializer(array).data, status=status.HTTP_201_CREATED)
        workload = workload_submit(owner=request.user, **submission.validated_data)
        return Response(WorkloadSerializer(workload).data, status=status.HTTP_201_CREATED)

    def _create_graph(self, request):
        graph = WorkloadGraphSerializer(data=request.data, context={"request": request})
        graph.is_valid(raise_exception=True)
        items = graph.validated_data["workloads"]
        recorded = workloads_submit_graph(owner=request.user, items=items)
        answers = [_graph_answer(item, result) for item, result in zip(items, recorded, strict=True)]
        return Response({"workloads": answers}, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        workload_delete(workload=instance)

    @extend_schema(request=None, responses=WorkloadSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        workload = workload_stop(workload=self.get_object())
        return Response(WorkloadSerializer(workload).data)

    @extend_schema(parameters=[OpenApiParameter(
        "lines", int, description="last N lines (default: all, up to CNET_LOG_MAX_LINES)")])
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        workload = self.get_object()
        read = workload_log_read(workload=workload, lines=query.validated_data.get("lines"))
        return Response(WorkloadLogsSerializer({"workload_id": workload.pk, "status": workload.status,
                                                "lines": read.lines, "dropped_bytes": read.dropped_bytes}).data)

    @extend_schema(responses=WorkloadEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None, filterset_class=None)
    def events(self, request, pk=None):
        workload = self.get_object()
        return Response(WorkloadEventSerializer(workload.events.all(), many=True).data)

    @extend_schema(responses=WorkloadDependenciesSerializer)
    @action(detail=True, methods=["get"], pagination_class=None, filterset_class=None)
    def dependencies(self, request, pk=None):
        workload = self.get_object()
        return Response(WorkloadDependenciesSerializer(workload_dependencies(workload=workload)).data)


def _create_schedule(request) -> Response:
    submission = ScheduleSubmitSerializer(data=request.data, context={"request": request})
    submission.is_valid(raise_exception=True)
    schedule = schedule_create(owner=request.user, **submission.validated_data)
    return Response(ScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)


def _graph_answer(item: dict, recorded) -> dict:
    if isinstance(recorded, WorkloadArray):
        answer = {"kind": "array", **WorkloadArraySerializer(recorded).data}
    else:
        answer = {"kind": "workload", **WorkloadSerializer(recorded).data}
    return {"key": item.get("key"), **answer}


class WorkloadArrayViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                           viewsets.GenericViewSet):
    """Arrays (``"count": N`` at submit): their instances' counts by status, stop and delete of the
    whole array. One instance is a workload: ``/api/workloads?array=<id>``, and its own endpoints."""

    serializer_class = WorkloadArraySerializer
    filterset_class = None
    ordering_fields = ["created_at", "name", "count"]
    ordering = ["-created_at"]

    def get_queryset(self):
        return workload_array_list(user=self.request.user)

    def get_serializer_context(self):
        # The page's counts and dependencies in one query each, not one per array.
        context = super().get_serializer_context()
        page = getattr(self, "_page", None)
        if page is not None:
            ids = [array.pk for array in page]
            context["counts"] = workload_array_counts(array_ids=ids)
            context["dependencies"] = dependencies_by_array(array_ids=ids)
        return context

    def paginate_queryset(self, queryset):
        self._page = super().paginate_queryset(queryset)
        return self._page

    def perform_destroy(self, instance):
        workload_array_delete(array=instance)

    @extend_schema(request=None, responses=WorkloadArraySerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        array = workload_array_stop(array=self.get_object())
        return Response(WorkloadArraySerializer(array).data)

    @extend_schema(responses=WorkloadArrayEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request, pk=None):
        array = self.get_object()
        return Response(WorkloadArrayEventSerializer(array.events.all(), many=True).data)


class ScheduleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                      viewsets.GenericViewSet):
    """Schedules: a workload submitted at every slot of a cron expression; pause, resume, its runs
    (one per slot: started, skipped, missed or refused) and its events. The workloads it started
    are ``/api/workloads?schedule=<id>``."""

    serializer_class = ScheduleSerializer
    filterset_class = None
    ordering_fields = ["created_at", "name", "next_run_at"]
    ordering = ["-created_at"]

    def get_queryset(self):
        return schedule_list(user=self.request.user)

    @extend_schema(request=ScheduleSubmitSerializer, responses={201: ScheduleSerializer})
    def create(self, request):
        return _create_schedule(request)

    def perform_destroy(self, instance):
        schedule_delete(schedule=instance)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return Response(ScheduleSerializer(schedule_pause(schedule=self.get_object())).data)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return Response(ScheduleSerializer(schedule_resume(schedule=self.get_object())).data)

    @extend_schema(responses=ScheduleRunSerializer(many=True))
    @action(detail=True, methods=["get"])
    def runs(self, request, pk=None):
        page = self.paginate_queryset(schedule_runs(schedule=self.get_object()))
        return self.get_paginated_response(ScheduleRunSerializer(page, many=True).data)

    @extend_schema(responses=ScheduleEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request, pk=None):
        return Response(ScheduleEventSerializer(self.get_object().events.all(), many=True).data)
