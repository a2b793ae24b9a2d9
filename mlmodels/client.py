"""Keep-alive HTTP to model servers, one connection per (thread, server).

``http.client`` sets TCP_NODELAY, and a kept-alive connection saves a TCP handshake per
prediction; a connection the server closed is retried once on a fresh one.
"""

import http.client
import json
import threading

TIMEOUT_SECONDS = 30.0
_local = threading.local()


def _connection(host: str, port: int) -> http.client.HTTPConnection:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    conn = pool.get((host, port))
    if conn is None:
        conn = pool[(host, port)] = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
    return conn


def _drop(host: str, port: int) -> None:
    conn = getattr(_local, "pool", {}).pop((host, port), None)
    if conn is not None:
        conn.close()


def post_json(host: str, port: int, path: str, body: dict, *, headers: dict | None = None) -> tuple[int, object]:
    """POST JSON, return (status, decoded body). Raises OSError when the server cannot be reached."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    for attempt in (1, 2):
        conn = _connection(host, port)
        try:
            conn.request("POST", path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, ConnectionError, OSError) as error:
            _drop(host, port)
            fresh_refusal = isinstance(error, ConnectionRefusedError)
            if attempt == 2 or fresh_refusal:
                raise OSError(str(error) or type(error).__name__) from error
            continue
        if response.will_close:
            _drop(host, port)
        try:
            return response.status, json.loads(raw or b"null")
        except ValueError:
            return response.status, {"detail": raw[:500].decode("utf-8", errors="replace")}
    raise OSError("unreachable")  # pragma: no cover - the loop returns or raises
