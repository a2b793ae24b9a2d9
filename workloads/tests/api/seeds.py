"""The seed's own request bodies for POST /api/workloads (000_f51ff985df3de545.txt), as tests send them."""

SEED_PROCESS = {
    "name": "test-process",
    "type": "process",
    "requirements": {"cpu": 1.0, "memory": 536870912},
    "config": {"command": "sleep", "args": ["60"], "env": {"TEST": "value"}},
}
SEED_CONTAINER = {
    "name": "test-container",
    "type": "container",
    "requirements": {"cpu": 1.0, "memory": 536870912},
    "config": {"image": "nginx:alpine", "command": ["nginx"], "args": ["-g", "daemon off;"]},
}
SEED_MLMODEL = {
    "name": "test-ml-model",
    "type": "mlmodel",
    "requirements": {"cpu": 2.0, "memory": 2147483648},
    "config": {"model_path": "models/model.joblib", "model_type": "sklearn", "framework": "scikit-learn",
               "port": 9000},
}
# Every kind this project ships, available.
EVERY_KIND = {name: {"available": True} for name in ("process", "container", "mlmodel")}
