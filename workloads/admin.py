from django.contrib import admin, messages

from cnetsite.errors import DomainError

from .models import Workload, WorkloadEvent, WorkloadLog
from .selectors import workload_list
from .services import workload_stop


class WorkloadEventInline(admin.TabularInline):
    model = WorkloadEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "from_status", "to_status", "node_id", "reason"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Workload)
class WorkloadAdmin(admin.ModelAdmin):
    list_display = ["name", "type", "status", "node", "priority", "owner", "exit_code", "created_at"]
    list_filter = ["status", "type", "node", "strategy"]
    search_fields = ["id", "name", "reason", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["node", "owner"]
    readonly_fields = [f.name for f in Workload._meta.fields]
    inlines = [WorkloadEventInline]
    actions = ["stop"]

    def get_queryset(self, request):
        return workload_list(user=request.user)

    def has_add_permission(self, request):
        return False  # submit through the API (the form arrives with the Web UI)

    @admin.action(description="Stop selected workloads")
    def stop(self, request, queryset):
        for workload in queryset:
            try:
                workload_stop(workload=workload, reason=f"stopped by {request.user} in the admin")
            except DomainError as error:
                self.message_user(request, f"{workload.name}: {error}", messages.WARNING)


@admin.register(WorkloadLog)
class WorkloadLogAdmin(admin.ModelAdmin):
    list_display = ["workload", "seq", "stream", "created_at"]
    list_filter = ["stream"]
    search_fields = ["workload__id", "text"]
    readonly_fields = ["workload", "seq", "stream", "text", "created_at"]
