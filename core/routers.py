from rest_framework.routers import SimpleRouter


class OptionalSlashRouter(SimpleRouter):
    """The seed writes /api/workloads (no slash); DRF's habit is a slash. Accept both, redirect neither."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"
