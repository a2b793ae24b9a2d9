from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core.throttles import rate_limited

from . import views
from .metrics.views import MetricsView

api = [
    # First: agents' calls (a fleet's beats) are most of what the control plane answers, and each
    # pattern ahead of theirs is tried on every one of them.
    path("node/", include("workloads.nodeapi.urls")),
    path("node/", include("mlmodels.nodeapi")),
    re_path(r"^resources/stats/?$", views.resources_stats, name="resources-stats"),
    re_path(r"^health/?$", views.health, name="health"),
    re_path(r"^health/live/?$", views.health_live, name="health-live"),
    path("", include("nodes.api.urls")),
    path("", include("scheduler.api.urls")),
    path("", include("workloads.api.urls")),
    path("", include("mlmodels.api.urls")),
    re_path(r"^schema/?$", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^docs/?$", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    re_path(r"^redoc/?$", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # The two login forms, ahead of the URLs they belong to: attempts are rate-limited per address.
    path("admin/login/", rate_limited(admin.site.login, scope="login")),
    path("api-auth/login/", rate_limited(LoginView.as_view(template_name="rest_framework/login.html"), scope="login")),
    path("admin/", admin.site.urls),
    path("api/", include(api)),
    path("api-auth/", include("rest_framework.urls")),
    re_path(r"^metrics/?$", MetricsView.as_view(), name="metrics"),
]
