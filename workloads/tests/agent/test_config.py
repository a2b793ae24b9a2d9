"""The seed's YAML configs, flag overrides and the -config spelling; no database."""

import subprocess
from pathlib import Path

import pytest

from workloads.agent.config import ConfigError, Overrides, load_agent_settings

REPO = Path(__file__).resolve().parents[3]
GiB = 1024**3


def test_shipped_configs_run_together_on_one_machine():
    configs = {name: load_agent_settings(str(REPO / "configs" / f"config_{name}.yaml"), Overrides())
               for name in ("parent", "child", "peer1", "peer2")}
    assert [c.node_id for c in configs.values()] == ["parent", "child", "peer1", "peer2"]
    endpoints = {f"{c.address}:{c.port}": name for name, c in configs.items()}
    assert len(endpoints) == 4
    assert endpoints[configs["child"].parent] == "parent"
    assert [endpoints[p] for p in configs["parent"].peers] == ["peer1", "peer2"]
    assert [endpoints[p] for p in configs["peer1"].peers] == ["peer2"]
    assert [endpoints[p] for p in configs["peer2"].peers] == ["peer1"]
    assert configs["parent"].parent is None and configs["child"].peers == []
    single = load_agent_settings(str(REPO / "config.yaml"), Overrides())
    assert (single.node_id, single.capacity.cpu, single.capacity.memory) == ("agent-1", 4000, 8 * GiB)


def test_flags_override_the_file():
    config = load_agent_settings(str(REPO / "configs" / "config_child.yaml"),
                                 Overrides(cpu=0.5, memory=GiB, node_id="c2", parent="parent", peers=["x:1"]))
    assert (config.node_id, config.capacity.cpu, config.capacity.memory) == ("c2", 500, GiB)
    assert (config.parent, config.peers, config.port) == ("parent", ["x:1"], 8082)


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
