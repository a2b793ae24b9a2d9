from django.urls import re_path

from core.routers import OptionalSlashRouter

from .views import NodeViewSet, resources

router = OptionalSlashRouter()
router.register("nodes", NodeViewSet, basename="node")
urlpatterns = [re_path(r"^resources/?$", resources, name="resources"), *router.urls]
