"""The agent's one conversation with the control plane: the node API over HTTP.

Everything the agent says to the control plane goes through ``ControlPlane``: the base URL, the
node's credential (kept in the data folder, mode 0600, got once with a join token), one keep-alive
``requests.Session``, timeouts, and retries with bounded exponential backoff. ``Spool`` keeps the
reports and log chunks not delivered yet on disk, in order, and sends them in batches: every chunk
first, then every report, so a run's output always arrives before its exit. No database here.
"""

import contextlib
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

import requests

logger = logging.getLogger(__name__)

HOW_TO_JOIN = ("get a join token (manage.py create_join_token, or the console's node list) and start the agent "
               "with --join-token TOKEN (or server.join_token in its YAML)")
MAX_CHUNKS = 1000  # what one POST /api/node/logs takes (workloads/nodeapi/serializers.py)
MAX_LOG_TEXT = 1024 * 1024
MAX_REPORTS = 1000


class ControlPlaneError(Exception):
    """The control plane could not be reached (or kept failing) after the retries."""


class ControlPlaneBusy(ControlPlaneError):
    """The control plane deferred the request (503 with Retry-After): come back in ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CredentialRefused(ControlPlaneError):
    """The node's credential is unknown or revoked (401), or there is none and no join token."""


class Refused(Exception):
    """The control plane answered a 4xx other than 401: the request itself is wrong."""

    def __init__(self, status: int, body):
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class ControlPlane:
    def __init__(self, server: str, *, node_id: str, data_dir: Path, join_token: str | None = None,
                 credential: str | None = None, credential_path: Path | None = None,
                 connect_timeout: float = 3.0, read_timeout: float = 15.0, attempts: int = 4, backoff: float = 0.2,
                 max_backoff: float = 3.0) -> None:
        server = server if "://" in server else f"http://{server}"
        self.base = server.rstrip("/") + "/api/node/"
        self.node_id = node_id
        self.credential_path = Path(credential_path or Path(data_dir) / "agent" / f"{node_id}.credential")
        self.join_token = join_token
        self.credential = credential
        self.timeout = (connect_timeout, read_timeout)
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self.session = requests.Session()  # one keep-alive connection pool for every call
        self._lock = threading.Lock()  # a Session is not meant to be shared by threads at once

    # --- the credential -------------------------------------------------------------------
    def ensure_credential(self) -> str:
        """The node's credential: given, or read from the data folder, or got once with the join
        token (and then kept there, mode 0600, for every later start)."""
        if self.credential:
            return self.credential
        try:
            self.credential = self.credential_path.read_text().strip() or None
        except FileNotFoundError:
            pass
        if self.credential:
            return self.credential
        if not self.join_token:
            raise CredentialRefused(f"node {self.node_id} has no credential in {self.credential_path}: {HOW_TO_JOIN}")
        try:
            answer = self._call("POST", "join", {"join_token": self.join_token, "node_id": self.node_id},
                                authenticated=False)
        except Refused as error:
            raise CredentialRefused(f"node {self.node_id} could not join: {error.body}") from None
        self._save_credential(answer["credential"])
        self.credential = answer["credential"]
        logger.info("node %s: joined the control plane; credential kept in %s", self.node_id, self.credential_path)
        return self.credential

    def _save_credential(self, credential: str) -> None:
        self.credential_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.credential_path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, credential.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.credential_path)

    # --- the calls ------------------------------------------------------------------------
    def register(self, fields: dict) -> dict:
        return self._call("POST", "register", fields)

    def heartbeat(self, *, epoch: int, usage: dict, running: list[str], previous_answer_seconds: float | None = None,
                  attempts: int | None = None) -> dict:
        return self._call("POST", "heartbeat", {"epoch": epoch, "usage": usage, "running": running,
                                                "previous_answer_seconds": previous_answer_seconds},
                          attempts=attempts)

    def work(self, *, status: str | None = None, limit: int | None = None) -> dict:
        query = {name: value for name, value in (("status", status), ("limit", limit)) if value is not None}
        return self._request("GET", "work", params=query).json()

    def reports(self, reports: list[dict]) -> list[dict]:
        return self._call("POST", "reports", {"reports": reports})["results"]

    def logs(self, chunks: list[dict]) -> int:
        return self._call("POST", "logs", {"chunks": chunks})["stored"]

    def drain(self, *, epoch: int, policy: str) -> dict:
        return self._call("POST", "drain", {"epoch": epoch, "policy": policy})

    def leave(self, *, epoch: int) -> dict:
        return self._call("POST", "leave", {"epoch": epoch})

    def _call(self, method: str, path: str, body: dict | None = None, *, authenticated: bool = True,
              attempts: int | None = None):
        return self._request(method, path, authenticated=authenticated, attempts=attempts, json=body).json()

    def _request(self, method: str, path: str, *, authenticated: bool = True, attempts: int | None = None,
                 session: requests.Session | None = None, timeout: tuple | None = None,
                 **send) -> requests.Response:
        """Send with retries and bounded, jittered backoff; the answer, once it is not a 5xx.
        A 503 with Retry-After is an appointment, not a failure to retry at once: it is raised
        (``ControlPlaneBusy``) for the caller to keep.
        ``session``: one of the caller's own instead of the shared keep-alive one (and its lock)."""
        headers = {"Authorization": f"Node {self.ensure_credential()}"} if authenticated else {}
        attempts = attempts or self.attempts
        delay = self.backoff
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(delay, self.max_backoff) * (0.5 + random.random() / 2))  # backoff, jittered
                delay *= 2
            try:
                with self._lock if session is None else contextlib.nullcontext():
                    response = (session or self.session).request(method, self.base + path, headers=headers,
                                                                 timeout=timeout or self.timeout, **send)
            except requests.RequestException as error:
                last = error
                continue
            if response.status_code == 503 and response.headers.get("Retry-After", "").isdigit():
                raise ControlPlaneBusy(f"{method} {path}: deferred", retry_after=float(response.headers["Retry-After"]))
            if response.status_code >= 500:
                last = ControlPlaneError(f"{method} {path}: {response.status_code}")
                continue
            if response.status_code == 401:
                raise CredentialRefused(f"the control plane refused node {self.node_id}'s credential "
                                        f"({self.credential_path}): {HOW_TO_JOIN}; delete that file first")
            if response.status_code >= 400:
                try:
                    detail = response.json()
                except ValueError:
                    detail = response.text
                raise Refused(response.status_code, detail)
            return response
        raise ControlPlaneError(f"{method} {self.base}{path}: {last}") from last

    # --- ML work (mlmodels/nodeapi.py) ------------------------------------------------------
    # Artifacts go over a connection of their own: a long transfer must not hold heartbeats and
    # reports behind the shared session's lock.
    TRANSFER_READ_TIMEOUT = 300.0

    def _transfer(self, method: str, path: str, *, attempts: int | None = None, **send) -> requests.Response:
        with requests.Session() as session:
            return self._request(method, path, attempts=attempts, session=session,
                                 timeout=(self.timeout[0], self.TRANSFER_READ_TIMEOUT), **send)

    def artifact_store(self, *, workload_id: str, filename: str, data: bytes, metrics: dict,
                       attempts: int | None = None) -> dict:
        """A training run's artifact, stored as the next version of its model (once per run)."""
        return self._transfer("POST", "ml/artifacts", attempts=attempts,
                              data={"workload_id": workload_id, "filename": filename, "metrics": json.dumps(metrics)},
                              files={"file": (filename, data, "application/octet-stream")}).json()

    def model_version(self, version_id: str) -> dict:
        return self._call("GET", f"ml/versions/{version_id}")

    def model_version_artifact(self, version_id: str) -> bytes:
        return self._transfer("GET", f"ml/versions/{version_id}/artifact").content

    def model_server_secret(self, workload_id: str) -> str:
        return self._call("GET", f"ml/servers/{workload_id}/secret")["secret"]

    def workload_note(self, *, workload_id: str, reason: str) -> None:
        self._call("POST", "ml/notes", {"workload_id": workload_id, "reason": reason})

    def prediction_claim(self, task_id: str) -> dict:
        return self._call("POST", f"ml/predictions/{task_id}/claim", {})

    def prediction_result(self, task_id: str, outcome: dict) -> dict:
        return self._call("POST", f"ml/predictions/{task_id}/result", outcome)


class Spool:
    """Reports and log chunks not delivered yet, in the order they happened, on disk so an agent
    restart loses none. ``flush`` sends them in batches (chunks, then reports) and forgets what was
    delivered.

    The file is a journal of JSON lines, kept open: an entry per line, and ``{"delivered": n}``
    when the first n entries still spooled have been delivered. It is emptied (truncated) once
    everything is delivered and rewritten whole only when it grows long: rewriting it on every
    delivery, and opening it on every entry, each under the lock every start and exit takes, kept
    a burst of short jobs' threads waiting on one another (measured: bench/throughput.py). A line
    torn by a crash is the last one, and is skipped."""

    COMPACT_AFTER = 10_000  # lines in the journal

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self.entries: list[dict] = []
        try:
            for line in path.read_text().splitlines():
                entry = json.loads(line) if line.strip() else None
                if entry and "delivered" in entry:
                    del self.entries[:entry["delivered"]]
                elif entry:
                    self.entries.append(entry)
        except (FileNotFoundError, ValueError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        self._rewrite()

    def add(self, *, logs: list[dict] = (), reports: list[dict] = ()) -> None:
        new = [{"logs": chunk} for chunk in logs] + [{"report": report} for report in reports]
        if not new:
            return
        with self._lock:
            self.entries.extend(new)
            self._append(new)

    def __len__(self) -> int:
        return len(self.entries)

    def flush(self, client: ControlPlane) -> list[dict] | None:
        """Deliver everything spooled; the reports' results, or None when something could not be
        delivered (it stays, and goes with the next flush)."""
        with self._send_lock:
            with self._lock:
                pending = list(self.entries)
            if not pending:
                return []
            chunks = [entry["logs"] for entry in pending if "logs" in entry]
            reports = [entry["report"] for entry in pending if "report" in entry]
            results: list[dict] = []
            try:
                for batch in _batches(chunks, MAX_CHUNKS, lambda chunk: len(chunk["text"]), MAX_LOG_TEXT // 2):
                    self._send(lambda chunks: [client.logs(chunks)], batch)
                for batch in _batches(reports, MAX_REPORTS, lambda _: 0, 1):
                    results.extend(self._send(client.reports, batch))
            except ControlPlaneError as error:
                logger.warning("node %s: %d spooled items not delivered yet: %s", client.node_id, len(pending), error)
                return None
            self._forget(pending)
            return results

    @staticmethod
    def _send(call, batch: list[dict]) -> list:
        """One batch (``call`` answers a list). Refused whole (a 4xx: the request itself is wrong,
        so it will never pass), it is sent again one item at a time, so only the items refused are
        dropped and a bad log chunk never takes an exit report with it."""
        try:
            return call(batch)
        except Refused as error:
            if len(batch) == 1:
                logger.error("the control plane refused a spooled item; dropping it: %s (%s)", error,
                             {key: value for key, value in batch[0].items() if key != "text"})
                return []
        answers = []
        for item in batch:
            answers.extend(Spool._send(call, [item]))
        return answers

    def _forget(self, delivered: list[dict]) -> None:
        with self._lock:
            del self.entries[:len(delivered)]
            if not self.entries:
                self._file.truncate(0)
                self._lines = 0
            elif self._lines >= self.COMPACT_AFTER:
                self._rewrite()
            else:
                self._append([{"delivered": len(delivered)}])

    def _append(self, entries: list[dict]) -> None:
        self._file.write("".join(json.dumps(entry) + "\n" for entry in entries))
        self._file.flush()
        self._lines += len(entries)

    def _rewrite(self) -> None:
        """The journal as one line per entry still spooled."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in self.entries))
        tmp.replace(self.path)
        if self._file is not None:
            self._file.close()
        self._file = self.path.open("a")
        self._lines = len(self.entries)


def _batches(items: list, most: int, size, most_size: int):
    batch, used = [], 0
    for item in items:
        if batch and (len(batch) >= most or used + size(item) > most_size):
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += size(item)
    if batch:
        yield batch
