"""Workloads in the console: list, submit form, a live detail page, stop and delete.

Every console user reaches this page; what they see is ``workload_list(user=...)``, the very
queryset the API serves them, so a non-staff user sees and acts on only their own work.
Writes go through the services the API uses (submit, stop, delete), with its serializer.
"""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from cnetsite.admin_site import DeletesThroughService, OwnedOnly
from core.errors import DomainError
from nodes.models import Node
from nodes.resources import human_bytes, human_cores

from .api.serializers import WorkloadSubmitSerializer
from .forms import WorkloadSubmitForm
from .models import TERMINAL, Workload, WorkloadLog
from .selectors import workload_list
from .services import workload_delete, workload_stop, workload_submit

NODE_CHOICES_SHOWN = 500


@admin.register(Workload)
class WorkloadAdmin(OwnedOnly, DeletesThroughService, admin.ModelAdmin):
    list_display = ["name_link", "status_badge", "type", "node", "requirements", "owner", "exit_code", "created_at"]
    list_display_links = None
    list_filter = ["status", "type", "node", "strategy"]
    search_fields = ["id", "name", "reason", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["node", "owner"]
    list_per_page = 50
    actions = ["stop", "delete_selected"]

    def get_queryset(self, request):
        return workload_list(user=request.user)

    def has_add_permission(self, request):
        return request.user.is_active

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Workloads", **(extra_context or {})})

    @admin.display(description="Name", ordering="name")
    def name_link(self, workload: Workload) -> str:
        url = reverse("admin:workloads_workload_change", args=[workload.pk])
        return format_html('<a class="strong" href="{}">{}</a>', url, workload.name)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, workload: Workload) -> str:
        return format_html('<span class="badge s-{}">{}</span>', workload.status, workload.get_status_display())

    @admin.display(description="Requirements")
    def requirements(self, workload: Workload) -> str:
        gpu = f" · {workload.gpu_count} GPU" if workload.gpu_count else ""
        return f"{human_cores(workload.cpu_millicores)} CPU · {human_bytes(workload.memory_bytes)}{gpu}"

    @admin.action(description="Stop selected workloads")
    def stop(self, request, queryset):
        stopped = 0
        for workload in queryset:
            try:
                workload_stop(workload=workload, reason=f"stopped by {request.user} in the console")
                stopped += 1
            except DomainError as error:
                self.message_user(request, f"{workload.name}: {error}", messages.WARNING)
        if stopped:
            self.message_user(request, f"stop requested for {stopped} workload(s)", messages.SUCCESS)

    def delete_through_service(self, obj):
        workload_delete(workload=obj)  # a live workload is stopped first

    # --- pages of our own ----------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<uuid:object_id>/stop/", view(self.stop_view), name="workloads_workload_stop"),
            path("<uuid:object_id>/live/", view(self.live_view), name="workloads_workload_live"),
            *super().get_urls(),
        ]

    def _visible(self, request, object_id) -> Workload:
        workload = self.get_queryset(request).filter(pk=object_id).first()
        if workload is None:
            raise Http404("no such workload")  # others' work does not exist, as in the API
        return workload

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        nodes = Node.objects.order_by("node_id").values_list("node_id", flat=True)[:NODE_CHOICES_SHOWN]
        form = WorkloadSubmitForm(request.POST or None, node_choices=nodes)
        if request.method == "POST" and form.is_valid():
            workload = self._submit(request, form, form.to_payload())
            if workload is not None:
                self.message_user(request, f"Submitted {workload.name}: {workload.status}"
                                  f"{' on ' + workload.node.node_id if workload.node else ''}", messages.SUCCESS)
                return redirect(reverse("admin:workloads_workload_change", args=[workload.pk]))
        context = self.admin_site.each_context(request) | {
            "title": "Submit a workload", "form": form, "opts": self.opts,
            **_submit_layout(form),
        }
        return TemplateResponse(request, "admin/workloads/workload/submit.html", context)

    @staticmethod
    def _submit(request, form, payload) -> Workload | None:
        """The API's create, step for step: its serializer, then its service."""
        submission = WorkloadSubmitSerializer(data=payload)
        if not submission.is_valid():
            form.add_api_errors(submission.errors)
            return None
        try:
            return workload_submit(owner=request.user, **submission.validated_data)
        except DomainError as error:
            form.add_api_errors(error.as_dict())
            return None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        workload = self._visible(request, object_id)
        context = self.admin_site.each_context(request) | self._detail_context(request, workload) | {
            "title": workload.name, "opts": self.opts,
            "logs_url": reverse("workload-logs", args=[workload.pk]),
            "live_url": reverse("admin:workloads_workload_live", args=[workload.pk]),
            "has_logs": WorkloadLog.objects.filter(workload=workload).exists(),
        }
        return TemplateResponse(request, "admin/workloads/workload/detail.html", context)

    def _detail_context(self, request, workload: Workload) -> dict:
        return {
            "workload": workload,
            "events": workload.events.all(),
            "terminal": workload.status in TERMINAL,
            "can_delete": self.has_delete_permission(request, workload),
        }

    def live_view(self, request, object_id):
        """What the detail page refreshes while the workload lives: header, facts, timeline."""
        workload = self._visible(request, object_id)
        context = self._detail_context(request, workload)
        return JsonResponse({
            "status": workload.status,
            "terminal": context["terminal"],
            "events": len(context["events"]),
            "head": render_to_string("admin/workloads/workload/_head.html", context, request=request),
            "facts": render_to_string("admin/workloads/workload/_facts.html", context, request=request),
            "timeline": render_to_string("admin/workloads/workload/_timeline.html", context, request=request),
        })

    def stop_view(self, request, object_id):
        """GET asks to confirm; POST stops it through the service, as POST /api/workloads/{id}/stop does."""
        workload = self._visible(request, object_id)
        detail = reverse("admin:workloads_workload_change", args=[workload.pk])
        if request.method == "POST":
            try:
                workload = workload_stop(workload=workload, reason=f"stopped by {request.user} in the console")
                self.message_user(request, f"Stop requested for {workload.name} ({workload.status})", messages.SUCCESS)
            except DomainError as error:
                self.message_user(request, f"{workload.name}: {error}", messages.WARNING)
            return redirect(detail)
        context = self.admin_site.each_context(request) | {
            "title": f"Stop {workload.name}?", "workload": workload, "opts": self.opts, "detail_url": detail,
        }
        return TemplateResponse(request, "admin/workloads/workload/stop_confirmation.html", context)


def _submit_layout(form: WorkloadSubmitForm) -> dict:
    """The form's fields in sections; each run field says which kinds show it (from the kind registry)."""
    return {
        "run_fields": [(form[name], " ".join(shown_by)) for name, shown_by in form.run_fields.items()],
        "resource_fields": [form[name] for name in ("cpu", "memory", "gpu", "storage")],
        "more_fields": [form[name] for name in ("node", "strategy", "priority", "restart_policy", "max_restarts",
                                                "max_runtime_seconds")],
    }


@admin.register(WorkloadLog)
class WorkloadLogAdmin(admin.ModelAdmin):
    list_display = ["workload", "seq", "stream", "created_at"]
    list_filter = ["stream"]
    search_fields = ["workload__id", "text"]
    readonly_fields = ["workload", "seq", "stream", "text", "created_at"]
