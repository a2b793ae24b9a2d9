#!/usr/bin/env bash
# The seed's ML deployment demo, step by step, against `make run` (http://localhost:8080).
#
#   make run                                  # terminal 1: prints the API token
#   ./examples/ml_deployment_demo.sh          # terminal 2
#
# The token comes from $CNET_TOKEN (or $TOKEN); failing that it is read from var/ the way
# `make run` created it (needs the project's .venv). CNET_URL overrides the address.
set -euo pipefail
cd "$(dirname "$0")/.."
URL="${CNET_URL:-http://localhost:8080}"
TOKEN="${CNET_TOKEN:-${TOKEN:-}}"
if [ -z "$TOKEN" ]; then
  TOKEN="$(.venv/bin/python manage.py shell -c \
    "from rest_framework.authtoken.models import Token; t = Token.objects.filter(user__username='admin').first(); print(t.key if t else '')" 2>/dev/null | tail -1)"
fi
[ -n "$TOKEN" ] || { echo "no API token: start 'make run' first, or export CNET_TOKEN=<token it printed>"; exit 1; }
AUTH=(-H "Authorization: Token $TOKEN")
JSON=(-H "Content-Type: application/json")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pretty() { if command -v jq >/dev/null; then jq '.'; else python3 -m json.tool; fi; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

step "0. CNET Agent at $URL"
curl -sf "${AUTH[@]}" "$URL/api/health" | pretty

step "1. Install the example scripts' requirements (pip install -r examples/ml_models/requirements.txt)"
echo "   (already in the agent's environment: make run installs requirements.txt, which pins the same)"

step "2. Deploy the linear regression model (the seed's request)"
LR=$(curl -sf -X POST "$URL/api/ml/models" "${AUTH[@]}" "${JSON[@]}" -d '{
    "name": "linear-regression-model",
    "model_type": "linear_regression",
    "model_path": "models/linear_regression_model.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py",
    "command": "python3",
    "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib", "1000"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000}
  }')
echo "$LR" | pretty
LR_ID=$(echo "$LR" | field "['id']")

step "3. Deploy the neural network model (the seed's request)"
NN=$(curl -sf -X POST "$URL/api/ml/models" "${AUTH[@]}" "${JSON[@]}" -d '{
    "name": "neural-network-model",
    "model_type": "neural_network",
    "model_path": "models/neural_network_model.h5",
    "script_path": "examples/ml_models/neural_network.py",
    "command": "python3",
    "args": ["examples/ml_models/neural_network.py", "train", "models/neural_network_model.h5", "1000", "50"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 2.0, "memory_limit": 1024000000, "disk_limit": 2000000000}
  }')
echo "$NN" | pretty
NN_ID=$(echo "$NN" | field "['id']")

step "4. Monitor the models until both have trained"
for _ in $(seq 1 120); do
  STATES=$(curl -sf "${AUTH[@]}" "$URL/api/ml/models" | python3 -c \
    "import json,sys; print(' '.join(m['status'] for m in json.load(sys.stdin) if m['id'] in ('$LR_ID','$NN_ID')))")
  echo "   status: $STATES"
  case "$STATES" in *pending*|*scheduled*|*running*) sleep 1 ;; *) break ;; esac
done
curl -sf "${AUTH[@]}" "$URL/api/ml/models" | pretty

step "5. The registry: versions with checksum and evaluate's metrics"
curl -sf "${AUTH[@]}" "$URL/api/ml/models/$LR_ID/versions" | pretty

step "6. Predict (the seed's request; nothing serves yet, so the seed's asynchronous form)"
ASYNC=$(curl -sf -X POST "$URL/api/ml/models/$LR_ID/predict" "${AUTH[@]}" "${JSON[@]}" -d '{"input_data": 5.5}')
echo "$ASYNC" | pretty
TASK_ID=$(echo "$ASYNC" | field ".get('prediction_task_id', '')")
if [ -n "$TASK_ID" ]; then
  for _ in $(seq 1 50); do
    TASK=$(curl -sf "${AUTH[@]}" "$URL/api/tasks/$TASK_ID")
    case "$(echo "$TASK" | field "['status']")" in pending|running) sleep 0.2 ;; *) break ;; esac
  done
  echo "$TASK" | pretty
fi

step "7. Serve the model on a node (a model server that loads it once) and predict synchronously"
curl -sf -X POST "$URL/api/ml/models/$LR_ID/serve" "${AUTH[@]}" "${JSON[@]}" -d '{}' | pretty
for _ in $(seq 1 60); do
  CODE=$(curl -s -o /tmp/cnet-demo-predict.json -w '%{http_code}' -X POST "$URL/api/ml/models/$LR_ID/predict" \
    "${AUTH[@]}" "${JSON[@]}" -d '{"input_data": 5.5, "mode": "sync"}')
  [ "$CODE" = 200 ] && break
  sleep 0.5
done
pretty < /tmp/cnet-demo-predict.json
echo "   a batch:"
curl -sf -X POST "$URL/api/ml/models/$LR_ID/predict" "${AUTH[@]}" "${JSON[@]}" -d '{"input_data": [[1], [2], [3]]}' | pretty
curl -sf -X POST "$URL/api/ml/models/$NN_ID/predict" "${AUTH[@]}" "${JSON[@]}" -d '{"input_data": 5.5}' | pretty

step "8. Model logs (the seed's request)"
curl -sf "${AUTH[@]}" "$URL/api/ml/models/$LR_ID/logs?lines=100" | pretty

step "9. All task log files (the seed's request)"
if command -v jq >/dev/null; then
  curl -s "${AUTH[@]}" "$URL/api/tasks" | jq '.[].log_file'
else
  curl -s "${AUTH[@]}" "$URL/api/tasks" | python3 -c "import json,sys; [print(json.dumps(t['log_file'])) for t in json.load(sys.stdin)]"
fi

step "10. Stop the models (DELETE /api/ml/models/{id})"
curl -s -o /dev/null -w '   linear regression: %{http_code}\n' -X DELETE "${AUTH[@]}" "$URL/api/ml/models/$LR_ID"
curl -s -o /dev/null -w '   neural network:    %{http_code}\n' -X DELETE "${AUTH[@]}" "$URL/api/ml/models/$NN_ID"
echo; echo "done."
