"""The example scripts' command line, the seed's interface: train / predict / evaluate, JSON on stdout."""

import json
import subprocess
import sys

import joblib
import pytest

from .conftest import EXAMPLES

LINEAR = str(EXAMPLES / "simple_linear_regression.py")
NEURAL = str(EXAMPLES / "neural_network.py")


def run(tmp_path, *args, ok=True):
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode == 0) == ok, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_linear_regression_train_predict_evaluate(tmp_path):
    trained = run(tmp_path, LINEAR, "train", "models/lr.joblib", "1000")
    assert trained["status"] == "success" and trained["model_path"] == "models/lr.joblib"
    assert trained["model_info"]["coefficient"] == pytest.approx(2.0, abs=0.1)
    assert trained["model_info"]["intercept"] == pytest.approx(3.0, abs=0.2)
    assert type(joblib.load(tmp_path / "models/lr.joblib")).__name__ == "LinearRegression"

    assert run(tmp_path, LINEAR, "predict", "models/lr.joblib", "5.5")["prediction"] == pytest.approx(14.0, abs=0.3)
    assert len(run(tmp_path, LINEAR, "predict", "models/lr.joblib", "[1, 2, 3]")["prediction"]) == 3
    assert len(run(tmp_path, LINEAR, "predict", "models/lr.joblib", "[[1], [2]]")["prediction"]) == 2

    evaluated = run(tmp_path, LINEAR, "evaluate", "models/lr.joblib")
    assert evaluated["metrics"]["r2"] > 0.95 and {"mse", "mae"} <= set(evaluated["metrics"])


def test_neural_network_writes_joblib_even_to_an_h5_path(tmp_path):
    trained = run(tmp_path, NEURAL, "train", "models/nn.h5", "500", "20")
    assert trained["status"] == "success" and trained["model_info"]["n_iter"] <= 20
    assert type(joblib.load(tmp_path / "models/nn.h5")).__name__ == "MLPRegressor"
    assert isinstance(run(tmp_path, NEURAL, "predict", "models/nn.h5", "5.5")["prediction"], float)
    assert "r2" in run(tmp_path, NEURAL, "evaluate", "models/nn.h5")["metrics"]


@pytest.mark.parametrize("args", [
    ["predict", "models/missing.joblib", "1"],
    ["predict", "models/lr.joblib", "abc"],
    ["predict", "models/lr.joblib", '"text"'],
    ["predict", "models/lr.joblib", "[[1, 2]]"],
    ["train", "models/lr.joblib", "many"],
    ["fly", "models/lr.joblib"],
])
def test_errors_are_json_with_exit_1(tmp_path, args):
    run(tmp_path, LINEAR, "train", "models/lr.joblib", "50")
    failed = run(tmp_path, LINEAR, *args, ok=False)
    assert failed["status"] == "error" and failed["error"]
