from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.response import Response

from ..selectors import node_get, node_list, node_local
from .filters import NodeFilter
from .serializers import NodeSerializer


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
    parameters=[OpenApiParameter("node", str, description="node_id (default: the local node)")],
    responses=NodeSerializer,
)
@api_view(["GET"])
def resources(request):
    """The local node's resources (the seed's /api/resources); ``?node=`` for another."""
    name = request.query_params.get("node")
    node = node_get(node_id=name) if name else node_local()
    return Response(NodeSerializer(node_list().get(pk=node.pk)).data)

