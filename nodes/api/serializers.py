from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictFloatField, StrictIntegerField

from ..models import Node
from ..resources import Resources
from ..services import JOIN_TOKEN_MAX_TTL_SECONDS


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


class JoinTokenCreateSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    ttl_seconds = StrictFloatField(allow_null=True, default=3600, min_value=1, max_value=JOIN_TOKEN_MAX_TTL_SECONDS,
                                   help_text="how long it can be used, in seconds; null: never expires")
    uses = StrictIntegerField(allow_null=True, default=1, min_value=1,
                              help_text="how many nodes may join with it; null: unlimited")


class JoinTokenSerializer(serializers.Serializer):
    join_token = serializers.CharField(help_text="shown only this once; give it to the agent that joins")
    expires_at = serializers.DateTimeField(allow_null=True)
    uses = serializers.IntegerField(allow_null=True)
