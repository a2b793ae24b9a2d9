"""The node API's ML endpoints (under ``/api/node/ml/``): what an agent with no database asks for
its models, with its node's credential, and only about its own node's work.

- ``POST ml/artifacts`` (multipart: ``workload_id``, ``filename``, ``metrics`` as JSON, ``file``):
  a training run placed on, and running on, this node stores its artifact as a version.
- ``GET ml/versions/<id>`` and ``GET ml/versions/<id>/artifact``: a registry version's facts and
  bytes, while a workload placed here serves it or a prediction task sent here runs it.
- ``POST ml/notes``: a note in the history of a workload placed here.
- ``GET ml/servers/<workload id>/secret``: the secret of the current run of a model server placed
  here (scheduled or running), which the agent hands to that server alone (``mlmodels.serving``).
- ``POST ml/predictions/<id>/claim`` and ``.../result``: run a prediction task sent to this node.

Anything about another node's workloads or tasks is 403, and nothing is written. Views only
shape: each calls one service or selector.
"""

from django.http import HttpResponse
from django.urls import re_path
from django.utils.http import content_disposition_header
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from core.errors import Forbidden
from core.fields import NoUnknownFieldsMixin, StrictCharField, StrictIntegerField
from workloads.nodeapi.views import REFUSED, TAGS, NodeView

from .api.views import UUID  # the pattern the user API matches ids with
from .predictions import prediction_task_answer_from_node, prediction_task_claim_on_node
from .selectors import node_server_secret, node_version
from .services import model_version_store_from_node, workload_note_from_node

NOT_HERE = OpenApiResponse(description="not this node's: the workload or task is another node's, or the version "
                                        "is served or predicted by no workload or task here")


# --- shapes ---------------------------------------------------------------------------------
class ArtifactUploadSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    workload_id = serializers.UUIDField(help_text="the training run (placed on, and running on, this node)")
    filename = StrictCharField(max_length=255)
    metrics = serializers.JSONField(required=False, default=dict, binary=True,
                                    help_text="what the script's evaluate printed, as a JSON object")
    file = serializers.FileField(help_text="the artifact")

    def validate_metrics(self, metrics):
        if not isinstance(metrics, dict):
            raise serializers.ValidationError("must be a JSON object")
        return metrics


class VersionFactsSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    number = serializers.IntegerField()
    checksum = serializers.CharField(help_text="sha256 of the artifact, hex")
    size_bytes = serializers.IntegerField()
    filename = serializers.CharField()
    framework = serializers.CharField()
    model_type = serializers.CharField()


class NoteSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    workload_id = serializers.UUIDField()
    reason = StrictCharField(max_length=4000)


class ServerSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="what the server requires: Authorization: Bearer <secret>")


class ClaimAnswerSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    attempt = serializers.IntegerField(help_text="send it back with the result")
    input_data = serializers.JSONField()
    owner = serializers.CharField(allow_null=True,
                                  help_text="who asked: the prediction runs as that owner's workloads do")
    version = serializers.DictField(help_text="id, number, checksum, filename, size_bytes of the version to run")


class PredictionResultSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    attempt = StrictIntegerField(min_value=1)
    prediction = serializers.JSONField(required=False)
    error = StrictCharField(required=False, max_length=10_000)
    error_status = StrictIntegerField(required=False, min_value=400, max_value=599)
    elapsed_ms = serializers.FloatField(min_value=0)

    def validate(self, data):
        if ("prediction" in data) == ("error" in data):
            raise serializers.ValidationError({"prediction": "give the prediction or an error, not both or neither"})
        if "error" in data and "error_status" not in data:
            raise serializers.ValidationError({"error_status": "required with an error"})
        return data


# --- views ----------------------------------------------------------------------------------
class ArtifactView(NodeView):
    """Store a training run's artifact as its model's next version (once per run)."""

    parser_classes = [MultiPartParser]

    @extend_schema(tags=TAGS, request={"multipart/form-data": ArtifactUploadSerializer},
                   responses={201: VersionFactsSerializer, **REFUSED,
                              409: OpenApiResponse(description="the workload is not running"),
                              413: OpenApiResponse(description="over CNET_ML_MAX_ARTIFACT_BYTES")})
    def post(self, request):
        body = self.body(ArtifactUploadSerializer)
        version = model_version_store_from_node(node=request.auth, workload_id=body["workload_id"],
                                                data=body["file"].read(), filename=body["filename"],
                                                metrics=body["metrics"])
        return Response(VersionFactsSerializer(version).data, status=201)


def _version_here(request, version_id, *, with_artifact: bool = False) -> dict:
    row = node_version(node=request.auth, version_id=version_id, with_artifact=with_artifact)
    if row is None:
        raise Forbidden(f"version {version_id} is served or predicted by nothing placed on node "
                        f"{request.auth.node_id}", field="version_id")
    return row


class VersionView(NodeView):
    """A registry version's facts (to find it in the agent's cache by checksum)."""

    @extend_schema(tags=TAGS, responses={200: VersionFactsSerializer, 401: REFUSED[401], 403: NOT_HERE})
    def get(self, request, version_id):
        return Response(VersionFactsSerializer(_version_here(request, version_id)).data)


class VersionArtifactView(NodeView):
    """A registry version's artifact, its sha256 in ``X-Checksum-SHA256``."""

    @extend_schema(tags=TAGS, responses={(200, "application/octet-stream"): bytes, 401: REFUSED[401], 403: NOT_HERE})
    def get(self, request, version_id):
        row = _version_here(request, version_id, with_artifact=True)
        response = HttpResponse(bytes(row["artifact"]), content_type="application/octet-stream")
        response["Content-Disposition"] = content_disposition_header(True, row["filename"])
        response["X-Checksum-SHA256"] = row["checksum"]
        return response


class NoteView(NodeView):
    """A note in a workload's history (e.g. its evaluation timed out)."""

    @extend_schema(tags=TAGS, request=NoteSerializer, responses={204: None, **REFUSED})
    def post(self, request):
        workload_note_from_node(node=request.auth, **self.body(NoteSerializer))
        return Response(status=204)


class ServerSecretView(NodeView):
    """The secret a model server placed here must require of every request (its current run's)."""

    @extend_schema(tags=TAGS, responses={200: ServerSecretSerializer, 401: REFUSED[401], 403: NOT_HERE})
    def get(self, request, workload_id):
        secret = node_server_secret(node=request.auth, workload_id=workload_id)
        if secret is None:
            raise Forbidden(f"workload {workload_id} is no model server scheduled or running on node "
                            f"{request.auth.node_id}", field="workload_id")
        return Response({"secret": secret})


class PredictionClaimView(NodeView):
    """Take a prediction task sent to this node: its input, the attempt, the version to run."""

    @extend_schema(tags=TAGS, request=None,
                   responses={200: ClaimAnswerSerializer, 401: REFUSED[401], 403: NOT_HERE,
                              409: OpenApiResponse(description="not pending: another attempt has it, or it ended")})
    def post(self, request, task_id):
        return Response(prediction_task_claim_on_node(node=request.auth, task_id=task_id))


class PredictionResultView(NodeView):
    """A claimed task's answer; written only while its attempt is still the running one."""

    @extend_schema(tags=TAGS, request=PredictionResultSerializer,
                   responses={200: OpenApiResponse(description='{"recorded": bool}: false when the sweep gave '
                                                               'the attempt up meanwhile'), **REFUSED})
    def post(self, request, task_id):
        body = self.body(PredictionResultSerializer)
        attempt = body.pop("attempt")
        recorded = prediction_task_answer_from_node(node=request.auth, task_id=task_id, attempt=attempt, outcome=body)
        return Response({"recorded": recorded})


urlpatterns = [
    re_path(r"^ml/artifacts/?$", ArtifactView.as_view(), name="node-ml-artifacts"),
    re_path(rf"^ml/versions/(?P<version_id>{UUID})/?$", VersionView.as_view(), name="node-ml-version"),
    re_path(rf"^ml/versions/(?P<version_id>{UUID})/artifact/?$", VersionArtifactView.as_view(),
            name="node-ml-version-artifact"),
    re_path(r"^ml/notes/?$", NoteView.as_view(), name="node-ml-notes"),
    re_path(rf"^ml/servers/(?P<workload_id>{UUID})/secret/?$", ServerSecretView.as_view(),
            name="node-ml-server-secret"),
    re_path(rf"^ml/predictions/(?P<task_id>{UUID})/claim/?$", PredictionClaimView.as_view(),
            name="node-ml-prediction-claim"),
    re_path(rf"^ml/predictions/(?P<task_id>{UUID})/result/?$", PredictionResultView.as_view(),
            name="node-ml-prediction-result"),
]
