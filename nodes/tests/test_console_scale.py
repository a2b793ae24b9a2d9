"""The console at fleet scale: pages that summarise, page, filter and load on demand.

``fleet_create`` makes thousands of nodes in a few statements (paths and depths as
``node_set_parent`` writes them); the tests check that each page costs a bounded number of
queries and draws a bounded number of nodes however many there are.
"""

import random
import re

import pytest
from django.db import connection
from django.utils import timezone

from cnetsite.console import DASHBOARD_NODES
from nodes.models import Node, NodeStatus
from nodes.selectors import TREE_BUDGET, TREE_PAGE, cluster_stats, cluster_totals
from nodes.usage import usage_summed
from tests.helpers import make_node

pytestmark = pytest.mark.django_db

GIB = 1024**3
FLEET = 2000


def fleet_create(total: int, *, roots: int = 5, fanout: int = 22, seed: int = 14) -> list[Node]:
    """``total`` nodes in bulk: ``roots`` trees filled breadth first with ``fanout`` children a
    node (10,000 nodes in 5 trees of fanout 22 reach depth 3), labels ``zone=z<0..7>`` and
    ``tier=gpu|cpu``, allocations and measured usage that vary, and a few nodes that are not ready.
    Names are ``f<tree>-<pk>`` (roots ``f<tree>``)."""
    rng = random.Random(seed)
    now = timezone.now()
    start = (Node.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
    nodes: list[Node] = []
    queue: list[tuple[int, str, int]] = []  # (pk, path, tree) of nodes still taking children
    pk = start
    for tree in range(min(roots, total)):
        nodes.append(_fleet_node(pk, f"f{tree}", None, f"/{pk}/", rng, now))
        queue.append((pk, f"/{pk}/", tree))
        pk += 1
    head = 0
    while len(nodes) < total:
        parent_pk, parent_path, tree = queue[head]
        head += 1
        for _child in range(fanout):
            if len(nodes) >= total:
                break
            path = f"{parent_path}{pk}/"
            nodes.append(_fleet_node(pk, f"f{tree}-{pk}", parent_pk, path, rng, now))
            queue.append((pk, path, tree))
            pk += 1
    Node.objects.bulk_create(nodes, batch_size=1000)
    if connection.vendor == "postgresql":  # explicit pks: move the sequence past them
        with connection.cursor() as cursor:
            cursor.execute("SELECT setval(pg_get_serial_sequence('nodes_node', 'id'), %s)", [pk - 1])
    return nodes


def _fleet_node(pk: int, node_id: str, parent_pk: int | None, path: str, rng: random.Random, now) -> Node:
    cores = rng.choice((8, 16, 32, 64))
    memory = rng.choice((32, 64, 128, 256)) * GIB
    storage = 1024 * GIB
    gpus = 4 if pk % 10 == 0 else 0
    status = (NodeStatus.OFFLINE if pk % 211 == 0 else NodeStatus.UNHEALTHY if pk % 97 == 0
              else NodeStatus.DRAINING if pk % 89 == 0 else NodeStatus.READY)
    return Node(
        pk=pk, node_id=node_id, address=f"10.{pk // 65536 % 256}.{pk // 256 % 256}.{pk % 256}", port=8080,
        parent_id=parent_pk, path=path, depth=path.count("/") - 2,
        labels={"zone": f"z{pk % 8}", "tier": "gpu" if gpus else "cpu"},
        cpu_millicores=cores * 1000, memory_bytes=memory, storage_bytes=storage, gpu_count=gpus,
        cpu_allocated_millicores=rng.randrange(0, cores * 1000 + 1, 100),
        memory_allocated_bytes=rng.randrange(0, memory + 1, GIB),
        gpu_allocated=rng.randrange(0, gpus + 1),
        usage={"cpu_percent": round(rng.uniform(0, 100), 1), "cpu_count": cores,
               "memory_used_bytes": rng.randrange(0, memory), "memory_total_bytes": memory,
               "disk_used_bytes": rng.randrange(0, storage), "disk_total_bytes": storage},
        status=status, last_heartbeat=now, agent_epoch=1,  # registered: a place in the tree
    )


@pytest.fixture
def fleet():
    return fleet_create(FLEET)


def _drawn(html: str, marker: str = 'class="tree-node ') -> int:
    return html.count(marker)


# --- the dashboard ---------------------------------------------------------------------------

def test_dashboard_summarises_a_fleet_in_a_few_queries_drawing_only_the_busiest(
        staff_client, fleet, django_assert_max_num_queries):
    Node.objects.update(cpu_allocated_millicores=0, memory_allocated_bytes=0, gpu_allocated=0)
    full, half = Node.objects.filter(depth=2).order_by("-node_id")[:2]
    Node.objects.filter(pk=full.pk).update(memory_allocated_bytes=full.memory_bytes)
    Node.objects.filter(pk=half.pk).update(cpu_allocated_millicores=half.cpu_millicores // 2)
    with django_assert_max_num_queries(12):
        html = staff_client.get("/admin/dashboard/live/").content.decode()
    rows = re.findall(r'<tr data-node="([^"]+)"', html)
    assert len(rows) == DASHBOARD_NODES and rows[:2] == [full.node_id, half.node_id]  # fullest first
    assert f"{DASHBOARD_NODES} of {FLEET}" in html and 'id="all-nodes"' in html
    not_ready = Node.objects.exclude(status=NodeStatus.READY).count()
    assert f"and {not_ready - 10} more" in html


def test_cluster_totals_sum_usage_in_sql_as_python_does(fleet):
    make_node("no-sample")
    Node.objects.filter(node_id="no-sample").update(usage={})
    make_node("memory-only")
    Node.objects.filter(node_id="memory-only").update(usage={"memory_used_bytes": 5 * GIB})
    live = Node.objects.exclude(status=NodeStatus.OFFLINE)
    expected, reporting = usage_summed(live.values_list("usage", flat=True))
    totals = cluster_totals()
    assert totals["reporting"] == reporting
    for name, (used, total) in expected.items():
        assert totals["measured"][name] == (pytest.approx(used), pytest.approx(total))
    assert cluster_stats()["usage"]["nodes_reporting"] == reporting


# --- the node list ---------------------------------------------------------------------------

def test_node_list_pages_and_filters_by_label_and_parent(staff_client, fleet, django_assert_max_num_queries):
    with django_assert_max_num_queries(10):
        response = staff_client.get("/admin/nodes/node/")
    html = response.content.decode()
    assert len(response.context["cl"].result_list) == 50
    assert 'id="filter-label"' in html and 'id="filter-parent"' in html

    zone = staff_client.get("/admin/nodes/node/?label=zone=z2,tier=gpu")
    expected = {n.node_id for n in fleet if n.labels == {"zone": "z2", "tier": "gpu"}}
    assert zone.context["cl"].result_count == len(expected) > 0
    assert {n.node_id for n in zone.context["cl"].result_list} <= expected

    parent = Node.objects.get(node_id="f2")
    children = staff_client.get("/admin/nodes/node/?parent=f2&status__exact=ready")
    assert children.context["cl"].result_count == parent.children.filter(status=NodeStatus.READY).count() > 0
    # The parent box keeps the other filter: its form carries status along.
    assert '<input type="hidden" name="status__exact" value="ready">' in children.content.decode()


def test_node_list_refuses_a_label_selector_without_a_key(staff_client, fleet):
    response = staff_client.get("/admin/nodes/node/?label==z3")
    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_nodes_page_names_a_few_of_many_children_and_links_the_rest(staff_client, fleet):
    root = Node.objects.get(node_id="f0")
    for n in range(60):
        make_node(f"leaf-{n:02d}", parent="f0")
    html = staff_client.get(f"/admin/nodes/node/{root.pk}/change/").content.decode()
    total = root.children.count()
    assert f"all {total}</a>" in html and "?parent=f0" in html


# --- the topology ----------------------------------------------------------------------------

def test_topology_draws_roots_and_a_level_not_the_fleet(staff_client, fleet, django_assert_max_num_queries):
    with django_assert_max_num_queries(14):
        html = staff_client.get("/admin/nodes/node/topology/").content.decode()
    drawn = _drawn(html)
    assert 5 < drawn <= TREE_BUDGET + 5
    assert f"{FLEET} nodes" in html
    # A root's children are drawn; their own children are collapsed behind a count.
    assert 'data-node="f0"' in html and "22 children" in html
    child = Node.objects.filter(parent__node_id="f0").order_by("node_id").first()
    assert f'data-node="{child.node_id}"' in html
    grandchild = Node.objects.filter(parent=child).first()
    assert f'data-node="{grandchild.node_id}"' not in html


def test_topology_search_shows_the_path_from_the_root_to_a_deep_node(staff_client, fleet,
                                                                     django_assert_max_num_queries):
    above = Node.objects.filter(depth=2, node_id__startswith="f1-").order_by("node_id").last()
    parent = above.node_id
    for level in range(1, 5):
        make_node(f"deep-{level}", parent=parent)
        parent = f"deep-{level}"
    with django_assert_max_num_queries(14):
        html = staff_client.get("/admin/nodes/node/topology/?q=deep-4").content.decode()
    ancestors = Node.objects.filter(pk__in=[int(pk) for pk in Node.objects.get(node_id="deep-4").path.split("/")
                                            if pk])
    names = re.findall(r'<div class="tree-node [^"]*" data-node="([^"]+)"', html)
    assert set(names) == {node.node_id for node in ancestors}  # the path, nothing else
    assert names[0] == "f1" and names[-1] == "deep-4" and len(names) == 7
    assert 'class="tree-item tree-match"' in html and "1 match for" in html
    # The path's ancestors offer their other children on demand.
    assert "21 more" in html and f"parent={above.parent_id}" in html


def test_topology_search_that_matches_nothing_says_so(staff_client, fleet):
    html = staff_client.get("/admin/nodes/node/topology/?q=no-such-node").content.decode()
    assert "No node matches" in html and _drawn(html) == 0


def test_a_subtree_loads_on_demand_a_page_at_a_time(staff_client, django_assert_max_num_queries):
    make_node("hub")
    for n in range(TREE_PAGE + 7):
        make_node(f"spoke-{n:03d}", parent="hub")
    make_node("spoke-000-leaf", parent="spoke-000")
    hub = Node.objects.get(node_id="hub")
    url = f"/admin/nodes/node/topology/children/?parent={hub.pk}"
    with django_assert_max_num_queries(10):
        first = staff_client.get(url).content.decode()
    names = re.findall(r'data-node="([^"]+)"', first)
    assert names[:2] == ["spoke-000", "spoke-001"] and len(names) == TREE_PAGE
    assert "1 child</button>" in first  # spoke-000 shows its own child collapsed
    more = re.search(r'data-more-url="([^"]+)">7 more<', first)
    assert more
    rest = staff_client.get(more.group(1).replace("&amp;", "&")).content.decode()
    assert re.findall(r'data-node="([^"]+)"', rest) == [f"spoke-{n:03d}" for n in range(TREE_PAGE, TREE_PAGE + 7)]
    assert "more</button>" not in rest


def test_the_subtree_endpoint_asks_for_a_login(client):
    response = client.get("/admin/nodes/node/topology/children/")
    assert response.status_code == 302 and "/login/" in response["Location"]


# --- the API's filters ------------------------------------------------------------------------

def test_api_filters_nodes_by_label_selector_and_parent(api, fleet, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        response = api.get("/api/nodes?label=zone=z2,tier=gpu&limit=100")
    assert response.status_code == 200
    expected = sorted(n.node_id for n in fleet if n.labels == {"zone": "z2", "tier": "gpu"})
    assert [node["node_id"] for node in response.json()] == expected[:100]
    assert int(response["X-Total-Count"]) == len(expected)
    has_key = api.get("/api/nodes?label=tier&parent=f4&limit=1")
    assert int(has_key["X-Total-Count"]) == Node.objects.filter(parent__node_id="f4").count()
    refused = api.get("/api/nodes?label==z3")
    assert refused.status_code == 400 and "label" in refused.json()
