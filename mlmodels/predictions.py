"""The seed's asynchronous predictions (prediction tasks): create, send, claim, answer, recover.

Loading an artifact unpickles what a user uploaded or trained, so no process of ours ever loads
one: not the control plane, and not an agent. A task goes one of two ways:

- a **model server** runs the task's version: the control worker forwards the task to it over
  HTTP (``prediction_task_forward``), as a synchronous predict would;
- else an **agent** that runs models is sent it on its node queue, and the task records that node.
  Only that node may claim it (``prediction_task_claim_on_node``, through the node API); its agent
  fetches the artifact, predicts in a one-shot subprocess under workload limits
  (``mlmodels.agentside``) and posts the answer (``prediction_task_answer_from_node``).

Either way a run is counted by ``prediction_task_claim`` (pending → running, ``attempts + 1``) and
its answer is written only while that attempt is still the running one, so the sweep
(``prediction_tasks_recover``) can give a dead run up without a late answer overwriting the retry.
"""

import logging
import time
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from core.errors import DomainError, Forbidden, InvalidRequest, StateConflict
from nodes.models import Node, NodeStatus
from workloads.dispatch import CONTROL_QUEUE, node_queue, publish

from . import client
from .errors import PayloadTooLarge, PredictionFailed
from .kind import KIND
from .models import MLModel, PredictionTask, TaskStatus
from .selectors import model_serving_endpoints
from .serving import secret_header

logger = logging.getLogger(__name__)


def predict_remote(*, model: MLModel, endpoints: list[dict], input_data) -> dict:
    """Predict through the first of ``endpoints`` (running model servers) that answers."""
    last_error = ""
    for endpoint in endpoints:
        started = time.perf_counter()
        try:
            status, body = client.post_json(endpoint["address"], endpoint["port"], "/predict",
                                            {"input_data": input_data}, headers=secret_header(endpoint["secret"]))
        except OSError as error:
            last_error = f"{endpoint['node']}:{endpoint['port']}: {error}"
            continue
        if status == 200:
            return {"prediction": body.get("prediction"), "model_id": str(model.pk),
                    "version": endpoint["version"], "served_by": endpoint["node"],
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        detail = body.get("detail", f"model server answered {status}") if isinstance(body, dict) else str(body)
        if status == 413:
            raise PayloadTooLarge(detail.removeprefix("input_data: "), field="input_data")
        if status == 400:
            raise InvalidRequest(detail.removeprefix("input_data: "), field="input_data")
        if status == 422:
            raise PredictionFailed(f"the model raised: {detail}")
        last_error = f"{endpoint['node']}:{endpoint['port']} answered {status}: {detail}"
    raise StateConflict(f"model {model.name!r} is not serving: its server is not accepting requests "
                        f"(starting or gone: {last_error})")


def prediction_task_create(*, model: MLModel, input_data, owner=None) -> PredictionTask:
    task = PredictionTask.objects.create(model=model, version_id=model.promoted_version_id, owner=owner,
                                         input_data=input_data)
    task_id = str(task.pk)
    transaction.on_commit(lambda: prediction_task_dispatch(task_id=task_id))
    return task


def _serving_its_version(task: dict) -> list[dict]:
    return [endpoint for endpoint in model_serving_endpoints(model_id=task["model_id"])
            if endpoint["version"] == task["version__number"]]


def prediction_task_dispatch(*, task_id: str) -> bool:
    """Send a pending task on: to the control worker when a model server runs its version, else
    to a ready agent that runs models, recording that node (only it may claim the task). No such
    node, or the broker down: it stays pending and the sweep sends it again."""
    task = PredictionTask.objects.filter(pk=task_id, status=TaskStatus.PENDING).values(
        "model_id", "version__number").first()
    if task is None:
        return False
    if task["version__number"] is not None and _serving_its_version(task):
        PredictionTask.objects.filter(pk=task_id, status=TaskStatus.PENDING).update(node=None)
        return publish("mlmodels.forward_prediction", [task_id], CONTROL_QUEUE)
    return _dispatch_to_agent(task_id=task_id)


def _dispatch_to_agent(*, task_id: str) -> bool:
    node = (
        Node.objects.filter(status=NodeStatus.READY, **{f"capabilities__{KIND.capability}__available": True})
        .order_by("cpu_allocated_millicores", "node_id").values("pk", "node_id").first()
    )
    if node is None:
        logger.warning("prediction %s: no ready node runs models and no server runs its version; left pending",
                       task_id)
        return False
    if not PredictionTask.objects.filter(pk=task_id, status=TaskStatus.PENDING).update(node_id=node["pk"]):
        return False  # claimed (or ended) meanwhile
    return publish("mlmodels.run_prediction", [task_id, node["node_id"]], node_queue(node["node_id"]))


def prediction_task_claim(*, task_id, node_id: str | None) -> int | None:
    """Move a pending task to running, counting the attempt: by the agent of ``node_id``, the node
    it was sent to, or (``None``) by the control worker that forwards it to a model server. Returns
    the attempt's number, or None when it is not pending (another caller claimed it first) or was
    sent elsewhere."""
    sent_to = Q(node__isnull=True) if node_id is None else Q(node__node_id=node_id)
    if not PredictionTask.objects.filter(sent_to, pk=task_id, status=TaskStatus.PENDING).update(
            status=TaskStatus.RUNNING, started_at=timezone.now(), attempts=F("attempts") + 1):
        return None
    return PredictionTask.objects.values_list("attempts", flat=True).get(pk=task_id)


def _record(*, task_id, attempt: int, node_pk: int | None, outcome: dict, how: str) -> bool:
    """Write a run's answer (``prediction``, or ``error`` with ``error_status``) and its log line,
    only while ``attempt`` is still the running one of that runner; whether it was written."""
    task = PredictionTask.objects.select_related("version").only(
        "pk", "version__number", "version__checksum").get(pk=task_id)
    version = task.version
    if "error" in outcome:
        fields = {"status": TaskStatus.FAILED, "error": outcome["error"], "error_status": outcome["error_status"]}
    else:
        fields = {"status": TaskStatus.SUCCEEDED,
                  "result": {"prediction": outcome["prediction"], "version": version.number if version else None}}
    line = (f"{timezone.now().isoformat()} predicted with version {version.number if version else '?'} "
            f"(sha256 {version.checksum[:12] if version else '?'}) {how} in {outcome['elapsed_ms']:.2f} ms: "
            f"{fields['status']}" + (f": {fields['error']}" if fields.get("error") else ""))
    written = PredictionTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, attempts=attempt,
                                            node_id=node_pk).update(
        finished_at=timezone.now(), log=Concat(F("log"), Value(line + "\n"), output_field=TextField()), **fields)
    if not written:
        logger.warning("prediction %s: attempt %s finished after the sweep gave it up; answer dropped",
                       task_id, attempt)
    return bool(written)


def prediction_task_forward(*, task_id) -> bool:
    """On the control worker: run the task on a model server of its version. No server answers
    (it went away since the task was sent): the task goes back to pending, its attempt not
    counted, and to an agent."""
    attempt = prediction_task_claim(task_id=task_id, node_id=None)
    if attempt is None:
        return False
    task = PredictionTask.objects.select_related("model", "version").only(
        "pk", "input_data", "model__name", "version__number").get(pk=task_id)
    number = task.version.number if task.version else None
    endpoints = _serving_its_version({"model_id": task.model_id, "version__number": number}) if number else []
    started = time.perf_counter()
    try:
        answer = predict_remote(model=task.model, endpoints=endpoints, input_data=task.input_data)
        outcome, how = {"prediction": answer["prediction"]}, f"by the model server on {answer['served_by']}"
    except StateConflict as error:
        note = f"{timezone.now().isoformat()} no model server answered ({error}); sent to an agent\n"
        PredictionTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, attempts=attempt).update(
            status=TaskStatus.PENDING, started_at=None, attempts=F("attempts") - 1,
            log=Concat(F("log"), Value(note), output_field=TextField()))
        _dispatch_to_agent(task_id=str(task_id))
        return False
    except DomainError as error:  # the input or the model: what a synchronous predict would answer
        outcome, how = {"error": error.as_dict()["detail"], "error_status": error.status}, "by a model server"
    outcome["elapsed_ms"] = (time.perf_counter() - started) * 1000
    return _record(task_id=task_id, attempt=attempt, node_pk=None, outcome=outcome, how=how)


def _sent_to(*, node: Node, task_id) -> None:
    if not PredictionTask.objects.filter(pk=task_id, node=node).exists():
        raise Forbidden(f"prediction {task_id} was not sent to node {node.node_id}", field="task_id")


def prediction_task_claim_on_node(*, node: Node, task_id) -> dict:
    """The node API's claim: what the agent of ``node`` needs to run a task sent to it (its input,
    the attempt and the version to fetch). A task whose version is gone fails here, saying so."""
    _sent_to(node=node, task_id=task_id)
    attempt = prediction_task_claim(task_id=task_id, node_id=node.node_id)
    if attempt is None:
        raise StateConflict(f"prediction {task_id} is not pending: another attempt has it, or it has ended")
    task = PredictionTask.objects.select_related("version", "owner").defer("version__artifact").get(pk=task_id)
    if task.version is None:
        PredictionTask.objects.filter(pk=task_id, status=TaskStatus.RUNNING, attempts=attempt).update(
            status=TaskStatus.FAILED, finished_at=timezone.now(), error_status=409,
            error="the model version it was asked of no longer exists")
        raise StateConflict(f"prediction {task_id}: the model version it was asked of no longer exists; failed")
    version = task.version
    return {"task_id": str(task.pk), "attempt": attempt, "input_data": task.input_data,
            "owner": task.owner.username if task.owner else None,
            "version": {"id": str(version.pk), "number": version.number, "checksum": version.checksum,
                        "filename": version.filename, "size_bytes": version.size_bytes}}


def prediction_task_answer_from_node(*, node: Node, task_id, attempt: int, outcome: dict) -> bool:
    """The node API's answer: the run of ``attempt`` on ``node`` ended with ``outcome``."""
    _sent_to(node=node, task_id=task_id)
    return _record(task_id=task_id, attempt=attempt, node_pk=node.pk, outcome=outcome,
                   how=f"on node {node.node_id}")


def prediction_tasks_recover(*, run_deadline_seconds: float, max_attempts: int) -> tuple[int, int]:
    """Running tasks whose agent died (its node went offline, or the run is past its deadline)
    go back to pending for another agent, or fail with the reason once ``max_attempts`` runs
    have died. Returns (retried, failed). Each UPDATE re-checks ``status=running`` on the row
    itself, so an answer that lands meanwhile is never overwritten."""
    now = timezone.now()
    running = PredictionTask.objects.filter(status=TaskStatus.RUNNING)
    offline = Node.objects.filter(status=NodeStatus.OFFLINE).values("pk")
    causes = [
        ("its node went offline", Q(node__in=offline)),
        (f"it ran past the {run_deadline_seconds:g} s deadline", Q(started_at__lte=now - timedelta(
            seconds=run_deadline_seconds))),
    ]
    retried = failed = 0
    for cause, stuck in causes:
        note = f"{now.isoformat()} attempt lost: {cause} before its agent answered"
        failed += running.filter(stuck, attempts__gte=max_attempts).update(
            status=TaskStatus.FAILED, finished_at=now, error_status=503,
            error=f"no agent finished it in {max_attempts} attempts; the last was lost: {cause}",
            log=Concat(F("log"), Value(f"{note}; failed\n"), output_field=TextField()))
        retried += running.filter(stuck, attempts__lt=max_attempts).update(
            status=TaskStatus.PENDING, started_at=None,
            log=Concat(F("log"), Value(f"{note}; retried\n"), output_field=TextField()))
    if retried or failed:
        logger.warning("predictions: %s lost run(s) retried, %s failed after %s attempts", retried, failed,
                       max_attempts)
    return retried, failed


def prediction_tasks_dispatch_stranded(*, older_than_seconds: float, run_deadline_seconds: float,
                                       max_attempts: int, limit: int = 100) -> int:
    """The sweep: recover runs whose agent died, then send again prediction tasks still pending
    after a while (no node then, broker down, an agent that died holding the message, or just
    recovered); running one twice is harmless (idempotent). Returns how many were sent."""
    prediction_tasks_recover(run_deadline_seconds=run_deadline_seconds, max_attempts=max_attempts)
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = PredictionTask.objects.filter(status=TaskStatus.PENDING, created_at__lte=cutoff).order_by(
        "created_at").values_list("pk", flat=True)[:limit]
    return sum(prediction_task_dispatch(task_id=str(pk)) for pk in list(ids))
