"""The ``mlmodel`` kind's config serializer takes every key this app's services write, and checks each."""

import pytest

from mlmodels.kind import MLModelConfigSerializer
from mlmodels.services import model_deploy, model_serve, model_version_create
from nodes.resources import Resources
from tests.helpers import ML_NODE_CAPABILITIES, make_node
from workloads.models import Workload

pytestmark = pytest.mark.django_db

SEED = {"model_path": "models/model.joblib", "model_type": "sklearn", "framework": "scikit-learn", "port": 9000}


def valid(config: dict) -> dict:
    serializer = MLModelConfigSerializer(data=config)
    assert serializer.is_valid(), serializer.errors
    return serializer.validated_data


def test_the_training_and_serving_configs_the_services_write_are_valid_as_written(admin_user):
    make_node("local", capabilities=ML_NODE_CAPABILITIES)
    model = model_deploy(owner=admin_user, name="lr", model_type="linear", model_path="models/lr.joblib",
                         command="python3", args=["train.py"], script_path="scripts/train.py", env={},
                         working_dir=".", resources=Resources(cpu=100, gpu=0, memory=64 * 1024**2, storage=0))
    version = model_version_create(model=model, data=b"artifact", filename="lr.joblib", source="upload")
    run = model_serve(model=model, version=version, port=9000)
    training = Workload.objects.get(ml_run__model=model, ml_run__kind="training").config
    serving = run.workload.config
    assert {"model_id", "script_path"} <= set(training) and {"model_id", "model_version", "port"} <= set(serving)
    for config in (training, serving):
        assert valid(config) | config == valid(config)  # every key kept, with the value written


def test_the_seeds_config_is_valid_with_the_defaults_filled_in():
    assert valid(SEED) == {**SEED, "args": [], "env": {}}


@pytest.mark.parametrize(("key", "value"), [
    ("model_id", "not-a-uuid"), ("model_id", 42), ("model_version", ["x"]), ("script_path", "/etc/passwd"),
    ("script_path", "../train.py"), ("port", 70000), ("frobnicate", True),
])
def test_each_key_is_checked(key, value):
    serializer = MLModelConfigSerializer(data={**SEED, key: value})
    assert not serializer.is_valid()
    assert set(serializer.errors) == {key}
