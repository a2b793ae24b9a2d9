"""``POST /api/workloads/plan``: a submission's dry run (``workloads.plan``)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from ..plan import NEVER, PLACED, WAITS, workload_plan
from .serializers import WorkloadSubmitSerializer


class NodeReasonSerializer(serializers.Serializer):
    node = serializers.CharField()
    fits = serializers.BooleanField()
    reason = serializers.CharField()


class QueuePlaceSerializer(serializers.Serializer):
    priority = serializers.IntegerField()
    position = serializers.IntegerField(help_text="1-based, among pending work of this priority")
    of = serializers.IntegerField(help_text="pending work of this priority, itself included")
    ahead = serializers.IntegerField(help_text="pending work placed before it: of a higher priority, or older")


class NeverFitsSerializer(serializers.Serializer):
    node = serializers.CharField(allow_null=True, help_text="the largest registered node")
    capacity = serializers.DictField(allow_null=True)
    capacity_human = serializers.CharField(required=False)
    short = serializers.ListField(child=serializers.CharField())


class PlanSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=[PLACED, WAITS, NEVER])
    node = serializers.CharField(allow_null=True, help_text="the node a submission now would be placed on")
    summary = serializers.CharField()
    reasons = NodeReasonSerializer(many=True, help_text="as a submission now records them, per node")
    strategy = serializers.CharField()
    submitted_node = serializers.CharField()
    queue = QueuePlaceSerializer(allow_null=True)
    estimated_start = serializers.CharField(
        allow_null=True, help_text="when it waits: ISO time by which running work's time limits make room, "
                                   "or 'unknown'")
    never_fits = NeverFitsSerializer(allow_null=True)


class WorkloadPlanView(APIView):
    """Where a submission of this body would go now, and when: it runs the same placement as
    ``POST /api/workloads``, claims nothing and writes nothing."""

    @extend_schema(request=WorkloadSubmitSerializer, responses=PlanSerializer, operation_id="workloads_plan")
    def post(self, request):
        submission = WorkloadSubmitSerializer(data=request.data, context={"request": request})
        submission.is_valid(raise_exception=True)
        return Response(PlanSerializer(workload_plan(owner=request.user, **submission.validated_data)).data)
