"""The process executor on real processes; no database (workloads are unsaved rows)."""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_for
from workloads.executors.base import AgentContext, ExecutorError
from workloads.executors.limits import CGROUP_ROOT, CgroupLimiter, CgroupV1Limiter, Limits, detect_limiter
from workloads.executors.process import ProcessExecutor, log_path
from workloads.models import Workload

PY = sys.executable


@pytest.fixture
def context(tmp_path) -> AgentContext:
    (tmp_path / "work" / "sub").mkdir(parents=True)
    return AgentContext(node_id="unit", work_dir=tmp_path / "work", log_dir=tmp_path / "logs",
                        limiter=CgroupLimiter(group="cnet/unit"))


@pytest.fixture
def started():
    handles = []
    yield handles
    for handle in handles:
        handle.kill()
        handle.cleanup()


def workload(command: str, *args: str, memory: int = 0, cpu: int = 0, **config) -> Workload:
    return Workload(id=uuid.uuid4(), type="process", memory_bytes=memory, cpu_millicores=cpu,
                    config={"command": command, "args": list(args), **config})


def run(context, started, wl):
    handle = ProcessExecutor().start(wl, context)
    started.append(handle)
    return handle, wait_for(handle.poll, timeout=10, message="process exit")


def test_argv_is_not_a_shell_env_is_merged_and_cwd_is_the_working_dir(context, started, monkeypatch):
    monkeypatch.setenv("FROM_AGENT", "agent")
    code = "import os, sys; print(sys.argv[1:], os.getcwd(), os.environ['FROM_AGENT'], os.environ['TEST'], " \
           "os.environ['CNET_WORKLOAD_ID'])"
    wl = workload(PY, "-c", code, "$HOME", "a b;echo x", env={"TEST": "value"}, working_dir="sub")
    handle, exit_ = run(context, started, wl)
    assert (exit_.code, exit_.reason) == (0, "exited with code 0")
    out = "".join(text for stream, text in handle.read_logs(final=True) if stream == "stdout")
    assert out.strip() == f"['$HOME', 'a b;echo x'] {context.work_dir / 'sub'} agent value {wl.pk}"


def test_output_goes_to_per_stream_log_files_and_is_read_in_whole_lines(context, started):
    wl = workload(PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.stdout.write('tail')")
    handle, _ = run(context, started, wl)
    assert dict(handle.read_logs()) == {"stdout": "out\n", "stderr": "err\n"}  # partial line held back
    assert handle.read_logs(final=True) == [("stdout", "tail")]
    assert log_path(context.log_dir, str(wl.pk), "stdout").read_text() == "out\ntail"
    assert handle.offsets() == {"stdout": 8, "stderr": 4}


def test_exit_codes_and_signals_are_reported(context, started):
    _, failed = run(context, started, workload(PY, "-c", "raise SystemExit(3)"))
    assert (failed.code, failed.reason, failed.oom) == (3, "exited with code 3", False)
    _, killed = run(context, started, workload(PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert (killed.code, killed.reason) == (-9, "killed by signal SIGKILL")


def test_each_workload_leads_its_own_process_group_and_terminate_reaches_the_group(context, started):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
           "print('ready', flush=True); time.sleep(60)"
    handle = ProcessExecutor().start(workload(PY, "-c", code), context)
    started.append(handle)
    wait_for(lambda: handle.read_logs(), timeout=10, message="child started")
    leader = psutil.Process(handle.pid)
    assert os.getpgid(handle.pid) == handle.pid and os.getsid(handle.pid) == handle.pid
    child = leader.children()[0]
    assert os.getpgid(child.pid) == handle.pid
    handle.terminate()
    exit_ = wait_for(handle.poll, timeout=10, message="exit on SIGTERM")
    assert exit_.code == -signal.SIGTERM
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=5,
             message="the group's child died too")


def test_unknown_command_and_escaping_working_dir_are_refused(context):
    with pytest.raises(ExecutorError, match="command not found"):
        ProcessExecutor().start(workload("no-such-command-cnet"), context)
    with pytest.raises(ExecutorError, match="leaves the agent's work folder"):
        ProcessExecutor().start(workload(PY, working_dir="../.."), context)


def test_a_surviving_process_is_adopted_from_its_runtime_and_a_dead_one_is_not(context, started):
    wl = workload(PY, "-c", "import time; print('up', flush=True); time.sleep(60)")
    handle = ProcessExecutor().start(wl, context)
    started.append(handle)
    wait_for(lambda: handle.read_logs(), timeout=10, message="output")
    wl.runtime = {**handle.runtime(), "log_offsets": handle.offsets()}
    adopted = ProcessExecutor().adopt(wl, context)
    assert adopted.pid == handle.pid and adopted.poll() is None and adopted.read_logs() == []
    handle.kill()
    wait_for(handle.poll, timeout=5, message="exit")
    assert ProcessExecutor().adopt(wl, context) is None


def test_without_cgroups_the_watchdog_knows_the_memory_limit(context, started):
    handle = ProcessExecutor().start(workload("sleep", "30", memory=64 << 20, cpu=500), context)
    started.append(handle)
    assert handle.runtime()["limits"] == "watchdog" and handle.runtime()["memory_limit_bytes"] == 64 << 20
    assert handle.memory_bytes() > 0


@pytest.mark.skipif(not os.access("/sys/fs/cgroup/memory/memory.limit_in_bytes", os.W_OK)
                    or os.path.exists("/sys/fs/cgroup/cgroup.controllers"), reason="needs writable cgroup v1")
def test_cgroup_v1_limits_memory_and_cpu_and_reports_oom(context, started):
    limiter = detect_limiter(node_id=f"unit-{uuid.uuid4().hex[:8]}")
    assert isinstance(limiter, CgroupV1Limiter)
    context.limiter = limiter
    code = "heap = []\nwhile True: heap.append(bytearray(8 << 20))"
    handle = ProcessExecutor().start(workload(PY, "-c", code, memory=64 << 20, cpu=250), context)
    started.append(handle)
    # The order they are joined in: cpu last, so no step of the launcher runs under the quota.
    memory, pids, freezer, cpu = (Path(p) for p in handle.runtime()["cgroups"])
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert (pids / "pids.max").read_text().strip() == str(Limits.of(Workload(config={})).pids)
    exit_ = wait_for(handle.poll, timeout=20, message="oom kill")
    assert (exit_.reason, exit_.oom) == ("memory limit exceeded", True)
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    handle.cleanup()
    assert not any(folder.exists() for folder in (memory, cpu, pids, freezer))
    for base in ("memory", "cpu", "pids", "freezer"):
        Path(f"/sys/fs/cgroup/{base}/{limiter.group}").rmdir()


def test_a_process_gone_before_it_is_moved_in_leaves_no_cgroup_behind():
    limiter = detect_limiter(node_id=f"unit-{uuid.uuid4().hex[:8]}")
    if limiter.kind != "cgroup2":
        pytest.skip("only cgroup v2 moves a process in after its start (v1: it joins before it execs)")
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now, as for a quick job that has exited
    workload_id = str(uuid.uuid4())
    with pytest.raises(ProcessLookupError):
        limiter.apply(workload_id=workload_id, pid=gone.pid, limits=Limits(64 << 20, 500))
    roots = [CGROUP_ROOT / limiter.group]
    left = [root / workload_id for root in roots if (root / workload_id).exists()]
    for folder in [*left, *roots]:
        if folder.exists():
            folder.rmdir()
    assert not left


def test_limits_dataclass_zero_means_no_limit(context, started):
    extra = CgroupLimiter(group="cnet/unit").apply(workload_id="x", pid=os.getpid(), limits=Limits(0, 0))
    assert extra == {}


def test_the_agents_credentials_are_not_passed_to_workloads(context, started, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://user:hunter2@db/cnet")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    monkeypatch.setenv("FROM_AGENT", "agent")
    code = "import os; print(sorted(k for k in os.environ if k in {'DATABASE_URL', 'SECRET_KEY', " \
           "'AWS_SECRET_ACCESS_KEY', 'FROM_AGENT'}))"
    handle, _ = run(context, started, workload(PY, "-c", code))
    output = "".join(text for stream, text in handle.read_logs(final=True) if stream == "stdout")
    assert output.strip() == "['FROM_AGENT']"
