from core.routers import OptionalSlashRouter

from .views import QuotaViewSet

router = OptionalSlashRouter()
router.register("quotas", QuotaViewSet, basename="quota")
urlpatterns = router.urls
