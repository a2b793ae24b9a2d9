"""A workload kind defined only in this module, registered for a test's duration, is a full kind:
the API takes it, placement finds a node with its capability, an in-process agent runs it, and the
console's submit form offers it with its own inputs. Nothing in ``workloads/`` names it."""

import sys
import uuid

import pytest
from django import forms
from rest_framework import serializers

from core.fields import NoUnknownFieldsMixin, StrictCharField
from tests.helpers import in_process_agents, make_node, supervise_until_done
from workloads.agent.config import Overrides, load_agent_settings
from workloads.executors.base import workload_env
from workloads.executors.limits import Limits
from workloads.executors.process import ProcessExecutor, spawn
from workloads.forms import filled
from workloads.kinds import Kind, register_kind, unregister_kind
from workloads.models import Workload, WorkloadLog, WorkloadStatus


class GreetingConfigSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    whom = StrictCharField(max_length=64)


class GreetingExecutor(ProcessExecutor):
    """Greets ``whom`` from a Python process; re-adopting one is the process executor's business."""

    def start(self, workload, context):
        argv = [sys.executable, "-c", "import sys; print('hello,', sys.argv[1])", workload.config["whom"]]
        return spawn(workload_id=str(workload.pk), argv=argv, env=workload_env(workload, context), cwd=context.work_dir,
                     context=context, limits=Limits.of(workload))


GREETING = Kind(
    name="greeting",
    label="Greeting",
    config_serializer=GreetingConfigSerializer,
    executor=f"{__name__}.GreetingExecutor",
    capability="greeter",
    form_fields={"whom": forms.CharField(required=False, label="Whom to greet")},
    form_config=lambda values: filled(values, "whom"),
)


@pytest.fixture
def greeting():
    register_kind(GREETING)
    yield GREETING
    unregister_kind(GREETING.name)


def plain_node() -> str:
    """A node that runs processes only: no greeter."""
    return make_node(f"plain-{uuid.uuid4().hex[:6]}").node_id


@pytest.mark.django_db(transaction=True)
def test_it_is_submitted_through_the_api_placed_where_its_capability_is_and_run_by_an_agent(greeting, api, live_server):
    capabilities = load_agent_settings(None, Overrides()).capabilities  # what runagent reports: from the registry
    assert capabilities["greeter"] == {"available": True}
    origin = plain_node()
    with in_process_agents(live_server.url) as make_agent:
        agent = make_agent(f"greeter-{uuid.uuid4().hex[:6]}", parent=origin, capabilities=capabilities)
        agent.register()
        response = api.post("/api/workloads", {"name": "hi", "type": "greeting", "node": origin,
                                               "config": {"whom": "plugins"}}, format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        # Submitted at the plain node, placed below it on the one that can greet.
        assert (body["status"], body["node"]) == ("scheduled", agent.config.node_id)

        agent.start(body["id"])
        ended = supervise_until_done(agent, Workload.objects.get(pk=body["id"]))
        agent.shutdown()
    assert (ended.status, ended.reason) == (WorkloadStatus.SUCCEEDED, "exited with code 0")
    assert WorkloadLog.objects.filter(workload=ended, text="hello, plugins\n").exists()
    listed = api.get("/api/workloads", {"type": "greeting"}).json()
    assert [item["id"] for item in listed] == [body["id"]]


@pytest.mark.django_db
def test_without_a_node_that_has_its_capability_it_waits_saying_why(greeting, api, live_server):
    origin = plain_node()
    response = api.post("/api/workloads", {"name": "hi", "type": "greeting", "node": origin,
                                           "config": {"whom": "nobody"}}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "pending"
    assert f"{origin}: cannot run greeter workloads" in response.json()["reason"]


@pytest.mark.django_db
def test_its_config_is_checked_by_its_own_serializer(greeting, api, live_server):
    response = api.post("/api/workloads", {"name": "hi", "type": "greeting", "config": {"whom": 5, "loud": True}},
                        format="json")
    assert response.status_code == 400
    assert set(response.json()["config"]) == {"loud"}  # unknown keys are refused before the rest is read
    response = api.post("/api/workloads", {"name": "hi", "type": "greeting", "config": {"whom": 5}}, format="json")
    assert response.status_code == 400 and "whom" in response.json()["config"]


@pytest.mark.django_db
def test_an_unknown_type_is_refused_naming_type_and_every_registered_kind(greeting, api, live_server):
    response = api.post("/api/workloads", {"name": "x", "type": "vm", "config": {}}, format="json")
    assert response.status_code == 400
    assert response.json()["type"] == ["'vm' is not a workload type here; known: process, container, mlmodel, "
                                       "greeting."]


@pytest.mark.django_db
def test_the_console_submit_form_offers_it_with_its_inputs_and_submits_it(greeting, staff_client):
    page = staff_client.get("/admin/workloads/workload/add/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="greeting"' in html and "<span>Greeting</span>" in html
    assert '<div class="field-row" data-field="whom" data-types="greeting">' in html
    assert 'data-field="command_line" data-types="process container mlmodel"' in html  # not shown for greetings

    node = make_node(f"greeter-{uuid.uuid4().hex[:6]}", capabilities={"greeter": {"available": True}})
    response = staff_client.post("/admin/workloads/workload/add/", {
        "name": "from-console", "type": "greeting", "whom": "console", "node": node.node_id,
        "command_line": "sh -c 'unclosed",  # another kind's input, hidden: it does not stop this one
    })
    workload = Workload.objects.get(name="from-console")
    assert response.status_code == 302 and response["Location"].endswith(f"/{workload.pk}/change/")
    assert (workload.type, workload.config, workload.node) == ("greeting", {"whom": "console"}, node)
