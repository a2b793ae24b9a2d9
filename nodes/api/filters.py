import django_filters

from ..models import Node, NodeStatus
from ..selectors import node_filter_labels


class NodeFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=NodeStatus.choices)
    parent = django_filters.CharFilter(field_name="parent__node_id")
    label = django_filters.CharFilter(
        method="filter_label",
        help_text="labels as Kubernetes selects them: key=value (that value) or key (has the label), "
                  "comma separated, all of them: ?label=zone=eu,gpu",
    )

    class Meta:
        model = Node
        fields = ["status", "parent", "label"]

    def filter_label(self, queryset, name, value):
        return node_filter_labels(queryset, selector=value)
