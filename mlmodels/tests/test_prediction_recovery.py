"""A prediction task whose agent died while it ran: the sweep retries it, then fails it with the reason.

With real agents in this process (over the node API) and the clock moved instead of waited for.
"The agent took it and died" is the claim an agent makes before it predicts
(``prediction_task_claim``) with no answer after it; the sweep is the Celery task beat runs on
the control queue.
"""

from datetime import UTC, datetime

import pytest
import time_machine

from mlmodels.agentside import prediction_run
from mlmodels.models import MLModel, PredictionTask, TaskStatus
from mlmodels.predictions import prediction_task_claim, prediction_task_create
from mlmodels.services import model_version_create
from mlmodels.tasks import MAX_ATTEMPTS, RUN_DEADLINE_SECONDS, SWEEP_AFTER_SECONDS, dispatch_stranded_predictions
from nodes.services import node_mark_offline
from tests.helpers import ML_NODE_CAPABILITIES, in_process_agents

from .conftest import linear_artifact

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def make_agent(live_server):
    """``make_agent(node_id)``: a registered in-process agent of a node that runs models."""
    with in_process_agents(live_server.url) as make:
        def registered(node_id: str):
            agent = make(node_id, capabilities=ML_NODE_CAPABILITIES)
            agent.register()
            return agent

        yield registered


@pytest.fixture
def agent_a(make_agent):
    return make_agent("agent-a")


@pytest.fixture
def task(clock, agent_a, admin_user) -> PredictionTask:
    """A prediction task, sent to agent-a (the only node that runs models) as it is created."""
    model = MLModel.objects.create(owner=admin_user, name="lr", model_type="linear_regression",
                                   model_path="models/lr.joblib")
    model_version_create(model=model, data=linear_artifact(), filename="lr.joblib", source="upload")
    model.refresh_from_db()
    return prediction_task_create(model=model, input_data=5.5, owner=admin_user)


def reload(task: PredictionTask) -> PredictionTask:
    return PredictionTask.objects.get(pk=task.pk)


def test_a_run_past_its_deadline_goes_back_to_pending_counted_and_the_next_agent_answers(clock, task, agent_a):
    assert prediction_task_claim(task_id=task.pk, node_id="agent-a") == 1  # then its agent dies
    clock.shift(RUN_DEADLINE_SECONDS - 1)
    assert dispatch_stranded_predictions() == 0
    assert reload(task).status == TaskStatus.RUNNING  # still within its deadline: left alone

    clock.shift(2)
    assert dispatch_stranded_predictions() == 1  # recovered, and sent again to a ready node
    retried = reload(task)
    assert retried.status == TaskStatus.PENDING and retried.attempts == 1 and retried.started_at is None
    assert f"ran past the {RUN_DEADLINE_SECONDS} s deadline" in retried.log and "retried" in retried.log

    assert prediction_run(agent_a, str(task.pk))  # what the next agent's message does
    answered = reload(task)
    assert answered.status == TaskStatus.SUCCEEDED and answered.attempts == 2
    assert answered.result["prediction"] == pytest.approx(14.0)
    assert "retried" in answered.log and "predicted with version 1" in answered.log


def test_a_run_on_a_node_that_went_offline_is_retried_at_once_elsewhere(clock, task, make_agent):
    prediction_task_claim(task_id=task.pk, node_id="agent-a")
    assert reload(task).node.node_id == "agent-a"  # the record says who runs it
    agent_b = make_agent("agent-b")
    clock.shift(SWEEP_AFTER_SECONDS + 1)  # far inside the run deadline
    node_mark_offline(node_id="agent-a")
    assert dispatch_stranded_predictions() == 1  # to agent-b, the only ready node left
    retried = reload(task)
    assert retried.status == TaskStatus.PENDING and retried.attempts == 1
    assert "its node went offline" in retried.log

    assert not prediction_run(make_agent("agent-c"), str(task.pk))  # not sent to it: refused, nothing run
    assert prediction_run(agent_b, str(task.pk))
    answered = reload(task)
    assert answered.status == TaskStatus.SUCCEEDED and answered.node.node_id == "agent-b"


def test_after_the_last_attempt_dies_it_fails_with_the_reason(api, clock, task):
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert prediction_task_claim(task_id=task.pk, node_id="agent-a") == attempt
        clock.shift(RUN_DEADLINE_SECONDS + 1)
        dispatch_stranded_predictions()
    failed = reload(task)
    assert failed.status == TaskStatus.FAILED and failed.attempts == MAX_ATTEMPTS
    assert failed.error == (f"no agent finished it in {MAX_ATTEMPTS} attempts; the last was lost: "
                            f"it ran past the {RUN_DEADLINE_SECONDS} s deadline")
    assert failed.error_status == 503 and failed.finished_at is not None
    assert failed.log.count("retried") == MAX_ATTEMPTS - 1 and failed.log.count("; failed") == 1
    assert dispatch_stranded_predictions() == 0  # nothing left to send
    shown = api.get(f"/api/tasks/{task.pk}").data
    assert shown["status"] == "failed" and shown["error"] == failed.error


def test_a_retried_task_is_claimed_once_more_however_often_its_message_arrives(clock, task):
    prediction_task_claim(task_id=task.pk, node_id="agent-a")
    clock.shift(RUN_DEADLINE_SECONDS + 1)
    dispatch_stranded_predictions()
    assert prediction_task_claim(task_id=task.pk, node_id="agent-a") == 2  # the retry's agent
    assert prediction_task_claim(task_id=task.pk, node_id="agent-a") is None  # a redelivered message
    assert reload(task).attempts == 2
