"""The node API (``/api/node/``): what an agent asks of the control plane, with its node's credential.

Each request acts for ``request.auth``, the node its credential belongs to, and never names
another: a heartbeat, the work it fetches, its reports and its logs are its own node's, and a
body about another node's workloads is refused whole (403). The broker only rings; what to run
comes from here. Views only shape: each calls one service or selector.
"""

import json
from uuid import UUID

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import DomainError
from nodes.authentication import HeartbeatCredentialAuthentication, IsNode, NodeCredentialAuthentication
from nodes.heartbeats import heartbeat_timing_now
from nodes.services import node_join

from ..membership import heartbeat_timing, node_drain_own, node_heartbeat_record, node_leave_own, node_register_own
from ..reports import workload_logs_store, workload_reports_apply
from ..selectors import node_work_lists
from . import schema  # noqa: F401 - documents the node credential in the schema
from .admission import registration_slots
from .serializers import (
    MAX_ANSWER_SECONDS,
    MAX_RUNNING,
    DrainAnswerSerializer,
    DrainSerializer,
    HeartbeatAnswerSerializer,
    HeartbeatSerializer,
    JoinAnswerSerializer,
    JoinSerializer,
    LeaveAnswerSerializer,
    LeaveSerializer,
    LogsAnswerSerializer,
    LogsSerializer,
    RegisterAnswerSerializer,
    RegisterSerializer,
    ReportsAnswerSerializer,
    ReportsSerializer,
    WorkAnswerSerializer,
    WorkQuerySerializer,
    WorkSerializer,
)

TAGS = ["node API"]
REFUSED = {
    400: OpenApiResponse(description="bad shape; the answer names the field, and nothing was applied"),
    401: OpenApiResponse(description="no node credential, or an unknown or revoked one: join again"),
    403: OpenApiResponse(description="about another node, or not a node credential; nothing was applied"),
}


class NodeView(APIView):
    """A node API endpoint: only a node credential gets in, and it acts for its own node."""

    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNode]

    def body(self, serializer_class) -> dict:
        body = serializer_class(data=self.request.data)
        body.is_valid(raise_exception=True)
        return body.validated_data


BUSY = {503: OpenApiResponse(description="other nodes are registering: come back after Retry-After seconds, "
                                         "the appointment this refusal hands out")}


class JoinView(NodeView):
    """Exchange a join token for this node's credential (once per node)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=TAGS, auth=[], request=JoinSerializer,
        responses={201: JoinAnswerSerializer, 400: REFUSED[400],
                   403: OpenApiResponse(description="the join token is unknown, expired, revoked or used up"),
                   409: OpenApiResponse(description="the node already holds a credential: staff revoke it first"),
                   **BUSY},
    )
    def post(self, request):
        body = self.body(JoinSerializer)
        with registration_slots.slot():
            credential = node_join(token=body["join_token"], node_id=body["node_id"])
        return Response({"node_id": body["node_id"], "credential": credential}, status=status.HTTP_201_CREATED)


class RegisterView(NodeView):
    """Register (or update) this node: its address, size, links and capabilities. Bumps its epoch."""

    @extend_schema(tags=TAGS, request=RegisterSerializer, responses={200: RegisterAnswerSerializer, **REFUSED, **BUSY})
    def post(self, request):
        body = self.body(RegisterSerializer)
        with registration_slots.slot():
            timing = heartbeat_timing_now()
            node = node_register_own(node=request.auth, timing=timing, **body)
        return Response({"node_id": node.node_id, "epoch": node.agent_epoch, "status": node.status,
                         "server_time": timezone.now(), **heartbeat_timing(timing)})


class HeartbeatView(NodeView):
    """Beat: measured usage and the workloads the agent runs in; the node's status, when to beat
    next, what to kill, what a user asked to stop, and the work to start out.

    Its credential's node is looked up once per process (the beat's write re-checks the
    credential), and a plain beat skips DRF's request handling (``quick``): at 10,000 nodes beats
    are most of what the control plane answers, and DRF's parsing, negotiation and serializer
    cost about as much as the beat's two statements. Anything else goes the full way."""

    authentication_classes = [HeartbeatCredentialAuthentication]

    @extend_schema(
        tags=TAGS, request=HeartbeatSerializer,
        responses={200: HeartbeatAnswerSerializer, **REFUSED,
                   409: OpenApiResponse(description="a stale epoch: another agent registered since; register again")},
    )
    def post(self, request):
        return Response(self.answer(request, **self.body(HeartbeatSerializer)))

    def dispatch(self, request, *args, **kwargs):
        answer = self.quick(request)
        return answer if answer is not None else super().dispatch(request, *args, **kwargs)

    def quick(self, request) -> HttpResponse | None:
        """The answer to a beat with a known credential and a body HeartbeatSerializer would take
        as it is (epoch, usage, running as UUID strings), or its refusal as the exception handler
        words it; None for anything else, which the full way then answers."""
        if request.method != "POST" or request.content_type != "application/json":
            return None
        try:
            body = json.loads(request.body, parse_constant=_not_json)
            epoch, usage, running = body["epoch"], body.get("usage", {}), body.get("running", [])
            answer_seconds = body.get("previous_answer_seconds")
            if not (type(epoch) is int and epoch >= 1 and type(usage) is dict and type(running) is list
                    and len(running) <= MAX_RUNNING and set(body) <= QUICK_FIELDS
                    and (answer_seconds is None
                         or (type(answer_seconds) in (int, float) and 0 <= answer_seconds <= MAX_ANSWER_SECONDS))):
                return None
            running = [UUID(hex=pk) for pk in running]
            authenticated = HeartbeatCredentialAuthentication().authenticate(request)
        except (ValueError, TypeError, KeyError, AttributeError, AuthenticationFailed):
            return None
        if authenticated is None:
            return None
        request.user, request.auth = authenticated
        try:
            answer, status_code = self.answer(request, epoch=epoch, usage=usage, running=running,
                                              previous_answer_seconds=answer_seconds), 200
        except DomainError as error:  # a stale epoch, a credential revoked since its lookup
            answer, status_code = error.as_dict(), error.status
        return HttpResponse(JSONRenderer().render(answer), content_type="application/json", status=status_code)

    @staticmethod
    def answer(request, **beat) -> dict:
        beat = node_heartbeat_record(node=request.auth, credential_hash=request.user.credential_hash, **beat)
        return {"status": beat.status, "server_time": beat.at, "kill": beat.kill, "stop": beat.stop,
                # Most beats start nothing: no serializer is built for them.
                "work": WorkSerializer(beat.work, many=True).data if beat.work else [], "more_work": beat.more_work,
                **heartbeat_timing(beat.timing)}


QUICK_FIELDS = frozenset(HeartbeatSerializer().fields)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")  # NaN, Infinity: DRF's parser refuses them too


class WorkView(NodeView):
    """The workloads placed on this node, with what starting them takes. Reads only: ask any time."""

    @extend_schema(tags=TAGS, parameters=[WorkQuerySerializer],
                   responses={200: WorkAnswerSerializer, 400: REFUSED[400], 401: REFUSED[401], 403: REFUSED[403]})
    def get(self, request):
        query = WorkQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        answer = node_work_lists(node_pk=request.auth.pk, **query.validated_data)
        return Response(WorkAnswerSerializer(answer).data)


class ReportsView(NodeView):
    """A batch of transitions the agent saw (started, exited with a code, lost), applied in order."""

    @extend_schema(tags=TAGS, request=ReportsSerializer, responses={200: ReportsAnswerSerializer, **REFUSED})
    def post(self, request):
        results = workload_reports_apply(node=request.auth, reports=self.body(ReportsSerializer)["reports"])
        return Response({"results": results})


class LogsView(NodeView):
    """A batch of numbered output chunks; a retried batch stores nothing twice and leaves no gap."""

    @extend_schema(tags=TAGS, request=LogsSerializer, responses={200: LogsAnswerSerializer, **REFUSED})
    def post(self, request):
        stored = workload_logs_store(node=request.auth, chunks=self.body(LogsSerializer)["chunks"])
        return Response({"stored": stored})


class DrainView(NodeView):
    """The agent is shutting down: no new work here; hand back what has not started; say what to end."""

    @extend_schema(tags=TAGS, request=DrainSerializer,
                   responses={200: DrainAnswerSerializer, **REFUSED,
                              409: OpenApiResponse(description="a stale epoch: another agent registered since")})
    def post(self, request):
        return Response({"end": node_drain_own(node=request.auth, **self.body(DrainSerializer))})


class LeaveView(NodeView):
    """The agent has stopped: the node goes offline now, not when liveness notices."""

    @extend_schema(tags=TAGS, request=LeaveSerializer, responses={200: LeaveAnswerSerializer, **REFUSED})
    def post(self, request):
        return Response({"status": node_leave_own(node=request.auth, **self.body(LeaveSerializer))})
