from core.routers import OptionalSlashRouter

from .views import MLModelViewSet, TaskViewSet

router = OptionalSlashRouter()
router.register("ml/models", MLModelViewSet, basename="mlmodel")
router.register("tasks", TaskViewSet, basename="task")
urlpatterns = router.urls
