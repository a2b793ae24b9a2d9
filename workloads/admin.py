"""Workloads in the console: list, submit form, a live detail page, stop and delete.

Every console user reaches this page; what they see is ``workload_list(user=...)``, the very
queryset the API serves them, so a non-staff user sees and acts on only their own work.
Writes go through the services the API uses (submit, stop, delete), with its serializer.
"""

import uuid

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from cnetsite.admin_site import DeletesThroughService, OwnedOnly
from core.errors import DomainError
from nodes.models import Node
from nodes.resources import human_bytes, human_cores
from scheduler.strategies import STRATEGIES

from .api.serializers import WorkloadSubmitSerializer
from .console import array_progress, dependency_graph_drawing, workload_queue_facts
from .forms import WorkloadSubmitForm
from .kinds import kind_choices
from .models import TERMINAL, Schedule, Workload, WorkloadLog
from .selectors import (
    dependency_linked,
    dependency_list,
    schedule_list,
    schedule_next_runs,
    schedule_runs,
    schedule_workload,
    workload_array_list,
    workload_count_matching,
    workload_list,
    workload_list_row_count,
)
from .services import (
    schedule_delete,
    schedule_pause,
    schedule_resume,
    workload_array_stop,
    workload_delete,
    workload_stop,
    workload_submit,
)

NODE_CHOICES_SHOWN = 500
# An array's page lists its instances this many at a time; a schedule's page its latest runs.
INSTANCES_PER_PAGE = 100
# A filtered or searched list counts at most this many rows (50 a page: 20 pages); a search
# matching a tenth of a million rows would otherwise cost a count of 100,000.
COUNT_CAP = 1000
RUNS_SHOWN = 50


class KindListFilter(admin.SimpleListFilter):
    """The registered kinds (a filter of every value in the column would read every row)."""

    title, parameter_name = "type", "type__exact"

    def lookups(self, request, model_admin):
        return kind_choices()

    def queryset(self, request, queryset):
        return queryset.filter(type=self.value()) if self.value() else queryset


class StrategyListFilter(admin.SimpleListFilter):
    """The registered strategies, likewise."""

    title, parameter_name = "strategy", "strategy__exact"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(STRATEGIES)]

    def queryset(self, request, queryset):
        return queryset.filter(strategy=self.value()) if self.value() else queryset


class CountedPaginator(Paginator):
    """Takes the count a list already knows (``row_count`` on its queryset) instead of counting a
    table of a million rows for every page."""

    @cached_property
    def count(self) -> int:
        known = getattr(self.object_list, "row_count", None)
        return known if known is not None else super().count


class ArraysAsOneRow(ChangeList):
    """The workload list with each array as one row (its instance 0 stands for it, on the
    ``workload_list_rows`` index) carrying the array's progress, read for the page in one query.
    A filter or a search lists matching instances one by one."""

    def get_queryset(self, request, exclude_parameters=None):
        rows = super().get_queryset(request, exclude_parameters)
        filters = {key: value[-1] if isinstance(value, list) else value
                   for key, value in self.get_filters_params().items()}
        if not (self.has_active_filters or self.query):
            rows = rows.filter(Q(array__isnull=True) | Q(array_index=0))
            rows.row_count = workload_list_row_count(user=request.user)
        elif not self.query and set(filters) <= {"status__exact", "type__exact"}:
            rows.row_count = workload_count_matching(user=request.user, type=filters.get("type__exact"),
                                                     statuses=[filters["status__exact"]] if "status__exact" in filters
                                                     else [])
        else:  # counted, but no further than the pages anyone reads
            rows.row_count = rows.order_by()[:COUNT_CAP].count()
        return rows

    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        progress = array_progress(array_ids=list({w.array_id for w in self.result_list if w.array_id}))
        collapsed = not (self.has_active_filters or self.query)
        for workload in self.result_list:
            workload.array_progress = progress.get(workload.array_id) if collapsed else None


@admin.register(Workload)
class WorkloadAdmin(OwnedOnly, DeletesThroughService, admin.ModelAdmin):
    list_display = ["name_link", "status_badge", "progress", "type", "node", "requirements", "owner", "exit_code",
                    "created_at"]
    list_display_links = None
    list_filter = ["status", KindListFilter, "node", StrategyListFilter]
    # Searched by get_search_results: name (a trigram index), owner, or the id.
    search_fields = ["name"]
    list_select_related = ["node", "owner"]
    list_per_page = 50
    paginator = CountedPaginator
    show_full_result_count = False  # "of N in all" would count the whole table again
    actions = ["stop", "delete_selected"]

    def get_queryset(self, request):
        return workload_list(user=request.user)

    def has_add_permission(self, request):
        return request.user.is_active

    def get_search_results(self, request, queryset, search_term):
        """A name containing the term, an owner of that name, or the workload of that id; each an
        index lookup (a search through reasons would read every row of a million)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        matches = Q(name__icontains=term)
        # The owner looked up first: an OR over a subquery would hide the name index from the planner.
        owner = get_user_model().objects.filter(username__iexact=term).values_list("pk", flat=True).first()
        if owner is not None:
            matches |= Q(owner_id=owner)
        try:
            matches |= Q(pk=uuid.UUID(term))
        except ValueError:
            pass
        return queryset.filter(matches), False

    def get_changelist(self, request, **kwargs):
        return ArraysAsOneRow

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Workloads", **(extra_context or {})})

    @admin.display(description="Name", ordering="name")
    def name_link(self, workload: Workload) -> str:
        if getattr(workload, "array_progress", None):
            url = reverse("admin:workloads_workload_array", args=[workload.array_id])
            name = workload.name.rsplit("-", 1)[0]
            return format_html('<a class="strong" href="{}">{}</a> <span class="muted">[{}] array</span>', url, name,
                               workload.array_progress.total)
        url = reverse("admin:workloads_workload_change", args=[workload.pk])
        return format_html('<a class="strong" href="{}">{}</a>', url, workload.name)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, workload: Workload) -> str:
        if bar := getattr(workload, "array_progress", None):
            return format_html('<span class="badge s-{}">{}</span>', bar.status, bar.status.capitalize())
        return format_html('<span class="badge s-{}">{}</span>', workload.status, workload.get_status_display())

    @admin.display(description="Progress")
    def progress(self, workload: Workload) -> str:
        bar = getattr(workload, "array_progress", None)
        if bar is None:
            return ""
        return render_to_string("admin/workloads/workload/_progress.html", {"progress": bar, "compact": True})

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
            path("arrays/<uuid:array_id>/", view(self.array_view), name="workloads_workload_array"),
            path("graph/<str:kind>/<uuid:object_id>/", view(self.graph_view), name="workloads_workload_graph"),
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
        submission = WorkloadSubmitSerializer(data=payload, context={"request": request})
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
            "graph_url": _graph_url(workload, workload.array_id),
            "queue": workload_queue_facts(workload=workload),
        }

    def array_view(self, request, array_id):
        """An array: its progress, what it waits on, its placement batches, its instances by
        index (paged); POST stops it through the service, as POST /api/arrays/{id}/stop does."""
        array = workload_array_list(user=request.user).filter(pk=array_id).first()
        if array is None:
            raise Http404("no such array")
        here = reverse("admin:workloads_workload_array", args=[array.pk])
        if request.method == "POST":
            try:
                workload_array_stop(array=array, reason=f"stopped by {request.user} in the console")
                self.message_user(request, f"Stop requested for the array {array.name}", messages.SUCCESS)
            except DomainError as error:
                self.message_user(request, f"{array.name}: {error}", messages.WARNING)
            return redirect(here)
        progress = array_progress(array_ids=[array.pk])[array.pk]
        instances = Paginator(Workload.objects.filter(array=array).select_related("owner").order_by("array_index"),
                              INSTANCES_PER_PAGE).get_page(request.GET.get("page"))
        context = self.admin_site.each_context(request) | {
            "title": f"{array.name} [{array.count}]", "opts": self.opts, "array": array, "progress": progress,
            "depends_on": dependency_list(array_ids=[array.pk]), "events": array.events.order_by("-id")[:20],
            "instances": instances, "terminal": progress.ended == progress.total,
            "graph_url": _graph_url(None, array.pk),
        }
        return TemplateResponse(request, "admin/workloads/workload/array.html", context)

    def graph_view(self, request, kind, object_id):
        """The dependency graph around a workload (``w``) or an array (``a``), drawn as SVG."""
        visible = workload_list(user=request.user) if kind == "w" else workload_array_list(user=request.user)
        if kind not in ("w", "a") or not visible.filter(pk=object_id).exists():
            raise Http404("no such workload")
        drawing = dependency_graph_drawing(**{"workload_id" if kind == "w" else "array_id": object_id})
        context = self.admin_site.each_context(request) | drawing | {"title": "Dependency graph", "opts": self.opts}
        return TemplateResponse(request, "admin/workloads/workload/graph.html", context)

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


def _graph_url(workload: Workload | None, array_id) -> str | None:
    """Where the dependency graph around a workload (or its array) is drawn, if it is in one."""
    if array_id:
        linked = dependency_linked(array_id=array_id)
        return reverse("admin:workloads_workload_graph", args=["a", array_id]) if linked else None
    linked = dependency_linked(workload_id=workload.pk)
    return reverse("admin:workloads_workload_graph", args=["w", workload.pk]) if linked else None


@admin.register(Schedule)
class ScheduleAdmin(OwnedOnly, DeletesThroughService, admin.ModelAdmin):
    """Schedules: when each runs next, its latest run, pause and resume; what a user sees is
    ``schedule_list(user=...)``, the API's queryset."""

    list_display = ["name_link", "cron", "timezone", "concurrency_policy", "state", "next_run", "last_run"]
    list_display_links = None
    search_fields = ["name", "cron"]
    list_per_page = 50

    def get_queryset(self, request):
        return schedule_list(user=request.user)

    def has_add_permission(self, request):
        return False  # created through the API (POST /api/schedules) or the cnet command line

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Schedules", **(extra_context or {})})

    @admin.display(description="Name", ordering="name")
    def name_link(self, schedule: Schedule) -> str:
        url = reverse("admin:workloads_schedule_change", args=[schedule.pk])
        return format_html('<a class="strong" href="{}">{}</a>', url, schedule.name)

    @admin.display(description="State")
    def state(self, schedule: Schedule) -> str:
        paused = schedule.paused_at is not None
        return format_html('<span class="badge s-{}">{}</span>', "stopped" if paused else "running",
                           "paused" if paused else "active")

    @admin.display(description="Next run (UTC)", ordering="next_run_at")
    def next_run(self, schedule: Schedule) -> str:
        return "–" if schedule.paused_at else f"{schedule.next_run_at:%Y-%m-%d %H:%M}"

    @admin.display(description="Last run")
    def last_run(self, schedule: Schedule) -> str:
        if schedule.last_slot is None:
            return "–"
        return f"{schedule.last_slot:%Y-%m-%d %H:%M} {schedule.last_outcome}"

    def delete_through_service(self, obj):
        schedule_delete(schedule=obj)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [path("<uuid:object_id>/pause-resume/", view(self.pause_resume_view),
                     name="workloads_schedule_pause_resume"), *super().get_urls()]

    def _visible(self, request, object_id) -> Schedule:
        schedule = self.get_queryset(request).filter(pk=object_id).first()
        if schedule is None:
            raise Http404("no such schedule")
        return schedule

    def change_view(self, request, object_id, form_url="", extra_context=None):
        schedule = self._visible(request, object_id)
        context = self.admin_site.each_context(request) | {
            "title": schedule.name, "opts": self.opts, "schedule": schedule,
            "next_runs": schedule_next_runs(schedule=schedule), "runs": schedule_runs(schedule=schedule)[:RUNS_SHOWN],
            "events": schedule.events.order_by("-id")[:20], "template": schedule_workload(schedule=schedule),
            "can_delete": self.has_delete_permission(request, schedule),
        }
        return TemplateResponse(request, "admin/workloads/schedule/detail.html", context)

    def pause_resume_view(self, request, object_id):
        """POST pauses a live schedule or resumes a paused one, through the services the API uses."""
        schedule = self._visible(request, object_id)
        detail = reverse("admin:workloads_schedule_change", args=[schedule.pk])
        if request.method == "POST":
            change = schedule_resume if schedule.paused_at else schedule_pause
            verb = "resumed" if schedule.paused_at else "paused"
            try:
                change(schedule=schedule, reason=f"{verb} by {request.user} in the console")
                self.message_user(request, f"{schedule.name} {verb}", messages.SUCCESS)
            except DomainError as error:
                self.message_user(request, f"{schedule.name}: {error}", messages.WARNING)
        return redirect(detail)


@admin.register(WorkloadLog)
class WorkloadLogAdmin(admin.ModelAdmin):
    list_display = ["workload", "seq", "stream", "created_at"]
    list_filter = ["stream"]
    search_fields = ["workload__id", "text"]
    readonly_fields = ["workload", "seq", "stream", "text", "created_at"]
