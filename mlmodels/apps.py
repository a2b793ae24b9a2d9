from django.apps import AppConfig


class MlmodelsConfig(AppConfig):
    name = "mlmodels"
    verbose_name = "ML models"

    def ready(self) -> None:
        # workloads never imports mlmodels: the mlmodel executor registers itself here.
        from workloads.executors.base import register_executor

        from .executor import MLModelExecutor

        register_executor(MLModelExecutor())
