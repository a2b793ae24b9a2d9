"""The model server: a small WSGI app run under gunicorn (gthread, keep-alive) by the mlmodel executor.

It loads one artifact once, at worker start, and answers:

- ``POST /predict`` ``{"input_data": ...}`` → 200 ``{"prediction": ...}``; 400 malformed input,
  413 oversized body or batch, 422 the model raised (with its message).
- ``GET /health`` → 200 with what it serves; without the secret, only ``{"status": "ok"}`` (what
  its agent waits for before the endpoint is recorded).

Every other request must carry the run's secret (``Authorization: Bearer <secret>``, sent by the
control plane; ``mlmodels.serving``), else 401: a model server answers no one else on the network.

Not ``http.server``: measured here, it stalls ~44 ms per request (Nagle / delayed ACK); gunicorn
answers in ~0.5 ms. No Django: this process only needs numpy and the model's framework.
Environment: ``CNET_MODEL_ARTIFACT`` (the file), ``CNET_MODEL_CHECKSUM``, ``CNET_MODEL_TYPE``,
``CNET_MODEL_SECRET`` (the run's secret; none: every request but the bare health check is 401).
"""

import hmac
import json
import os
import time

from mlmodels import inference

MAX_BODY_BYTES = int(os.environ.get("CNET_ML_MAX_BODY_BYTES", str(8 * 1024 * 1024)))
# Read before the artifact loads, and taken out of what the model's code may start.
SECRET = os.environ.get("CNET_MODEL_SECRET", "")
os.environ.pop("CNET_MODEL_SECRET", None)
ARTIFACT = os.environ["CNET_MODEL_ARTIFACT"]
MODEL = inference.load_file(ARTIFACT)
INFO = {
    "status": "ok",
    "artifact": os.path.basename(ARTIFACT),
    "checksum": os.environ.get("CNET_MODEL_CHECKSUM", ""),
    "model_type": os.environ.get("CNET_MODEL_TYPE", ""),
    "model_version": os.environ.get("CNET_MODEL_VERSION", ""),
    "model_info": inference.describe(MODEL),
    "pid": os.getpid(),
}


def _reply(start_response, status: int, body: dict):
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
              413: "Payload Too Large", 422: "Unprocessable Entity"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(data)))])
    return [data]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    authorized = _authorized(environ.get("HTTP_AUTHORIZATION", ""))
    if path == "/health":
        return _reply(start_response, 200, INFO if authorized else {"status": "ok"})
    if not authorized:
        return _reply(start_response, 401, {"detail": "this model server answers its control plane only "
                                                      "(Authorization: Bearer <the run's secret>)"})
    if path != "/predict":
        return _reply(start_response, 404, {"detail": f"no such path {path!r}; POST /predict or GET /health"})
    if method != "POST":
        return _reply(start_response, 405, {"detail": "POST a JSON body {\"input_data\": ...}"})
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        return _reply(start_response, 413, {"detail": f"body: {length} bytes is over the limit of {MAX_BODY_BYTES}"})
    try:
        body = json.loads(environ["wsgi.input"].read(length) or b"null")
    except ValueError as error:
        return _reply(start_response, 400, {"detail": f"body: not valid JSON ({error})"})
    if not isinstance(body, dict) or "input_data" not in body:
        return _reply(start_response, 400, {"detail": "input_data: this field is required"})
    started = time.perf_counter()
    try:
        prediction = inference.predict(MODEL, body["input_data"])
    except (inference.BadInput, inference.BatchTooLarge, inference.ModelFailed) as error:
        return _reply(start_response, error.status, {"detail": str(error)})
    return _reply(start_response, 200, {
        "prediction": prediction,
        "predict_ms": round((time.perf_counter() - started) * 1000, 3),
    })


def _authorized(header: str) -> bool:
    scheme, _, token = header.partition(" ")
    return bool(SECRET) and scheme == "Bearer" and hmac.compare_digest(token.strip().encode(), SECRET.encode())
