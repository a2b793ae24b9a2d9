"""The kind registry: what registers, what is refused, what the agent and placement read from it."""

import dataclasses

import pytest

from workloads.executors.base import Executor, ExecutorError, executor_for, executors
from workloads.executors.process_kind import KIND as PROCESS
from workloads.kinds import UnknownKind, kind_capabilities, kind_capability, kind_get, kinds, register_kind


def test_the_apps_register_process_container_and_mlmodel_each_with_an_executor_an_agent_can_make():
    assert [kind.name for kind in kinds()] == ["process", "container", "mlmodel"]
    for kind in kinds():
        executor = executor_for(kind.name)
        assert isinstance(executor, Executor)
        assert executor_for(kind.name) is executor  # made once per process
    assert executors() == [executor_for(kind.name) for kind in kinds()]


def test_an_unknown_type_has_no_executor_and_is_named_in_the_error():
    with pytest.raises(ExecutorError, match="cannot run vm workloads"):
        executor_for("vm")
    with pytest.raises(UnknownKind, match="unknown workload type 'vm'; known: process, container, mlmodel"):
        kind_get("vm")


def test_a_second_kind_of_a_name_and_a_name_longer_than_the_column_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_kind(PROCESS)
    with pytest.raises(ValueError, match="longer than the 16 characters"):
        register_kind(dataclasses.replace(PROCESS, name="a-very-long-kind-name"))
    assert [kind.name for kind in kinds()] == ["process", "container", "mlmodel"]


def test_placement_asks_for_each_kinds_capability_and_a_type_unknown_here_for_its_own_name():
    assert [kind_capability(name) for name in ("process", "container", "mlmodel", "vm")] == [
        None, "container", "mlmodel", "vm"]


def test_the_agent_reports_every_kind_under_its_capability_probed():
    capabilities = kind_capabilities()
    assert capabilities["process"] == capabilities["mlmodel"] == {"available": True}
    assert set(capabilities) == {"process", "container", "mlmodel"}
    engine = capabilities["container"]
    assert engine["available"] is True or "no container engine reachable" in engine["reason"]
