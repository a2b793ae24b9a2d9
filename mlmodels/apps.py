from django.apps import AppConfig


class MlmodelsConfig(AppConfig):
    name = "mlmodels"
    verbose_name = "ML models"

    def ready(self) -> None:
        # workloads never imports mlmodels: the mlmodel kind registers itself here.
        from workloads.kinds import register_kind

        from .kind import KIND

        register_kind(KIND)
