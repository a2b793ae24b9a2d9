import django_filters

from ..models import MLModel


class MLModelFilter(django_filters.FilterSet):
    class Meta:
        model = MLModel
        fields = ["name", "model_type"]
