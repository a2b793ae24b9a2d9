"""A node started with no control plane named (cnetsite/standalone.py): it runs its own, or joins the
one its parent or a peer runs, with the local join token that control plane left in its data folder."""

import json
import stat
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from cnetsite.standalone import (
    LOCAL_JOIN_FILE,
    agent_flags,
    local_join_offer,
    local_join_withdraw,
    node_data_dir,
    prepare_node,
)
from nodes.models import NodeCredential
from nodes.services import node_join
from tests.helpers import free_port
from workloads.agent.config import Overrides, load_agent_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_root(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def child_config(tmp_path, parent: str, node_id: str = "child", port: int | None = None) -> str:
    path = tmp_path / f"{node_id}.yaml"
    path.write_text(json.dumps({"agent": {"node_id": node_id, "port": port or free_port()},
                                "parent": {"enabled": True, "address": parent}}))
    return str(path)


def test_a_node_whose_links_answer_nowhere_runs_its_own_control_plane_in_its_own_folder(data_root):
    config_path = str(REPO / "configs" / "config_child.yaml")  # its parent 127.0.0.1:8080: nothing there here
    overrides = Overrides(cpu=1.5, parent=f"127.0.0.1:{free_port()}")
    launch = prepare_node(config_path=config_path, config=load_agent_settings(config_path, overrides),
                          overrides=overrides)
    assert launch.argv[2:9] == ["up", "--port", "8081", "--bind", "127.0.0.1", "--agent-config", config_path]
    assert launch.argv[9:] == ["--", "--cpu", "1.5", "--parent", overrides.parent]  # to its agent
    assert launch.env == {"CNET_DATA_DIR": str(data_root / "nodes" / "child"), "CNET_LOCAL_NODE_ID": "child"}
    assert f"none answers at {overrides.parent}; running its own control plane on http://127.0.0.1:8081" in launch.says


@pytest.mark.django_db(transaction=True)
def test_an_agent_of_this_machine_joins_the_control_plane_its_parent_runs_without_a_token(data_root, live_server):
    token = local_join_offer(server=live_server.url)
    offered = data_root / LOCAL_JOIN_FILE
    assert stat.S_IMODE(offered.stat().st_mode) == 0o600
    config_path = child_config(data_root, live_server.url.removeprefix("http://"))
    launch = prepare_node(config_path=config_path, config=load_agent_settings(config_path, Overrides()),
                          overrides=Overrides())
    credential = Path(launch.argv[launch.argv.index("--credential-file") + 1])
    assert credential.parent == data_root / "nodes" / "child" / "agent" and credential.is_file()
    assert NodeCredential.objects.filter(node__node_id="child", revoked_at__isnull=True).exists()
    assert launch.argv[2] == "runagent" and launch.argv[launch.argv.index("--server") + 1] == live_server.url
    assert token not in " ".join(launch.argv)  # spent here: no command line shows it
    assert launch.env["CNET_DATA_DIR"] == str(data_root / "nodes" / "child")
    # On the embedded broker it rings at the control plane's doorbells (on Redis, both share the URL).
    assert launch.env.get("CNET_BROKER_DIR") == json.loads(offered.read_text())["broker_dir"]
    again = prepare_node(config_path=config_path, config=load_agent_settings(config_path, Overrides()),
                         overrides=Overrides())
    assert again.argv == launch.argv  # a later start uses the credential it kept
    # A grandchild names the child, which serves nothing (an agent): it joins the control plane the child joined.
    child_port = load_agent_settings(config_path, Overrides()).port
    grandchild_path = child_config(data_root, f"127.0.0.1:{child_port}", node_id="grandchild")
    grandchild = prepare_node(config_path=grandchild_path, config=load_agent_settings(grandchild_path, Overrides()),
                              overrides=Overrides())
    assert grandchild.argv[grandchild.argv.index("--server") + 1] == live_server.url

    local_join_withdraw(token)
    assert not offered.exists()
    with pytest.raises(Exception, match="revoked"):
        node_join(token=token, node_id="latecomer")


@pytest.mark.django_db(transaction=True)
def test_elsewhere_a_join_token_is_needed_and_the_agent_says_how_to_get_one(data_root, live_server):
    config_path = child_config(data_root, live_server.url.removeprefix("http://"))
    with pytest.raises(CommandError, match="create_join_token") as refused:
        prepare_node(config_path=config_path, config=load_agent_settings(config_path, Overrides()),
                     overrides=Overrides())
    assert live_server.url in str(refused.value)
    assert not NodeCredential.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_token_left_by_a_control_plane_that_died_is_revoked_when_the_next_one_starts(data_root):
    left = local_join_offer(server="http://127.0.0.1:8080")
    fresh = local_join_offer(server="http://127.0.0.1:8080")
    assert json.loads((data_root / LOCAL_JOIN_FILE).read_text())["join_token"] == fresh
    with pytest.raises(Exception, match="revoked"):
        node_join(token=left, node_id="latecomer")
    assert node_join(token=fresh, node_id="latecomer")


def test_node_flags_are_passed_on_and_a_node_id_cannot_climb_out_of_the_data_root(data_root):
    assert agent_flags(Overrides(node_id="n", memory=5, peers=["a:1", "b"], server="x", join_token="t")) == [
        "--node-id", "n", "--memory", "5", "--peer", "a:1", "--peer", "b"]
    assert node_data_dir("n-1") == data_root / "nodes" / "n-1"
    with pytest.raises(CommandError):
        node_data_dir("..")
