from django.contrib import admin

from .models import MLModel, ModelRun, ModelVersion, PredictionTask


class VersionInline(admin.TabularInline):
    model = ModelVersion
    fields = ["number", "checksum", "size_bytes", "framework", "metrics", "source", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False


@admin.register(MLModel)
class MLModelAdmin(admin.ModelAdmin):
    list_display = ["name", "model_type", "framework", "promoted_version", "owner", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["promoted_version"]
    inlines = [VersionInline]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("promoted_version__artifact")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["model", "number", "checksum", "size_bytes", "source", "created_at"]
    exclude = ["artifact"]
    readonly_fields = ["model", "number", "checksum", "size_bytes", "framework", "model_type", "filename",
                       "metrics", "source", "workload"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("artifact")

    def has_add_permission(self, request):
        return False


@admin.register(ModelRun)
class ModelRunAdmin(admin.ModelAdmin):
    list_display = ["model", "kind", "workload", "version", "created_at"]
    list_filter = ["kind"]


@admin.register(PredictionTask)
class PredictionTaskAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "status", "created_at", "finished_at"]
    list_filter = ["status"]


# The console's pages for models (list with status and versions, deploy form, versions with
# metrics and promote, serving, predict) live in cnetsite/console_ml.py; they take precedence
# over the plain registration above.
from cnetsite.console_ml import MLModelConsole  # noqa: E402

admin.site.unregister(MLModel)


@admin.register(MLModel)
class MLModelConsoleAdmin(MLModelConsole, MLModelAdmin):
    pass
