from core.routers import OptionalSlashRouter

from .views import WorkloadViewSet

router = OptionalSlashRouter()
router.register("workloads", WorkloadViewSet, basename="workload")
urlpatterns = router.urls
