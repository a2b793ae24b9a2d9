#!/usr/bin/env python3
"""Linear regression (scikit-learn) on y = 2x + 3 + noise, in the seed's script interface.

    python3 simple_linear_regression.py train <model_path> [n_samples=1000]
    python3 simple_linear_regression.py predict <model_path> <input_data>   # 5.5, [1, 2], [[1], [2]]
    python3 simple_linear_regression.py evaluate <model_path>

Every command prints one JSON object on stdout.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ml_common  # noqa: E402

USAGE = ("usage: simple_linear_regression.py train <model_path> [n_samples] | predict <model_path> <input>"
         " | evaluate <model_path>")
SLOPE, INTERCEPT, NOISE = 2.0, 3.0, 0.5


def data(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, size=(n, 1))
    y = SLOPE * x[:, 0] + INTERCEPT + rng.normal(0, NOISE, size=n)
    return x, y


def info(model) -> dict:
    return {"coefficient": float(model.coef_[0]), "intercept": float(model.intercept_)}


def train(model_path: str, rest: list[str]) -> dict:
    from sklearn.linear_model import LinearRegression

    try:
        n = int(rest[0]) if rest else 1000
    except ValueError:
        ml_common.fail(f"n_samples: {rest[0]!r} is not an integer")
    if not 2 <= n <= 10_000_000:
        ml_common.fail("n_samples: must be between 2 and 10000000")
    ml_common.log(f"training LinearRegression on {n} samples")
    x, y = data(n, seed=42)
    model = LinearRegression().fit(x, y)
    ml_common.save(model, model_path)
    ml_common.log(f"saved to {model_path}")
    return {"status": "success", "model_path": model_path, "model_info": info(model),
            "metrics": ml_common.metrics(model, x, y)}


def evaluate(model_path: str) -> dict:
    model = ml_common.load(model_path)
    x, y = data(500, seed=7)  # held out: a different seed than training
    return {"status": "success", "model_path": model_path, "model_info": info(model),
            "metrics": ml_common.metrics(model, x, y)}


if __name__ == "__main__":
    ml_common.main(train, info, evaluate, USAGE)
