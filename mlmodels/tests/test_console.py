"""The console's deploy form: typed text becomes the seed's deploy body, refused by the field it came from."""

import pytest

from mlmodels.models import MLModel

DEPLOY = "/admin/mlmodels/mlmodel/add/"
FORM = {
    "name": "console-linear", "model_type": "linear_regression", "model_path": "models/linear.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py", "working_dir": ".",
    "env": "PYTHONPATH=examples/ml_models\n\nSEED=7", "cpu_limit": "0.5", "memory_limit": "256Mi", "disk_limit": "",
}


@pytest.mark.django_db
def test_the_deploy_form_reads_env_lines_and_human_sizes(staff_client, node):
    response = staff_client.post(DEPLOY, FORM)
    assert response.status_code == 302, response.content.decode()
    model = MLModel.objects.get(name="console-linear")
    assert (model.cpu_millicores, model.memory_bytes) == (500, 256 * 1024**2)
    run_env = model.runs.get().workload.config["env"]
    assert run_env["PYTHONPATH"] == "examples/ml_models" and run_env["SEED"] == "7"


@pytest.mark.django_db
def test_an_env_line_without_equals_is_refused_on_its_field_and_nothing_is_written(staff_client, node):
    response = staff_client.post(DEPLOY, {**FORM, "env": "PYTHONPATH=examples/ml_models\nSEED"})
    assert response.status_code == 200
    assert response.context["form"].errors["env"] == ["line 2: expected KEY=value"]
    assert not MLModel.objects.exists()
