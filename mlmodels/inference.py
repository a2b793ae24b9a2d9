"""Input checking and prediction, shared by the model server, the API and async tasks
(``mlmodels.predict_once``).

No Django here: the model server (``mlmodels.server``) imports this module alone, so it
starts in the time it takes to import numpy and the model's framework.

Input is the seed's ``input_data``: a number (one sample of one feature), a list (one
sample of n features, or n samples of one feature for a one-feature model), or a list of
lists (a batch of samples). Anything else is refused before the model sees it.
"""

import hashlib
import math
import os

# A batch larger than this is refused with 413 (rows), as is a sample wider than MAX_FEATURES.
MAX_BATCH_ROWS = int(os.environ.get("CNET_ML_MAX_BATCH_ROWS", "10000"))
MAX_FEATURES = int(os.environ.get("CNET_ML_MAX_FEATURES", "10000"))


class BadInput(ValueError):
    """Malformed input_data (400)."""

    status = 400


class BatchTooLarge(ValueError):
    """More rows (or features) than the server accepts (413)."""

    status = 413


class ModelFailed(Exception):
    """The model raised while predicting (422); the message is the model's."""

    status = 422


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"input_data{where}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise BadInput(f"input_data{where}: must be a finite number")
    return float(value)


def check_input(data) -> tuple[list[list[float]] | list[float] | float, str]:
    """Validate ``input_data``; return it as floats and its shape: "scalar", "vector" or "matrix"."""
    if isinstance(data, list):
        if not data:
            raise BadInput("input_data: must not be empty")
        if len(data) > MAX_BATCH_ROWS:
            raise BatchTooLarge(f"input_data: {len(data)} rows is over the limit of {MAX_BATCH_ROWS} per request")
        if all(isinstance(row, list) for row in data):
            width = len(data[0])
            if not width:
                raise BadInput("input_data[0]: a sample must not be empty")
            if width > MAX_FEATURES:
                raise BatchTooLarge(f"input_data[0]: {width} features is over the limit of {MAX_FEATURES}")
            rows = []
            for i, row in enumerate(data):
                if len(row) != width:
                    raise BadInput(f"input_data[{i}]: has {len(row)} features, input_data[0] has {width}")
                rows.append([_number(v, f"[{i}][{j}]") for j, v in enumerate(row)])
            return rows, "matrix"
        if any(isinstance(row, list) for row in data):
            raise BadInput("input_data: mixes numbers and lists; give a list of numbers or a list of lists")
        return [_number(v, f"[{i}]") for i, v in enumerate(data)], "vector"
    return _number(data, ""), "scalar"


def to_matrix(values, shape: str, n_features: int | None) -> tuple[list[list[float]], bool]:
    """Rows for ``model.predict`` and whether the answer is one value (not a list)."""
    if shape == "scalar":
        return [[values]], True
    if shape == "matrix":
        if n_features is not None and len(values[0]) != n_features:
            raise BadInput(f"input_data: samples have {len(values[0])} features, the model expects {n_features}")
        return values, False
    # A flat list: one sample of n features, or n samples of a one-feature model.
    if n_features == 1 or (n_features is None and len(values) != 1):
        return [[v] for v in values], False
    if n_features is not None and len(values) != n_features:
        raise BadInput(f"input_data: {len(values)} values; the model expects {n_features} features per sample")
    return [values], True


def predict(model, data):
    """The prediction for validated-or-not ``input_data``: a number for one sample, else a list."""
    values, shape = check_input(data)
    rows, single = to_matrix(values, shape, getattr(model, "n_features_in_", None))
    try:
        import numpy as np

        result = model.predict(np.asarray(rows, dtype=float))
    except Exception as error:  # the model's own failure, reported to the caller as 422
        raise ModelFailed(f"{type(error).__name__}: {error}") from error
    out = [_plain(v) for v in result.tolist()]
    return out[0] if single else out


def _plain(value):
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_file(path: str):
    import joblib

    return joblib.load(path)


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def describe(model) -> dict:
    """What the scripts print as ``model_info``."""
    info = {"class": type(model).__name__, "n_features": getattr(model, "n_features_in_", None)}
    coef = getattr(model, "coef_", None)
    if coef is not None and getattr(coef, "size", 0) == 1:
        info["coefficient"] = float(coef.ravel()[0])
        info["intercept"] = float(getattr(model, "intercept_", 0.0))
    return info
