"""Quotas as the API shows them: cpu in cores, memory in bytes, gpus and workloads as counts; a
limit left out or null is no limit."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictIntegerField
from nodes.api.fields import BytesField, CoresField
from nodes.resources import MILLICORES_PER_CORE

from ..models import Quota


class CoresLimitField(CoresField):
    def to_representation(self, value):
        return value / MILLICORES_PER_CORE


class QuotaSerializer(NoUnknownFieldsMixin, serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", queryset=get_user_model().objects.all(),
                                        required=False, allow_null=True, help_text="the user it caps (or group)")
    group = serializers.SlugRelatedField(slug_field="name", queryset=Group.objects.all(), required=False,
                                         allow_null=True, help_text="the group each of whose members it caps")
    cpu = CoresLimitField(source="cpu_millicores", required=False, allow_null=True,
                          help_text="cores held at once by scheduled and running work; null: no limit")
    memory = BytesField(source="memory_bytes", required=False, allow_null=True, help_text="bytes; null: no limit")
    gpu = StrictIntegerField(source="gpu_count", required=False, allow_null=True, min_value=0,
                             help_text="GPUs; null: no limit")
    workloads = StrictIntegerField(source="workload_count", required=False, allow_null=True, min_value=0,
                                   max_value=2**31 - 1, help_text="scheduled and running workloads; null: no limit")

    class Meta:
        model = Quota
        fields = ["id", "user", "group", "cpu", "memory", "gpu", "workloads", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs):
        user = attrs.get("user", getattr(self.instance, "user", None))
        group = attrs.get("group", getattr(self.instance, "group", None))
        if (user is None) == (group is None):
            raise serializers.ValidationError({"user": ["name a user or a group, not both"]})
        return attrs
