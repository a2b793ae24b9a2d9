"""``make run`` on a machine whose Python workload uids cannot run (a venv under a 0700 /root)."""

import os
import sys

from cnetsite.management.commands.up import isolation_off_for_this_python
from workloads.executors.reach import others_may_run


def test_isolation_is_turned_off_for_the_children_only_where_workload_uids_could_not_run_python(monkeypatch):
    monkeypatch.delenv("CNET_WORKLOAD_ISOLATION", raising=False)
    unreachable = os.geteuid() == 0 and not others_may_run(sys.executable)
    assert isolation_off_for_this_python() is unreachable
    assert os.environ.get("CNET_WORKLOAD_ISOLATION") == ("0" if unreachable else None)


def test_an_explicit_setting_is_obeyed(monkeypatch):
    monkeypatch.setenv("CNET_WORKLOAD_ISOLATION", "1")
    assert isolation_off_for_this_python() is False
    assert os.environ["CNET_WORKLOAD_ISOLATION"] == "1"
