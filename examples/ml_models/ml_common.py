"""What the example scripts share: the seed's command line and JSON output.

Interface (the seed's):  ``train <model_path> [args...]``, ``predict <model_path> <input_data>``,
``evaluate <model_path>``. Every command prints one JSON object on stdout (progress goes to
stderr) and exits 0 on success, 1 with ``{"status": "error", "error": ...}`` otherwise.
``input_data`` is JSON: a number, a list (one sample, or samples of a one-feature model),
or a list of lists (a batch).
"""

import json
import math
import os
import sys


def emit(payload: dict, code: int = 0):
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
    sys.exit(code)


def fail(message: str):
    emit({"status": "error", "error": message}, 1)


def log(message: str):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def parse_input(text: str):
    try:
        data = json.loads(text)
    except ValueError:
        fail(f"input_data: {text!r} is not a number or a JSON list")
    return data


def to_rows(data, n_features: int):
    """Rows for predict, and whether the answer is a single value."""

    def number(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(f"input_data: {v!r} is not a finite number")
        return float(v)

    if isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        rows = [[number(v) for v in r] for r in data]
        if any(len(r) != n_features for r in rows):
            fail(f"input_data: every sample needs {n_features} features")
        return rows, False
    if isinstance(data, list) and data:
        values = [number(v) for v in data]
        if n_features == 1:
            return [[v] for v in values], False
        if len(values) != n_features:
            fail(f"input_data: {len(values)} values; the model expects {n_features} features")
        return [values], True
    return [[number(data)]], True


def metrics(model, x, y) -> dict:
    """The figures every example reports for a model on (x, y)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = model.predict(x)
    return {"r2": float(r2_score(y, pred)), "mse": float(mean_squared_error(y, pred)),
            "mae": float(mean_absolute_error(y, pred)), "n_samples": int(len(y))}


def save(model, path: str):
    import joblib

    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    joblib.dump(model, tmp)
    os.replace(tmp, path)  # a reader never sees half a model


def load(path: str):
    import joblib

    if not os.path.isfile(path):
        fail(f"model_path: no model file at {path!r}; train it first")
    return joblib.load(path)


def main(train, predict_info, evaluate, usage: str):
    args = sys.argv[1:]
    if len(args) < 2 or args[0] not in {"train", "predict", "evaluate"}:
        fail(usage)
    command, model_path, rest = args[0], args[1], args[2:]
    try:
        if command == "train":
            emit(train(model_path, rest))
        if command == "predict":
            if len(rest) != 1:
                fail(usage)
            model = load(model_path)
            rows, single = to_rows(parse_input(rest[0]), model.n_features_in_)
            out = [float(v) for v in model.predict(rows).ravel().tolist()]
            emit({"status": "success", "model_path": model_path, "prediction": out[0] if single else out,
                  "model_info": predict_info(model)})
        emit(evaluate(model_path))
    except SystemExit:
        raise
    except Exception as error:  # reported as JSON, the interface's promise
        fail(f"{type(error).__name__}: {error}")
