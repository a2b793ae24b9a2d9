import django_filters

from ..kinds import kind_choices
from ..models import Workload, WorkloadStatus


class WorkloadFilter(django_filters.FilterSet):
    # One column, so no row can match twice: DISTINCT (the default) would sort every match.
    status = django_filters.MultipleChoiceFilter(choices=WorkloadStatus.choices, distinct=False)
    type = django_filters.ChoiceFilter(choices=kind_choices)  # read per request: every registered kind
    node = django_filters.CharFilter(field_name="node__node_id")
    name = django_filters.CharFilter(lookup_expr="icontains")
    array = django_filters.UUIDFilter(field_name="array_id")
    array_index = django_filters.NumberFilter(field_name="array_index")
    schedule = django_filters.UUIDFilter(field_name="schedule_runs__schedule")

    class Meta:
        model = Workload
        fields = ["status", "type", "node", "name", "array", "array_index", "schedule"]
