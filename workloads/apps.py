from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    name = "workloads"
    verbose_name = "Workloads"

    def ready(self) -> None:
        from .executors import container_kind, process_kind
        from .kinds import register_kind

        register_kind(process_kind.KIND)
        register_kind(container_kind.KIND)
