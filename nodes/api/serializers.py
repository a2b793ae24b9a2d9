from rest_framework import serializers

from ..models import Node
from ..resources import Resources


class NodeSerializer(serializers.ModelSerializer):
    parent = serializers.CharField(source="parent.node_id", default=None, read_only=True)
    children = serializers.SerializerMethodField()
    peers = serializers.SerializerMethodField()
    capacity = serializers.SerializerMethodField()
    allocated = serializers.SerializerMethodField()
    free = serializers.SerializerMethodField()

    class Meta:
        model = Node
        fields = [
            "node_id", "address", "port", "status", "parent", "children", "peers", "labels",
            "capacity", "allocated", "free", "usage", "capabilities", "last_heartbeat",
        ]
        read_only_fields = fields

    def get_children(self, node: Node) -> list[str]:
        return sorted(child.node_id for child in node.children.all())

    def get_peers(self, node: Node) -> list[str]:
        return sorted(peer.node_id for peer in node.peers.all())

    def get_capacity(self, node: Node) -> dict:
        return Resources(**node.capacity()).to_api()

    def get_allocated(self, node: Node) -> dict:
        return Resources(**node.allocated()).to_api()

    def get_free(self, node: Node) -> dict:
        return Resources(**node.free()).to_api()
