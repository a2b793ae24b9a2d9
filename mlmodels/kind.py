"""The ``mlmodel`` kind: training runs and model servers (``mlmodels.executor``) on nodes that run models.

Its config is the seed's (``model_path``, ``model_type``, ``framework``, ``port``, and a training
``command``) plus what this app's services write for the runs they submit: ``model_id``,
``model_version`` (the registry's artifact a server loads) and ``script_path`` (the training
script whose ``evaluate`` gives a version its metrics).
"""

from django import forms
from rest_framework import serializers

from core.fields import (
    EnvironmentField,
    NoUnknownFieldsMixin,
    RelativePathField,
    StrictCharField,
    StringListField,
)
from workloads.forms import COMMAND_LINE, ENV, WORKING_DIR, NumberField, argv_config, filled
from workloads.kinds import Kind

from .serving import ServingPortField

MLMODEL = "mlmodel"


class UUIDTextField(serializers.UUIDField):
    """A UUID given as text, kept as text: a config is stored as JSON."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return str(super().to_internal_value(data))


class MLModelConfigSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    model_path = RelativePathField(max_length=4096)
    model_type = StrictCharField(required=False, max_length=64, default="sklearn")
    framework = StrictCharField(required=False, max_length=64, default="scikit-learn")
    port = ServingPortField(required=False)
    command = StrictCharField(required=False, max_length=4096)
    args = StringListField(required=False, default=list)
    env = EnvironmentField(required=False, default=dict)
    working_dir = RelativePathField(required=False, max_length=4096)
    script_path = RelativePathField(required=False, max_length=4096)
    model_id = UUIDTextField(required=False)
    model_version = UUIDTextField(required=False)


def form_config(values: dict) -> dict:
    return {**argv_config(values["command_line"]),
            **filled(values, "model_path", "model_type", "framework", "port", "env", "working_dir")}


KIND = Kind(
    name=MLMODEL,
    label="ML model",
    config_serializer=MLModelConfigSerializer,
    executor="mlmodels.executor.MLModelExecutor",
    capability=MLMODEL,  # what agents report and prediction tasks look for (capabilities.mlmodel)
    form_fields={
        "model_path": forms.CharField(required=False, label="Model path",
                                      help_text="Relative to the agent's working folder, e.g. "
                                                "<code>models/linear_regression_model.joblib</code>."),
        "model_type": forms.CharField(required=False, label="Model type"),
        "framework": forms.CharField(required=False),
        "port": NumberField(required=False, label="Serving port"),
        "command_line": COMMAND_LINE,
        "env": ENV,
        "working_dir": WORKING_DIR,
    },
    form_config=form_config,
)
