"""``/api/quotas``: staff set them; anyone reads those that cap them (their own and their groups')."""

from rest_framework import permissions, viewsets

from ..models import Quota
from ..quotas import quota_delete, quota_list, quota_save
from .serializers import QuotaSerializer


class StaffWrites(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or request.user.is_staff


class QuotaViewSet(viewsets.ModelViewSet):
    """Caps on a user's, or each member of a group's, concurrent cpu, memory, gpus and workloads.
    Work beyond its owner's cap waits pending, saying so, until their work ends. Writes are staff's."""

    serializer_class = QuotaSerializer
    permission_classes = [permissions.IsAuthenticated, StaffWrites]
    filterset_class = None
    ordering_fields = ["id"]
    ordering = ["id"]

    def get_queryset(self):
        return quota_list(user=self.request.user)

    def perform_create(self, serializer):
        serializer.instance = quota_save(quota=Quota(**serializer.validated_data))

    def perform_update(self, serializer):
        quota = serializer.instance
        for name, value in serializer.validated_data.items():
            setattr(quota, name, value)
        serializer.instance = quota_save(quota=quota)

    def perform_destroy(self, instance):
        quota_delete(quota=instance)
