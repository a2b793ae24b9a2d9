import django_filters

from ..models import Node, NodeStatus


class NodeFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=NodeStatus.choices)
    parent = django_filters.CharFilter(field_name="parent__node_id")

    class Meta:
        model = Node
        fields = ["status", "parent"]
