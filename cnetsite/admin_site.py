"""The Web UI: Django's admin, made into an operator's console.

``ConsoleAdminConfig`` replaces ``django.contrib.admin`` in INSTALLED_APPS so that
``admin.site`` (where every app registers) is a ``ConsoleSite``. The site admits any active
user, not only staff: what a non-staff user sees is narrowed per object by each ModelAdmin
(workloads through ``workload_list(user=...)``, exactly as the API does), and everything
else (users, groups, raw log rows) still needs Django's model permissions, which
ordinary users do not have.
"""

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig
from django.urls import path


class ConsoleSite(AdminSite):
    site_header = "CNET Agent"
    site_title = "CNET Agent"
    index_title = "Cluster overview"
    index_template = "admin/console/dashboard.html"
    site_url = None  # "/" is the console itself; no "view site" link
    enable_nav_sidebar = False  # the console's own navigation bar replaces it

    @property
    def login_form(self):
        """The admin's form refuses non-staff; Django's plain one lets any active user in.

        Imported here: this module loads with the app registry, before auth's models.
        """
        from django.contrib.auth.forms import AuthenticationForm

        return AuthenticationForm

    def has_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_authenticated

    def get_urls(self):
        from . import console

        return [
            path("dashboard/live/", self.admin_view(console.dashboard_live), name="console_dashboard_live"),
            *super().get_urls(),
        ]

    def index(self, request, extra_context=None):
        from . import console

        return super().index(request, (extra_context or {}) | console.dashboard_context(user=request.user))


class OwnedOnly:
    """Permissions of a ModelAdmin whose queryset is already narrowed to what the user may see."""

    def has_module_permission(self, request):
        return request.user.is_active

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and self._may_touch(request, obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and self._may_touch(request, obj)

    def has_change_permission(self, request, obj=None):
        return False  # records change only through their actions (stop, delete, promote), never a form

    @staticmethod
    def _may_touch(request, obj) -> bool:
        return obj is None or request.user.is_staff or getattr(obj, "owner_id", None) == request.user.pk


class DeletesThroughService:
    """Admin deletes call the app's service (which stops live work first), never a bare row delete."""

    def delete_through_service(self, obj) -> None:
        raise NotImplementedError

    def delete_model(self, request, obj):
        self.delete_through_service(obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_through_service(obj)

    def get_deleted_objects(self, objs, request):
        # Its dependent rows (events, log chunks, versions) go with it; they need no permission of their own.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected


class ConsoleAdminConfig(AdminConfig):
    default_site = "cnetsite.admin_site.ConsoleSite"
