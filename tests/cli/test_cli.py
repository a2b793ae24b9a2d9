"""``cnet`` as a user runs it: the installed executable, as a subprocess, against a live control
plane whose agent really runs the work."""

import json
import stat
from datetime import datetime, timedelta

import pytest
import yaml
from django.contrib.auth import get_user_model

from mlmodels.models import MLModel
from tests.helpers import wait_for, wait_status
from workloads.models import Workload, WorkloadStatus

pytestmark = pytest.mark.django_db(transaction=True)


def submitted(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def test_run_follow_streams_the_output_and_exits_with_the_workloads_exit_code(cnet, agent):
    result = cnet("run", "--follow", "--cpu", "0.1", "--memory", "64Mi", "--",
                  "sh", "-c", "echo hello from cnet; exit 3")
    assert result.returncode == 3, result.stderr
    workload_id, output = result.stdout.split("\n", 1)
    assert output.strip() == "hello from cnet"
    row = Workload.objects.get(pk=workload_id)
    assert (row.status, row.exit_code, row.memory_bytes, row.cpu_millicores) == ("failed", 3, 64 * 1024**2, 100)
    assert "Traceback" not in result.stderr and "failed" in result.stderr


def test_logs_follow_returns_when_the_workload_ends_and_tail_shows_the_last_lines(cnet, agent):
    workload_id = submitted(cnet("run", "--name", "counter", "--",
                                 "sh", "-c", "for i in 0 1 2; do echo line $i; sleep 0.2; done"))
    followed = cnet("logs", "-f", workload_id)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == ["line 0", "line 1", "line 2"]
    assert Workload.objects.get(pk=workload_id).status == WorkloadStatus.SUCCEEDED
    assert cnet("logs", workload_id, "--tail", "1").stdout.strip() == "line 2"
    assert cnet("logs", workload_id, "-o", "json").json()["lines"] == ["line 0", "line 1", "line 2"]


def test_plan_exits_0_when_placed_now_2_when_it_would_wait_and_1_when_nothing_could_hold_it(cnet, agent, node_id):
    now = cnet("plan", "--cpu", "0.5", "--", "true")
    assert now.returncode == 0, now.stderr
    assert f"would be placed on {node_id} now" in now.stdout and "chosen by default" in now.stdout
    assert not Workload.objects.exists()  # a plan submits nothing

    busy = submitted(cnet("run", "--cpu", "1", "--max-runtime", "600", "--", "sleep", "60"))
    started = wait_status(busy, WorkloadStatus.RUNNING).started_at
    waits = cnet("plan", "--cpu", "0.5", "--", "true")
    assert waits.returncode == 2, waits.stderr
    assert "would wait: #1 of 1 pending at priority 0 (0 placed before it)" in waits.stdout
    assert f"estimated start: {(started + timedelta(seconds=600)).isoformat()}" in waits.stdout
    assert f"{node_id}" in waits.stdout and "needs 0.5 CPU, 0 CPU free" in waits.stdout

    never = cnet("plan", "--cpu", "64", "-o", "json", "--", "true")
    assert never.returncode == 1, never.stderr
    assert never.json()["never_fits"] == {"node": node_id, "capacity": {"cpu": 1.0, "gpu": 0, "memory": 1024**3,
                                                                          "storage": 0},
                                          "capacity_human": "1 CPU, 0 GPU, 1.0 GiB, 0 B",
                                          "short": ["needs 64 CPU, 1 CPU free"]}


def test_a_job_file_of_several_workloads_is_submitted_in_file_order(cnet, agent, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump_all([
        {"name": "first", "type": "process", "requirements": {"cpu": 0.1, "memory": 1024**2},
         "config": {"command": "echo", "args": ["one"]}},
        {"name": "second", "type": "process", "requirements": {"cpu": 0.1, "memory": 1024**2},
         "config": {"command": "echo", "args": ["two"]}},
    ]))
    result = cnet("run", "-f", str(job), "-o", "json")
    assert result.returncode == 0, result.stderr
    assert [workload["name"] for workload in result.json()] == ["first", "second"]
    for workload in result.json():
        wait_status(workload["id"], WorkloadStatus.SUCCEEDED)
    assert cnet("run", "-f", str(job), "--cpu", "1").returncode == 2  # options are for a file of one


def test_a_job_file_with_a_dependency_is_one_request_and_the_dependent_runs_after(cnet, agent, tmp_path):
    job = tmp_path / "pipeline.yaml"
    job.write_text(yaml.safe_dump({"workloads": [
        {"key": "build", "name": "build", "type": "process", "requirements": {"cpu": 0.1},
         "config": {"command": "echo", "args": ["built"]}},
        {"key": "test", "name": "test", "type": "process", "requirements": {"cpu": 0.1},
         "depends_on": [{"workload": "build", "condition": "succeeded"}],
         "config": {"command": "echo", "args": ["tested"]}},
    ]}))
    planned = cnet("plan", "-f", str(job))
    assert planned.returncode == 2, planned.stderr  # the dependent waits for the other
    assert "would be placed on" in planned.stdout and "waits for its dependencies first" in planned.stdout

    result = cnet("run", "-f", str(job), "--follow")
    assert result.returncode == 0, result.stderr
    build_id, test_id, *output = result.stdout.splitlines()
    assert output == ["built", "tested"]
    build, test = Workload.objects.get(pk=build_id), Workload.objects.get(pk=test_id)
    assert (build.status, test.status) == ("succeeded", "succeeded") and test.started_at >= build.finished_at


def test_an_array_runs_each_instance_and_follow_waits_for_all(cnet, agent):
    result = cnet("run", "--count", "3", "--cpu", "0.1", "--follow", "--", "echo", "{index}")
    assert result.returncode == 0, result.stderr
    array_id = result.stdout.split()[0]
    assert "array " + array_id + ": 3 of 3 ended" in result.stderr
    instances = cnet("ps", "--array", array_id, "-o", "json").json()
    assert sorted(w["name"] for w in instances) == ["echo-0", "echo-1", "echo-2"]
    assert {w["status"] for w in instances} == {"succeeded"}


def test_ps_show_stop_and_rm(cnet, agent, node_id):
    workload_id = submitted(cnet("run", "--name", "sleeper", "--cpu", "0.2", "--", "sleep", "60"))
    wait_status(workload_id, WorkloadStatus.RUNNING)

    listed = cnet("ps", "--status", "running", "--name", "sleep")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:5] == ["ID", "NAME", "TYPE", "STATUS", "NODE"]
    assert row.split()[:5] == [workload_id, "sleeper", "process", "running", node_id]
    assert cnet("ps", "--status", "failed").stdout.splitlines()[1:] == []
    as_yaml = yaml.safe_load(cnet("ps", "-o", "yaml", "--node", node_id).stdout)
    assert [workload["id"] for workload in as_yaml] == [workload_id]

    shown = cnet("show", workload_id)
    assert shown.returncode == 0, shown.stderr
    assert "∅ → pending" in shown.stdout and "pending → scheduled" in shown.stdout
    assert "scheduled → running" in shown.stdout and "chosen by default" in shown.stdout
    as_json = cnet("-o", "json", "show", workload_id).json()
    placement = next(event for event in as_json["events"] if event["kind"] == "placement")
    assert placement["details"][-1]["node"] == node_id and placement["details"][-1]["fits"]

    stopped = cnet("stop", workload_id)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"{workload_id} stopping"
    wait_status(workload_id, WorkloadStatus.STOPPED)
    assert cnet("rm", workload_id).stdout.strip() == f"{workload_id} deleted"
    assert not Workload.objects.filter(pk=workload_id).exists()
    gone = cnet("rm", workload_id)
    assert gone.returncode == 1 and "(HTTP 404)" in gone.stderr and "Traceback" not in gone.stderr
    as_yaml = yaml.safe_load(cnet("rm", workload_id, "-o", "yaml").stdout)
    assert as_yaml[0]["id"] == workload_id and "(HTTP 404)" in as_yaml[0]["error"]


def test_nodes_show_capacity_health_and_parent_and_top_the_queue(cnet, agent, node_id):
    workload_id = submitted(cnet("run", "--cpu", "0.5", "--memory", "256Mi", "--", "sleep", "60"))
    wait_status(workload_id, WorkloadStatus.RUNNING)
    listed = cnet("nodes")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(node_id))
    assert "ready" in row and "0.5/1" in row and "256.0 MiB/1.0 GiB" in row and "██████░░░░░░" in row
    [node] = cnet("nodes", "-o", "json").json()
    assert (node["node_id"], node["allocated"]["cpu"], node["parent"]) == (node_id, 0.5, None)

    submitted(cnet("run", "--cpu", "1", "--", "true"))  # waits: half the node is taken
    top = cnet("top", "--once")
    assert top.returncode == 0, top.stderr
    assert "queue 1 pending" in top.stdout and "running 1" in top.stdout and workload_id in top.stdout
    assert cnet("top", "-o", "json").json()["pending"] == 1


def test_bad_input_prints_the_apis_message_without_a_traceback(cnet, agent):
    result = cnet("run", "--cpu", "-1", "--", "true")
    assert result.returncode == 1
    assert result.stderr.startswith("error: requirements.cpu:") and "Traceback" not in result.stderr
    assert not Workload.objects.exists()
    missing = cnet("show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and missing.stderr == "error: No Workload matches the given query. (HTTP 404)\n"
    unreadable = cnet("run", "-f", "/nonexistent/job.yaml")
    assert unreadable.returncode == 1 and "cannot read /nonexistent/job.yaml" in unreadable.stderr
    nothing = cnet("run")
    assert nothing.returncode == 2 and "give a command after `--`" in nothing.stderr


def test_a_missing_or_bad_token_says_how_to_log_in_and_login_keeps_the_token_mode_0600(cnet, token):
    missing = cnet("ps", CNET_TOKEN=None)
    assert missing.returncode == 1 and "not logged in" in missing.stderr and "cnet login" in missing.stderr
    bad = cnet("ps", CNET_TOKEN="not-a-token")
    assert bad.returncode == 1 and "refused the token" in bad.stderr and "cnet login" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr

    refused = cnet("login", "--token", "not-a-token", CNET_TOKEN=None)
    assert refused.returncode == 1 and not (cnet.home / ".config" / "cnet" / "config.json").exists()
    logged_in = cnet("login", "--server", cnet.server, "--token", token, CNET_TOKEN=None, CNET_SERVER=None)
    assert logged_in.returncode == 0, logged_in.stderr
    kept = cnet.home / ".config" / "cnet" / "config.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads(kept.read_text()) == {"server": cnet.server, "token": token}
    assert cnet("ps", "-o", "json", CNET_TOKEN=None, CNET_SERVER=None).json() == []


def test_models_versions_upload_with_progress_promote_and_list(cnet, tmp_path):
    model = MLModel.objects.create(owner=get_user_model().objects.get(username="cli"), name="lr",
                                   model_type="linear_regression", model_path="models/lr.joblib")
    artifact = tmp_path / "lr.joblib"
    artifact.write_bytes(b"x" * 300_000)
    # On a terminal (stderr here), the upload shows its progress.
    first, progress = cnet.on_terminal("models", "versions", str(model.pk), "--upload", str(artifact),
                                       "--metrics", '{"r2": 0.9}')
    assert first.returncode == 0, progress
    assert first.stdout.startswith("version 1 (") and first.stdout.endswith(", 293.0 KiB) promoted\n")
    assert "uploading lr.joblib" in progress
    second = cnet("models", "versions", str(model.pk), "--upload", str(artifact), "-o", "json").json()
    assert (second["number"], second["promoted"], second["size_bytes"]) == (2, False, 300_000)
    promoted = cnet("models", "promote", str(model.pk), second["id"])
    assert promoted.returncode == 0 and promoted.stdout.strip() == f"version 2 of {model.pk} promoted"
    versions = cnet("models", "versions", str(model.pk), "-o", "json").json()
    assert [(v["number"], v["promoted"], v["metrics"]) for v in versions] == [(2, True, {}), (1, False, {"r2": 0.9})]
    assert cnet("models", "versions", "lr", "-o", "json").json() == versions  # a model by its name
    unknown = cnet("models", "versions", "no-such-model")
    assert unknown.returncode == 1 and "no model is named 'no-such-model'" in unknown.stderr
    [listed] = cnet("models", "list", "-o", "json").json()
    assert listed["id"] == str(model.pk)
    assert str(model.pk) in cnet("models", "list").stdout
    refused = cnet("models", "predict", str(model.pk), "not json")
    assert refused.returncode == 2 and "INPUT must be JSON" in refused.stderr


def test_shell_completion(cnet):
    script = cnet("completion", "bash")
    assert script.returncode == 0 and "_CNET_COMPLETE" in script.stdout
    completed = cnet(COMP_WORDS="cnet mo", COMP_CWORD="1", _CNET_COMPLETE="bash_complete")
    assert completed.stdout.split() == ["plain,models"]


def test_ps_and_show_say_where_pending_work_stands_and_when_it_should_start(cnet, agent):
    holder = submitted(cnet("run", "--cpu", "1", "--max-runtime", "600", "--", "sleep", "60"))
    started = wait_status(holder, WorkloadStatus.RUNNING).started_at
    first, second = (submitted(cnet("run", "--name", name, "--cpu", "1", "--", "true")) for name in ("first", "second"))
    limit = started + timedelta(seconds=600)
    by = limit.astimezone()  # as the user's terminal shows it

    def queue_cells() -> dict:
        listed = cnet("ps", "--status", "pending")
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert "QUEUE" in header.split()
        return {row.split()[0]: row for row in rows}

    def around(position: int) -> str:
        # ps names the day too when the estimate falls on another one (a run just before midnight)
        today = datetime.now().astimezone().date()
        return f"#{position} · ~{by:%H:%M}" if by.date() == today else f"#{position} · ~{by:%b %d %H:%M}"

    rows = queue_cells()
    assert around(1) in rows[first] and around(2) in rows[second]
    shown = cnet("show", second)
    assert shown.returncode == 0, shown.stderr
    assert "#2 of 2 pending at priority 0 (1 placed before it)" in shown.stdout
    assert f"estimated start  {by:%Y-%m-%d %H:%M:%S}" in shown.stdout
    assert cnet("show", second, "-o", "json").json()["workload"]["queue"]["estimated_start"] == limit.isoformat()

    assert cnet("stop", first).returncode == 0
    assert around(1) in queue_cells()[second]  # the queue moved up
    Workload.objects.filter(pk=holder).update(max_runtime_seconds=None)
    assert "#1 · unknown" in queue_cells()[second]
    assert "estimated start  unknown (work in its way has no time limit)" in cnet("show", second).stdout


def test_health_and_a_models_training_logs_and_tasks(cnet, agent):
    healthy = cnet("health")
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.strip() == "database ok, broker ok"

    deployed = cnet("models", "deploy", "--name", "echoer", "--model-type", "linear_regression",
                    "--model-path", "models/echoer.joblib", "--cpu", "0.1", "--memory", "64Mi",
                    "--", "sh", "-c", "echo training echoer")
    assert deployed.returncode == 0, deployed.stderr
    model_id = deployed.stdout.strip()
    wait_for(lambda: "training echoer" in cnet("models", "logs", "echoer").stdout, timeout=30,
             message="the training run's output")
    assert cnet("models", "logs", model_id, "-o", "json").json()["model_id"] == model_id
    tasks = cnet("models", "tasks")
    assert tasks.returncode == 0, tasks.stderr
    header, *rows = tasks.stdout.splitlines()
    assert header.split()[:4] == ["ID", "KIND", "NAME", "STATUS"] and any("echoer" in row for row in rows)
    assert any(task["model_id"] == model_id for task in cnet("models", "tasks", "-o", "json").json())
