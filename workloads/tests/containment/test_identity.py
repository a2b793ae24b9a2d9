"""Issue 15, point 1: each workload runs as an unprivileged uid of its own, in a workspace of its
own, and reads none of the agent's or the control plane's secrets. Through the API, as a user
without staff rights, on a real agent (root here) with real processes."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from workloads.executors.identity import uid_range

from .conftest import ADMIN_PASSWORD, SECRET_KEY, needs_root, output, run_to_end, submit

pytestmark = [pytest.mark.django_db(transaction=True), needs_root]


def test_the_secrets_probe_prints_no_secret_and_a_uid_that_is_not_root(user_api, make_site_agent):
    agent = make_site_agent()
    agent_environ = f"/proc/{os.getpid()}/environ"
    probe = (f"id -u; id -G; cat var/secret_key var/admin_password; cat {settings.DATA_DIR}/secret_key; "
             f"cat {settings.DATA_DIR}/test.sqlite3 | head -c 64; cat {agent_environ} | head -c 64; ls var; "
             "grep NoNewPrivs /proc/self/status")
    workload = submit(user_api, agent.config.node_id, "sh", "-c", probe)
    row = run_to_end(agent, workload["id"])
    logs = output(user_api, workload["id"])

    uid, groups = (int(line) for line in logs.splitlines()[:2])
    assert uid != 0 and uid in uid_range(settings.CNET_WORKLOAD_UID_RANGE)
    assert groups == uid  # its own group only: no supplementary groups
    assert "NoNewPrivs:\t1" in logs  # setuid programs give it nothing
    assert SECRET_KEY not in logs and ADMIN_PASSWORD not in logs
    assert settings.SECRET_KEY not in logs
    assert "DJANGO_SETTINGS_MODULE" not in logs and "SQLite" not in logs
    assert row.runtime["uid"] == uid
    agent.shutdown()


# A library that writes the uid of every process that loads it.
UID_PROBE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void probe(void) {
    FILE *out = fopen(getenv("UID_PROBE_OUT"), "a");
    if (out) { fprintf(out, "%d\n", (int)getuid()); fclose(out); }
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build the preloaded library")
def test_nothing_runs_as_root_with_the_environment_the_workload_names(user_api, make_site_agent):
    """An ``LD_PRELOAD`` in its ``env`` is obeyed by every program that is given that environment:
    each must already run as its uid (a root one would run the library as root)."""
    probe = Path(tempfile.mkdtemp(prefix="cnet-uid-probe-", dir="/tmp"))  # where its uid can reach
    try:
        probe.chmod(0o777)  # the workload's uid writes its line here too
        (probe / "probe.c").write_text(UID_PROBE_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", probe / "probe.so", probe / "probe.c"], check=True)
        agent = make_site_agent()
        workload = submit(user_api, agent.config.node_id, "true",
                          env={"LD_PRELOAD": str(probe / "probe.so"), "UID_PROBE_OUT": str(probe / "uids")})
        row = run_to_end(agent, workload["id"])
        agent.shutdown()
        uids = [int(line) for line in (probe / "uids").read_text().split()]
    finally:
        shutil.rmtree(probe)

    assert row.status == "succeeded"
    assert 0 not in uids  # no program of its launch ran as root
    assert set(uids) == {row.runtime["uid"]}  # the workload, and any step of its launch given the variable


TRICKY = "it's \"quoted\" $HOME `id` \\ ünï\nsecond line"


def test_its_environment_arrives_exactly_after_the_switch(user_api, make_site_agent):
    """The environment is handed to the launcher's shell once it runs as the workload's uid: every
    byte of a value arrives (quotes, ``$``, backquotes, a newline), and nothing of the agent's."""
    agent = make_site_agent()
    workload = submit(user_api, agent.config.node_id, "sh", "-c", 'printf %s "$TRICKY"; printf "|%s|" "$(id -u)"; '
                      "env | cut -d= -f1 | tr '\\n' ' '",
                      env={"TRICKY": TRICKY})
    row = run_to_end(agent, workload["id"])
    logs = output(user_api, workload["id"])
    agent.shutdown()

    value, uid, names = logs.split("|")
    assert row.status == "succeeded" and value == TRICKY and int(uid) == row.runtime["uid"]
    assert {"TRICKY", "CNET_WORKLOAD_ID", "CNET_NODE_ID", "PATH"} <= set(names.split())
    assert "DJANGO_SETTINGS_MODULE" not in names


def test_two_running_workloads_have_different_uids_and_cannot_signal_each_other(user_api, make_site_agent):
    agent = make_site_agent(cpu=2)
    first = submit(user_api, agent.config.node_id, "sleep", "30")
    agent.start(first["id"])
    victim = agent.handles[first["id"]].handle
    second = submit(user_api, agent.config.node_id, "sh", "-c", f"id -u; kill -9 {victim.pid}; echo kill=$?")
    row = run_to_end(agent, second["id"])

    logs = output(user_api, second["id"])
    assert int(logs.splitlines()[0]) != victim.identity.uid
    assert "kill=1" in logs  # not permitted
    assert victim.poll() is None
    assert row.status == "succeeded"
    agent.shutdown()


def test_a_workload_reads_the_files_it_names_and_writes_only_into_its_own_workspace(user_api, make_site_agent,
                                                                                    site):
    agent = make_site_agent()
    script = ("cat examples/hello.txt; echo artifact > models/out.txt; cat models/out.txt; pwd; "
              "touch examples/ml/x; echo t=$?")
    workload = submit(user_api, agent.config.node_id, "sh", "-c", script, working_dir=".")
    row = run_to_end(agent, workload["id"])

    logs = output(user_api, workload["id"])
    assert "read through the workspace" in logs and "artifact" in logs
    assert "t=1" in logs  # folders deeper than the top's own keep their owner: read-only to it
    assert str(site) not in logs  # it runs in its workspace, not in the work folder itself
    assert not (site / "models" / "out.txt").exists()  # its writes are its own, never the work folder's
    assert row.status == "succeeded"
    assert not Path(logs.splitlines()[2]).exists()  # the workspace went with it
    agent.shutdown()


def test_the_data_folder_is_private(make_site_agent, site):
    make_site_agent()
    assert (site / "var").stat().st_mode & 0o777 == 0o700
    assert Path(settings.DATA_DIR).stat().st_mode & 0o777 == 0o700
