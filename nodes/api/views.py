from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from ..selectors import join_token_for_key, node_get, node_list, node_local
from ..services import join_token_create, node_credential_revoke
from .filters import NodeFilter
from .serializers import JoinTokenCreateSerializer, JoinTokenSerializer, NodeSerializer


class NodeViewSet(viewsets.ReadOnlyModelViewSet):
    """Every registered node with its parent, children and peers (the seed's /api/nodes)."""

    serializer_class = NodeSerializer
    filterset_class = NodeFilter
    lookup_field = "node_id"
    lookup_value_regex = "[^/]+"
    ordering_fields = ["node_id", "status", "last_heartbeat"]
    ordering = ["node_id"]

    def get_queryset(self):
        return node_list()

    @extend_schema(
        request=None,
        responses={200: NodeSerializer, 403: OpenApiResponse(description="staff only"),
                   404: OpenApiResponse(description="no such node")},
        description="Revoke the node's credential (staff): its agent is refused from now on, the node goes "
                    "offline and its work is handled as lost. The agent may join again with a new join token.",
    )
    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser])
    def revoke(self, request, node_id=None):
        node_credential_revoke(node_id=node_id)
        return Response(NodeSerializer(node_list().get(node_id=node_id)).data)

    @extend_schema(
        request=JoinTokenCreateSerializer,
        responses={201: JoinTokenSerializer, 403: OpenApiResponse(description="staff only")},
        description="Make a join token (staff). An agent exchanges it once for a credential of its own node; "
                    "the token is shown only in this answer.",
    )
    @action(detail=False, methods=["post"], url_path="join-tokens", permission_classes=[IsAdminUser],
            filterset_class=None, pagination_class=None)
    def join_tokens(self, request):
        body = JoinTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token = join_token_create(created_by=request.user, **body.validated_data)
        made = join_token_for_key(key=token)
        answer = {"join_token": token, "expires_at": made.expires_at, "uses": made.uses_left}
        return Response(JoinTokenSerializer(answer).data, status=status.HTTP_201_CREATED)


@extend_schema(
    parameters=[OpenApiParameter("node", str, description="node_id (default: the local node)")],
    responses=NodeSerializer,
)
@api_view(["GET"])
def resources(request):
    """The local node's resources (the seed's /api/resources); ``?node=`` for another."""
    name = request.query_params.get("node")
    node = node_get(node_id=name) if name else node_local()
    return Response(NodeSerializer(node_list().get(pk=node.pk)).data)
