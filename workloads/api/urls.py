from django.urls import re_path

from core.routers import OptionalSlashRouter

from .plan import WorkloadPlanView
from .views import ScheduleViewSet, WorkloadArrayViewSet, WorkloadViewSet

router = OptionalSlashRouter()
router.register("workloads", WorkloadViewSet, basename="workload")
router.register("arrays", WorkloadArrayViewSet, basename="workload-array")
router.register("schedules", ScheduleViewSet, basename="schedule")
# Before the router's routes: its detail route would take "plan" for an id.
urlpatterns = [re_path(r"^workloads/plan/?$", WorkloadPlanView.as_view(), name="workload-plan"), *router.urls]
