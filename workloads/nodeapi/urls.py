"""``/api/node/``: the node API, one prefix for everything an agent asks (a trailing slash optional)."""

from django.urls import re_path

from . import views

urlpatterns = [
    re_path(r"^join/?$", views.JoinView.as_view(), name="node-join"),
    re_path(r"^register/?$", views.RegisterView.as_view(), name="node-register"),
    re_path(r"^heartbeat/?$", views.HeartbeatView.as_view(), name="node-heartbeat"),
    re_path(r"^work/?$", views.WorkView.as_view(), name="node-work"),
    re_path(r"^reports/?$", views.ReportsView.as_view(), name="node-reports"),
    re_path(r"^logs/?$", views.LogsView.as_view(), name="node-logs"),
    re_path(r"^drain/?$", views.DrainView.as_view(), name="node-drain"),
    re_path(r"^leave/?$", views.LeaveView.as_view(), name="node-leave"),
]
