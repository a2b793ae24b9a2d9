from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    name = "workloads"
    verbose_name = "Workloads"

    def ready(self) -> None:
        # Importing an executor module registers it with the registry.
        from .executors import container, process  # noqa: F401
