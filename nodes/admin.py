"""Nodes in the console: a table with capacity bars, the topology tree, a page per node.

Any console user may look at nodes (the cluster's resources are no secret to its users, as
in ``/api/nodes``); draining needs the change permission, i.e. staff. Credentials are staff's,
as on the API: making a join token and revoking a node's credential.
"""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_POST

from cnetsite.admin_site import DeletesThroughService
from core.errors import DomainError

from .models import Node
from .selectors import (
    TREE_MATCHES,
    TREE_PAGE,
    join_token_for_key,
    node_children,
    node_filter_labels,
    node_labels_present,
    node_parents_largest,
    node_tree,
)
from .services import (
    join_token_create,
    node_credential_revoke,
    node_delete,
    node_set_schedulable,
    ttl_seconds_parse,
)

# What the console offers for a join token's lifetime (the command's --ttl spellings).
JOIN_TOKEN_TTLS = [("15m", "15 minutes"), ("1h", "1 hour"), ("1d", "1 day"), ("7d", "7 days"), ("never", "never")]
# How an agent uses a join token: shown with the token, the one time it is shown.
# The exchange itself, as the node API takes it (POST /api/node/join).
JOIN_EXCHANGE = ("curl -X POST {url}/api/node/join -H 'Content-Type: application/json' "
                 "-d '{{\"node_id\": \"<node-id>\", \"join_token\": \"{token}\"}}'")
# A node's page names at most this many of its children; the node list pages through the rest.
DETAIL_CHILDREN = 50


def _bar_html(bar) -> str:
    return format_html(
        '<div class="rbar compact" data-resource="{}" title="{}: {} allocated">'
        '<div class="rbar-track"><div class="rbar-fill {}" style="width: {}"></div></div>'
        '<div class="rbar-caption">{}</div></div>',
        bar.name, bar.label, bar.text, bar.level, bar.width, bar.text,
    )


class TextListFilter(admin.SimpleListFilter):
    """A list filter typed into a box (it keeps the page's other filters), with a few suggestions:
    a fleet has too many parents or labels to list them all."""

    template = "admin/nodes/node/_text_filter.html"
    placeholder = ""
    hidden_params: list[tuple[str, str]] = []

    def has_output(self):
        return True

    def choices(self, changelist):
        # The box's form sends the page's other parameters along as hidden fields.
        self.hidden_params = [(name, value) for name, value in changelist.params.items()
                              if name not in (self.parameter_name, PAGE_VAR)]
        yield from super().choices(changelist)


class NodeLabelFilter(TextListFilter):
    title = "label"
    parameter_name = "label"
    placeholder = "key=value, …"

    def lookups(self, request, model_admin):
        return [(label, label) for label in node_labels_present()]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            return node_filter_labels(queryset, selector=self.value())
        except DomainError as error:  # the changelist answers "?e=1": its own word for bad filters
            raise IncorrectLookupParameters(str(error)) from error


class NodeParentFilter(TextListFilter):
    title = "parent"
    parameter_name = "parent"
    placeholder = "node_id"

    def lookups(self, request, model_admin):
        return [(node_id, f"{node_id} ({children})") for node_id, children in node_parents_largest()]

    def queryset(self, request, queryset):
        return queryset.filter(parent__node_id=self.value()) if self.value() else queryset


@admin.register(Node)
class NodeAdmin(DeletesThroughService, admin.ModelAdmin):
    list_display = ["node_id", "health", "endpoint", "parent", "cpu", "memory", "gpu", "storage", "heartbeat"]
    list_display_links = ["node_id"]
    list_filter = ["status", NodeLabelFilter, NodeParentFilter]
    search_fields = ["node_id", "address", "labels"]
    list_select_related = ["parent"]
    list_per_page = 50
    # At fleet size: one count (of the filtered rows) per page, and no facet counts per choice.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ["drain", "make_schedulable"]
    change_list_template = "admin/nodes/node/change_list.html"

    # Reading is open to every console user; changing (drain) keeps Django's permission.
    def has_module_permission(self, request):
        return request.user.is_active

    def has_view_permission(self, request, obj=None):
        return request.user.is_active

    def has_add_permission(self, request):
        return False  # nodes join by running an agent (runagent registers them)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def delete_through_service(self, obj) -> None:
        node_delete(node_id=obj.node_id)  # refused while the node holds work

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except DomainError as error:  # its transaction rolled back: nothing was deleted
            self.message_user(request, str(error), messages.ERROR)
            return redirect(reverse("admin:nodes_node_change", args=[object_id]))

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one node at a time, so a refusal names its node
        return actions

    def changelist_view(self, request, extra_context=None):
        extra = {"title": "Nodes", "can_make_join_token": request.user.is_staff}
        return super().changelist_view(request, extra | (extra_context or {}))

    def _bars(self, node: Node) -> dict:
        from cnetsite.console import node_bars

        return {bar.name: bar for bar in node_bars(node)}

    @admin.display(description="Health", ordering="status")
    def health(self, node: Node) -> str:
        return format_html('<span class="badge s-{}">{}</span>', node.status, node.get_status_display())

    @admin.display(description="CPU (cores)")
    def cpu(self, node: Node) -> str:
        return _bar_html(self._bars(node)["cpu"])

    @admin.display(description="Memory")
    def memory(self, node: Node) -> str:
        return _bar_html(self._bars(node)["memory"])

    @admin.display(description="GPU")
    def gpu(self, node: Node) -> str:
        return _bar_html(self._bars(node)["gpu"])

    @admin.display(description="Storage")
    def storage(self, node: Node) -> str:
        return _bar_html(self._bars(node)["storage"])

    @admin.display(description="Last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, node: Node) -> str:
        from cnetsite.templatetags.console import ago

        return ago(node.last_heartbeat)

    @admin.action(description="Drain: take no new work", permissions=["change"])
    def drain(self, request, queryset):
        changed = sum(node_set_schedulable(node_id=n.node_id, schedulable=False) for n in queryset)
        self.message_user(request, f"{changed} node(s) draining", messages.SUCCESS)

    @admin.action(description="Make schedulable again", permissions=["change"])
    def make_schedulable(self, request, queryset):
        changed = sum(node_set_schedulable(node_id=n.node_id, schedulable=True) for n in queryset)
        self.message_user(request, f"{changed} node(s) schedulable", messages.SUCCESS)

    # --- pages of our own: topology, a node, drain / undrain -------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("topology/", view(self.topology_view), name="nodes_node_topology"),
            path("topology/children/", view(require_GET(self.topology_children_view)),
                 name="nodes_node_topology_children"),
            path("<int:object_id>/schedulable/", view(require_POST(self.schedulable_view)),
                 name="nodes_node_schedulable"),
            path("<int:object_id>/revoke/", view(self.revoke_view), name="nodes_node_revoke"),
            path("join-token/", view(self.join_token_view), name="nodes_node_join_token"),
            *super().get_urls(),
        ]

    def topology_view(self, request):
        """The top of the forest, or (``?q=``) the paths from the roots to the nodes whose name
        matches; collapsed subtrees load on demand from ``topology_children_view``."""
        q = request.GET.get("q", "").strip()
        tree = node_tree(q=q)
        self._annotate_tree(request, tree.roots)
        context = self.admin_site.each_context(request) | {
            "title": "Topology", "tree": tree, "roots": tree.roots, "q": q, "matches_max": TREE_MATCHES,
            "opts": self.opts,
            "node_total": Node.objects.count(),
            "roots_more_url": _children_url(None, after=tree.roots_after, skip=tree.roots_skip),
        }
        return TemplateResponse(request, "admin/nodes/node/topology.html", context)

    def topology_children_view(self, request):
        """A page of one node's children (``?parent=<pk>``; the roots without it) as tree items,
        collapsed, with a "more" item when some remain: what the topology loads on a click."""
        try:
            parent_pk = int(request.GET["parent"]) if request.GET.get("parent") else None
            skip = [int(pk) for pk in request.GET.get("skip", "").split(",") if pk][:TREE_PAGE * 4]
        except ValueError:
            raise Http404("parent and skip are node pks") from None
        after = request.GET.get("after", "")
        nodes, more = node_children(parent_pk=parent_pk, after=after, skip=skip)
        self._annotate_tree(request, nodes)
        context = {"nodes": nodes, "more": more, "what": "roots" if parent_pk is None else "",
                   "more_url": _children_url(parent_pk, after=nodes[-1].node_id if nodes else after, skip=skip)}
        return TemplateResponse(request, "admin/nodes/node/_tree_children.html", context)

    def _annotate_tree(self, request, roots) -> None:
        """What the tree items draw: bars, active workloads, where their children load from."""
        from workloads.selectors import workload_active_counts_by_node

        active = workload_active_counts_by_node(user=request.user)
        stack = list(roots)
        while stack:
            node = stack.pop()
            node.active_count = active.get(node.pk, 0)
            node.bar_list = list(self._bars(node).values())
            node.peer_list = list(node.peers.all())  # prefetched; once, not a queryset per use
            node.children_url = _children_url(node.pk)
            node.more_url = _children_url(node.pk, after=node.more_after, skip=node.more_skip)
            stack.extend(node.tree_children)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        from workloads.models import ACTIVE
        from workloads.selectors import workload_list

        nodes = Node.objects.select_related("parent", "credential").prefetch_related("peers")
        node = get_object_or_404(nodes, pk=object_id)
        visible = workload_list(user=request.user).filter(node=node)
        children = node.children.order_by("node_id")
        context = self.admin_site.each_context(request) | {
            "title": node.node_id, "node": node, "opts": self.opts, "bars": self._bars(node).values(),
            "children": children[:DETAIL_CHILDREN], "children_total": children.count(),
            "active": visible.filter(status__in=ACTIVE).order_by("-created_at")[:100],
            "recent": visible.exclude(status__in=ACTIVE).order_by("-created_at")[:10],
            "can_change": self.has_change_permission(request, node),
            "can_revoke": request.user.is_staff,
            "credential": getattr(node, "credential", None),
            "usage": node.usage or {},
        }
        return TemplateResponse(request, "admin/nodes/node/detail.html", context)

    def schedulable_view(self, request, object_id):
        node = get_object_or_404(Node, pk=object_id)
        if not self.has_change_permission(request, node):
            raise PermissionDenied
        schedulable = request.POST.get("schedulable") == "1"
        if node_set_schedulable(node_id=node.node_id, schedulable=schedulable):
            done = "takes new work again" if schedulable else "is draining: it takes no new work"
            self.message_user(request, f"{node.node_id} {done}", messages.SUCCESS)
        else:
            self.message_user(request, f"{node.node_id} is {node.status}; nothing changed", messages.WARNING)
        return redirect(reverse("admin:nodes_node_change", args=[node.pk]))


    def revoke_view(self, request, object_id):
        """GET asks to confirm; POST revokes through the service, as POST /api/nodes/{id}/revoke does."""
        if not request.user.is_staff:
            raise PermissionDenied
        node = get_object_or_404(Node, pk=object_id)
        detail = reverse("admin:nodes_node_change", args=[node.pk])
        if request.method == "POST":
            if node_credential_revoke(node_id=node.node_id):
                self.message_user(request, f"{node.node_id}: credential revoked. Its agent is refused from now on; "
                                           "the node is offline and its work is handled as lost.", messages.SUCCESS)
            else:
                self.message_user(request, f"{node.node_id} holds no active credential; nothing changed",
                                  messages.WARNING)
            return redirect(detail)
        context = self.admin_site.each_context(request) | {
            "title": f"Revoke the credential of {node.node_id}?", "node": node, "opts": self.opts,
            "detail_url": detail, "credential": getattr(node, "credential", None),
        }
        return TemplateResponse(request, "admin/nodes/node/revoke_confirmation.html", context)

    def join_token_view(self, request):
        """GET: how long and for how many nodes; POST: make it and show it, this once (never stored)."""
        if not request.user.is_staff:
            raise PermissionDenied
        context = self.admin_site.each_context(request) | {
            "title": "Make a join token", "opts": self.opts, "ttls": JOIN_TOKEN_TTLS,
            "ttl": request.POST.get("ttl", "1h"), "uses": request.POST.get("uses", "1"),
        }
        if request.method == "POST":
            try:
                uses = int(context["uses"])
                if uses < 0:
                    raise ValueError
            except ValueError:
                context["error"] = "uses: must be 0 (unlimited) or a positive whole number"
            else:
                try:
                    ttl_seconds = ttl_seconds_parse(context["ttl"])
                    token = join_token_create(ttl_seconds=ttl_seconds, uses=uses or None, created_by=request.user)
                except DomainError as error:
                    context["error"] = f"{error.field}: {error}"
                else:
                    url = request.build_absolute_uri("/").rstrip("/")
                    context |= {"token": token, "made": join_token_for_key(key=token),
                                "exchange": JOIN_EXCHANGE.format(url=url, token=token)}
        # admin_view's never_cache sends "no-store": the token shown once leaves no copy in a cache.
        return TemplateResponse(request, "admin/nodes/node/join_token.html", context,
                                status=400 if "error" in context else 200)


def _children_url(parent_pk: int | None, *, after: str = "", skip=()) -> str:
    query = {"parent": parent_pk or "", "after": after, "skip": ",".join(str(pk) for pk in skip)}
    query = urlencode({name: value for name, value in query.items() if value})
    return reverse("admin:nodes_node_topology_children") + (f"?{query}" if query else "")
