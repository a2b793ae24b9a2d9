"""The console's quotas: staff set each user's or group's caps; writes go through the services."""

from django.contrib import admin

from cnetsite.admin_site import DeletesThroughService
from nodes.resources import human_bytes, human_cores

from .models import Quota
from .quotas import quota_delete, quota_save


@admin.register(Quota)
class QuotaAdmin(DeletesThroughService, admin.ModelAdmin):
    list_display = ["holder", "cpu", "memory", "gpu_count", "workload_count", "updated_at"]
    list_select_related = ["user", "group"]
    search_fields = ["user__username", "group__name"]
    fields = ["user", "group", "cpu_millicores", "memory_bytes", "gpu_count", "workload_count"]

    # Staff's, whatever Django's model permissions say (the console admits every active user).
    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    has_add_permission = has_change_permission = has_view_permission

    def has_delete_permission(self, request, obj=None):
        return self.has_module_permission(request)

    @admin.display(description="CPU (cores)", ordering="cpu_millicores")
    def cpu(self, quota):
        return "no limit" if quota.cpu_millicores is None else human_cores(quota.cpu_millicores)

    @admin.display(ordering="memory_bytes")
    def memory(self, quota):
        return "no limit" if quota.memory_bytes is None else human_bytes(quota.memory_bytes)

    def save_model(self, request, obj, form, change):
        quota_save(quota=obj)

    def delete_through_service(self, obj) -> None:
        quota_delete(quota=obj)
