"""ML models in the console: list, deploy form, a page per model with versions, serving and predict.

``MLModelConsole`` is mixed into ``mlmodels.admin.MLModelAdmin``. It reads through
``mlmodels.selectors`` (``model_list(user=...)``, as the API) and writes through its services
with the API's serializers, so the form refuses what the API refuses, with the same messages.
"""

import json

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from cnetsite.admin_site import DeletesThroughService, OwnedOnly
from core.errors import DomainError
from workloads.forms import EnvField, NumberField, SizeField, flatten_errors

# The seed's linear-regression deployment (seed 004), offered as a one-click example.
SEED_EXAMPLE = {
    "name": "linear-regression-model", "model_type": "linear_regression",
    "model_path": "models/linear_regression_model.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py", "command": "python3",
    "args": "examples/ml_models/simple_linear_regression.py\ntrain\nmodels/linear_regression_model.joblib\n1000",
    "working_dir": ".", "env": "PYTHONPATH=examples/ml_models", "cpu_limit": "1.0",
    "memory_limit": "512000000", "disk_limit": "1000000000",
}
DEPLOY_FIELDS = {  # API error path → form field
    "name": "name", "model_type": "model_type", "model_path": "model_path", "script_path": "script_path",
    "command": "command", "args": "args", "env": "env", "working_dir": "working_dir", "framework": "framework",
    "node": "node", "port": "port", "serve": "serve", "resources": "memory_limit",
    "resources.cpu_limit": "cpu_limit", "resources.memory_limit": "memory_limit",
    "resources.disk_limit": "disk_limit",
}


def _text(**attrs):
    return forms.TextInput(attrs=attrs)


class DeployForm(forms.Form):
    """The seed's deploy body, one field each; ``args`` one a line, ``env`` as KEY=value lines."""

    name = forms.CharField(required=False)
    model_type = forms.CharField(required=False, label="Model type", widget=_text(placeholder="linear_regression"))
    model_path = forms.CharField(required=False, label="Model path", widget=_text(
        placeholder="models/linear_regression_model.joblib", **{"class": "mono"}))
    script_path = forms.CharField(required=False, label="Script path", widget=_text(
        placeholder="examples/ml_models/simple_linear_regression.py", **{"class": "mono"}))
    command = forms.CharField(required=False, widget=_text(placeholder="python3", **{"class": "mono"}))
    args = forms.CharField(required=False, label="Arguments", widget=forms.Textarea(
        attrs={"rows": 4, "class": "mono", "placeholder": "one argument a line"}))
    working_dir = forms.CharField(required=False, label="Working folder", widget=_text(placeholder="."))
    env = EnvField(required=False, label="Environment", widget=forms.Textarea(
        attrs={"rows": 2, "class": "mono", "placeholder": "PYTHONPATH=examples/ml_models"}))
    cpu_limit = NumberField(required=False, label="CPU limit (cores)", widget=_text(placeholder="1.0"))
    memory_limit = SizeField(required=False, label="Memory limit", widget=_text(placeholder="512000000"),
                             help_text="Bytes, or <code>512Mi</code>, <code>1G</code>.")
    disk_limit = SizeField(required=False, label="Disk limit", widget=_text(placeholder="0"))
    framework = forms.CharField(required=False, widget=_text(placeholder="scikit-learn"))
    node = forms.CharField(required=False, label="Submit at node")
    serve = forms.BooleanField(required=False, label="Serve after training",
                               help_text="Start a model server once a version is trained, for instant predictions.")
    port = NumberField(required=False, label="Serving port", widget=_text(placeholder="any free port"))

    def to_payload(self) -> dict:
        data = self.cleaned_data
        payload: dict = {"name": data["name"], "model_path": data["model_path"]}
        for field in ("model_type", "script_path", "command", "working_dir", "framework", "node"):
            if data[field]:
                payload[field] = data[field]
        if data["args"].strip():
            payload["args"] = [line.strip() for line in data["args"].splitlines() if line.strip()]
        if data["env"]:
            payload["env"] = data["env"]
        resources = {field: data[field] for field in ("cpu_limit", "memory_limit", "disk_limit") if data[field] != ""}
        if resources:
            payload["resources"] = resources
        if data["serve"]:
            payload["serve"] = True
        if data["port"] != "":
            payload["port"] = data["port"]
        return payload

    def add_api_errors(self, errors) -> None:
        for path_, message in flatten_errors(errors):
            field = DEPLOY_FIELDS.get(path_) or DEPLOY_FIELDS.get(path_.split(".")[0])
            self.add_error(field, message if field else f"{path_}: {message}")


class MLModelConsole(OwnedOnly, DeletesThroughService):
    """Console pages for MLModelAdmin (a mixin: mlmodels/admin.py keeps its registrations)."""

    list_display = ["name_link", "status_badge", "model_type", "promoted", "version_count", "serving",
                    "owner", "created_at"]
    list_display_links = None
    list_filter = ["model_type", "framework"]
    search_fields = ["name", "model_type"]
    inlines = []

    def get_queryset(self, request):
        from mlmodels.selectors import model_list

        return model_list(user=request.user).annotate(version_count=Count("versions"))

    def has_add_permission(self, request):
        return request.user.is_active

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "ML models", **(extra_context or {})})

    def name_link(self, model):
        return format_html('<a class="strong" href="{}">{}</a>',
                           reverse("admin:mlmodels_mlmodel_change", args=[model.pk]), model.name)

    name_link.short_description = "Name"
    name_link.admin_order_field = "name"

    def status_badge(self, model):
        from mlmodels.selectors import model_status

        status = model_status(model=model)  # the API's word for it
        return format_html('<span class="badge s-{}">{}</span>', status, status)

    status_badge.short_description = "Status"

    def promoted(self, model):
        return f"v{model.promoted_version.number}" if model.promoted_version_id else "–"

    promoted.short_description = "Promoted"

    def version_count(self, model):
        return model.version_count

    version_count.short_description = "Versions"
    version_count.admin_order_field = "version_count"

    def serving(self, model):
        return "yes" if getattr(model, "serving_now", False) else "no"

    serving.short_description = "Serving"

    def delete_through_service(self, obj):
        from mlmodels.services import model_delete

        model_delete(model=obj)  # its training run and servers are stopped first

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<uuid:object_id>/promote/<uuid:version_id>/", view(self.promote_view),
                 name="mlmodels_mlmodel_promote"),
            path("<uuid:object_id>/serve/", view(self.serve_view), name="mlmodels_mlmodel_serve"),
            *super().get_urls(),
        ]

    def _visible(self, request, object_id):
        model = self.get_queryset(request).filter(pk=object_id).first()
        if model is None:
            raise Http404("no such model")
        return model

    def add_view(self, request, form_url="", extra_context=None):
        from mlmodels.api.serializers import DeploySerializer
        from mlmodels.services import model_deploy

        if not self.has_add_permission(request):
            raise PermissionDenied
        form = DeployForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            deploy = DeploySerializer(data=form.to_payload())
            if not deploy.is_valid():
                form.add_api_errors(deploy.errors)
            else:
                try:
                    model = model_deploy(owner=request.user, **deploy.validated_data)
                except DomainError as error:
                    form.add_api_errors(error.as_dict())
                else:
                    self.message_user(request, f"Deployed {model.name}: its training run is placed", messages.SUCCESS)
                    return redirect(reverse("admin:mlmodels_mlmodel_change", args=[model.pk]))
        context = self.admin_site.each_context(request) | {
            "title": "Deploy a model", "form": form, "opts": self.opts, "seed_example": json.dumps(SEED_EXAMPLE),
        }
        return TemplateResponse(request, "admin/mlmodels/mlmodel/deploy.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        from mlmodels.api.serializers import PredictSerializer
        from mlmodels.selectors import model_serving_runs, model_status, model_training_run, model_version_list
        from mlmodels.services import model_predict

        model = self._visible(request, object_id)
        answer, predict_error, input_text = None, None, request.POST.get("input_data", "5.5")
        if request.method == "POST":
            try:
                input_data = json.loads(input_text)
            except json.JSONDecodeError:
                input_data = input_text  # as the API would get it: the serializer names the problem
            body = PredictSerializer(data={"input_data": input_data, "mode": request.POST.get("mode") or "auto"})
            if not body.is_valid():
                predict_error = "; ".join(f"{p}: {m}" for p, m in flatten_errors(body.errors))
            else:
                try:
                    code, answer = model_predict(model=model, input_data=body.validated_data["input_data"],
                                                 mode=body.validated_data["mode"], owner=request.user)
                    answer = {**answer, "code": code}
                except DomainError as error:
                    predict_error = str(error)
        training = model_training_run(model=model)
        servers = list(model_serving_runs(model=model).order_by("-created_at")[:10])
        starting = ("pending", "scheduled")
        context = self.admin_site.each_context(request) | {
            "title": model.name, "model": model, "opts": self.opts,
            "status": model_status(model=model),
            "versions": model_version_list(model=model),
            "servers": servers,
            "training": training.workload if training else None,
            "answer": answer, "answer_json": json.dumps(answer, indent=2) if answer else "",
            "predict_error": predict_error, "input_text": input_text,
            "can_delete": self.has_delete_permission(request, model),
            # Refresh the page by itself while training runs or a server starts.
            "busy": bool(training and training.workload.status in (*starting, "running"))
            or any(run.workload.status in starting for run in servers)
            or (model.serve_after_training and not servers and bool(training)
                and training.workload.status == "succeeded"),
        }
        return TemplateResponse(request, "admin/mlmodels/mlmodel/detail.html", context)

    def promote_view(self, request, object_id, version_id):
        from mlmodels.selectors import model_version_get
        from mlmodels.services import model_version_promote

        model = self._visible(request, object_id)
        if request.method != "POST":
            return redirect(reverse("admin:mlmodels_mlmodel_change", args=[model.pk]))
        version = model_version_get(model=model, version_id=version_id)
        if version is None:
            raise Http404("no such version")
        model_version_promote(model=model, version=version)
        self.message_user(request, f"Promoted v{version.number} of {model.name}", messages.SUCCESS)
        return redirect(reverse("admin:mlmodels_mlmodel_change", args=[model.pk]))

    def serve_view(self, request, object_id):
        from mlmodels.services import model_serve

        model = self._visible(request, object_id)
        if request.method == "POST":
            try:
                run = model_serve(model=model)
                self.message_user(request, f"Serving v{run.version.number} of {model.name}: {run.workload.status}",
                                  messages.SUCCESS)
            except DomainError as error:
                self.message_user(request, str(error), messages.WARNING)
        return redirect(reverse("admin:mlmodels_mlmodel_change", args=[model.pk]))
