#!/usr/bin/env python3
"""A small neural network (scikit-learn MLPRegressor) on y = x·sin(x) + noise, in the seed's interface.

    python3 neural_network.py train <model_path> [n_samples=1000] [epochs=50]
    python3 neural_network.py predict <model_path> <input_data>
    python3 neural_network.py evaluate <model_path>

The model is saved with joblib at whatever path it is given, ".h5" included (the seed's
example names it neural_network_model.h5); it is a joblib file all the same.
"""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ml_common  # noqa: E402

USAGE = ("usage: neural_network.py train <model_path> [n_samples] [epochs] | predict <model_path> <input>"
         " | evaluate <model_path>")


def data(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, size=(n, 1))
    y = x[:, 0] * np.sin(x[:, 0]) + rng.normal(0, 0.3, size=n)
    return x, y


def info(model) -> dict:
    return {"hidden_layer_sizes": list(model.hidden_layer_sizes), "n_iter": int(model.n_iter_),
            "loss": float(model.loss_)}


def train(model_path: str, rest: list[str]) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    try:
        n = int(rest[0]) if rest else 1000
        epochs = int(rest[1]) if len(rest) > 1 else 50
    except ValueError:
        ml_common.fail("n_samples and epochs must be integers")
    if not 10 <= n <= 10_000_000 or not 1 <= epochs <= 100_000:
        ml_common.fail("n_samples: 10..10000000, epochs: 1..100000")
    ml_common.log(f"training MLPRegressor(64, 32) on {n} samples for {epochs} epochs")
    x, y = data(n, seed=42)
    model = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=epochs, learning_rate_init=0.01, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # few epochs is the seed's choice
        model.fit(x, y)
    ml_common.save(model, model_path)
    ml_common.log(f"saved to {model_path} after {model.n_iter_} epochs, loss {model.loss_:.4f}")
    return {"status": "success", "model_path": model_path, "model_info": info(model),
            "metrics": ml_common.metrics(model, x, y)}


def evaluate(model_path: str) -> dict:
    model = ml_common.load(model_path)
    x, y = data(500, seed=7)
    return {"status": "success", "model_path": model_path, "model_info": info(model),
            "metrics": ml_common.metrics(model, x, y)}


if __name__ == "__main__":
    ml_common.main(train, info, evaluate, USAGE)
