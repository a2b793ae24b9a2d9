from django.contrib import admin, messages

from .models import Node
from .services import node_set_schedulable


def _pct(used: int, total: int) -> str:
    return f"{used * 100 // total}%" if total else "–"


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["node_id", "status", "endpoint", "parent", "cpu", "memory", "gpu", "last_heartbeat"]
    list_filter = ["status"]
    search_fields = ["node_id", "address", "labels"]
    readonly_fields = [f.name for f in Node._meta.fields if f.name not in {"labels"}]
    filter_horizontal = ["peers"]
    actions = ["drain", "make_schedulable"]

    @admin.display(description="CPU used")
    def cpu(self, node: Node) -> str:
        used, total = node.cpu_allocated_millicores, node.cpu_millicores
        return f"{used / 1000:g}/{total / 1000:g} ({_pct(used, total)})"

    @admin.display(description="Memory used")
    def memory(self, node: Node) -> str:
        return _pct(node.memory_allocated_bytes, node.memory_bytes)

    @admin.display(description="GPU used")
    def gpu(self, node: Node) -> str:
        return f"{node.gpu_allocated}/{node.gpu_count}"

    @admin.action(description="Drain: take no new work")
    def drain(self, request, queryset):
        changed = sum(node_set_schedulable(node_id=n.node_id, schedulable=False) for n in queryset)
        self.message_user(request, f"{changed} node(s) draining", messages.SUCCESS)

    @admin.action(description="Make schedulable again")
    def make_schedulable(self, request, queryset):
        changed = sum(node_set_schedulable(node_id=n.node_id, schedulable=True) for n in queryset)
        self.message_user(request, f"{changed} node(s) schedulable", messages.SUCCESS)
