from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from ..selectors import workload_list, workload_log_tail
from ..services import workload_delete, workload_stop, workload_submit
from .filters import WorkloadFilter
from .serializers import (
    LogQuerySerializer,
    WorkloadEventSerializer,
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
    ordering_fields = ["created_at", "priority", "name", "status", "started_at", "finished_at"]
    ordering = ["-created_at"]

    def get_queryset(self):
        return workload_list(user=self.request.user)

    @extend_schema(request=WorkloadSubmitSerializer, responses={201: WorkloadSerializer})
    def create(self, request):
        submission = WorkloadSubmitSerializer(data=request.data)
        submission.is_valid(raise_exception=True)
        workload = workload_submit(owner=request.user, **submission.validated_data)
        return Response(WorkloadSerializer(workload).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        workload_delete(workload=instance)

    @extend_schema(request=None, responses=WorkloadSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        workload = workload_stop(workload=self.get_object())
        return Response(WorkloadSerializer(workload).data)

    @extend_schema(parameters=[OpenApiParameter("lines", int, description="last N lines (default all)")])
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        workload = self.get_object()
        lines = workload_log_tail(workload=workload, lines=query.validated_data.get("lines"))
        return Response(WorkloadLogsSerializer({"workload_id": workload.pk, "status": workload.status,
                                                "lines": lines}).data)

    @extend_schema(responses=WorkloadEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None, filterset_class=None)
    def events(self, request, pk=None):
        workload = self.get_object()
        return Response(WorkloadEventSerializer(workload.events.all(), many=True).data)
