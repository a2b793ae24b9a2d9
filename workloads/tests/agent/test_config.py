"""The seed's YAML configs, flag overrides and the -config spelling; no database."""

import subprocess
from pathlib import Path

import pytest

from workloads.agent.config import ConfigError, Overrides, load_agent_settings

REPO = Path(__file__).resolve().parents[3]
GiB = 1024**3


def test_each_demo_of_the_shipped_configs_runs_on_one_machine_on_the_seeds_ports():
    configs = {name: load_agent_settings(str(REPO / "configs" / f"config_{name}.yaml"), Overrides())
               for name in ("parent", "child", "peer1", "peer2")}
    assert [c.node_id for c in configs.values()] == ["parent", "child", "peer1", "peer2"]
    for first, second in (("parent", "child"), ("peer1", "peer2")):  # two terminals each
        demo = {name: configs[name] for name in (first, second)}
        endpoints = {f"{c.address}:{c.port}": name for name, c in demo.items()}
        assert len(endpoints) == 2 and configs[first].port == 8080  # the seed's curls reach the first
    assert configs["child"].parent == "127.0.0.1:8080" and configs["child"].peers == []
    assert configs["parent"].parent is None and configs["parent"].peers == []
    assert configs["peer1"].peers == ["127.0.0.1:8081"] and configs["peer2"].peers == ["127.0.0.1:8080"]
    single = load_agent_settings(str(REPO / "config.yaml"), Overrides())
    assert (single.node_id, single.port, single.capacity.cpu) == ("agent-1", 8080, 4000)
    assert single.capacity.memory == 8 * GiB
    assert not single.server_named  # so it runs a node of its own


def test_flags_override_the_file():
    config = load_agent_settings(str(REPO / "configs" / "config_child.yaml"),
                                 Overrides(cpu=0.5, memory=GiB, node_id="c2", parent="parent", peers=["x:1"]))
    assert (config.node_id, config.capacity.cpu, config.capacity.memory) == ("c2", 500, GiB)
    assert (config.parent, config.peers, config.port) == ("parent", ["x:1"], 8081)


def test_bad_config_files_are_refused_with_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent_settings(str(tmp_path / "missing.yaml"), Overrides())
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_agent_settings(str(tmp_path / "list.yaml"), Overrides())


@pytest.mark.parametrize("flag", [["-config", "{}"], ["--config", "{}"], ["-config={}"]])
def test_the_launcher_accepts_the_seeds_config_flags_from_any_folder(tmp_path, flag):
    missing = tmp_path / "nope.yaml"
    argv = [str(REPO / "bin" / "cnet-agent"), *(part.format(missing) for part in flag)]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # The flag reached the config loader (which refuses the missing file) before any database work.
    assert result.returncode == 1
    assert f"config file {missing} does not exist" in result.stderr


def test_workload_output_goes_to_the_folder_cnet_log_dir_names(settings, tmp_path):
    settings.CNET_LOG_DIR = tmp_path / "logs"
    assert load_agent_settings(None, Overrides()).log_dir == tmp_path / "logs"
