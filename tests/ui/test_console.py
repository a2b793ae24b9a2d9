"""The console in a real browser: dashboard, submit, live logs, stop, permissions."""

import re

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.helpers import make_node
from workloads.models import Workload, WorkloadStatus

from .conftest import shot

pytestmark = pytest.mark.django_db(transaction=True)

TICKER = "sh -c 'for i in 1 2 3; do echo line-$i; sleep 0.3; done; sleep 30'"


def _expect():
    from playwright.sync_api import expect

    return expect


def _user(username: str, *, staff: bool = False):
    users = get_user_model().objects
    if staff:
        return users.create_superuser(username, password="pw")
    return users.create_user(username, password="pw")


def _api(live_server, user, method: str, path: str, **kwargs) -> requests.Response:
    token, _ = Token.objects.get_or_create(user=user)
    return requests.request(method, live_server.url + path, timeout=10,
                            headers={"Authorization": f"Token {token.key}"}, **kwargs)


def _submit(page, live_server, *, name: str, command_line: str, **fields) -> None:
    page.goto(live_server.url + "/admin/workloads/workload/add/")
    page.fill("#id_name", name)
    page.fill("#id_command_line", command_line)
    for field, value in fields.items():
        page.fill(f"#id_{field}", value)
    page.click("#submit-workload")


def test_operator_submits_watches_logs_and_stops_a_workload(page, live_server, agent, login):
    expect = _expect()
    _user("admin", staff=True)
    login(page, "admin")

    # The dashboard: capacity bars in total and per node, the agent's node among them.
    expect(page.locator("#cluster-capacity .rbar")).to_have_count(4)
    expect(page.locator('#node-capacity tr[data-node="local"] .rbar')).to_have_count(4)
    expect(page.locator('#cluster-capacity .rbar[data-resource="cpu"] .rbar-text')).to_have_text("0 / 2 cores")
    shot(page, "01-dashboard-empty")

    # Submit through the form; it lands on the workload's page, which follows it live.
    page.click("text=+ Submit workload")
    expect(page.locator("h1")).to_have_text("Submit a workload")
    shot(page, "02-submit-form")
    page.fill("#id_name", "ticker")
    page.fill("#id_command_line", TICKER)
    page.fill("#id_memory", "128Mi")
    page.fill("#id_cpu", "0.5")
    page.click("#submit-workload")
    expect(page.locator("#wl-head h1")).to_have_text("ticker")
    expect(page.locator("#wl-head [data-status]")).to_have_attribute("data-status", "running", timeout=30_000)
    expect(page.locator("#log")).to_contain_text("line-3", timeout=20_000)
    expect(page.locator("#log")).to_contain_text("line-1")
    expect(page.locator("#log-state")).to_have_text("following")
    # The timeline: every transition so far, and the placement with a reason per node.
    timeline = page.locator("#wl-timeline")
    expect(timeline.locator("li.tl.to-running")).to_have_count(1)
    expect(timeline.locator("table.reasons tr.fits td").first).to_have_text("local")
    workload = Workload.objects.get(name="ticker")
    assert workload.status == WorkloadStatus.RUNNING
    assert workload.config == {"command": "sh", "args": ["-c", TICKER.split(" ", 2)[2][1:-1]], "env": {}}
    shot(page, "03-workload-running")

    # Back on the dashboard: the allocation shows, and the page refreshes by itself.
    page.click(".console-nav >> text=Dashboard")
    expect(page.locator('#cluster-capacity .rbar[data-resource="cpu"] .rbar-text')).to_have_text("0.5 / 2 cores")
    expect(page.locator('#status-counts [data-count="running"] b')).to_have_text("1")
    expect(page.locator("#dashboard-live")).to_have_attribute("data-refreshed", re.compile(r"[1-9]"), timeout=10_000)
    expect(page.locator("#latest-events")).to_contain_text("placed on local")
    shot(page, "04-dashboard-running")

    # Topology and the node's own page show what runs there.
    page.click(".console-nav >> text=Topology")
    expect(page.locator('.tree-node[data-node="local"]')).to_contain_text("1 active")
    shot(page, "05-topology")
    page.click('.tree-node[data-node="local"] .tree-node-name')
    expect(page.locator("table.plain-table")).to_contain_text("ticker")
    shot(page, "06-node")

    # Stop, with a confirmation, and watch it stop.
    page.click("table.plain-table >> text=ticker")
    page.click("#wl-head >> text=Stop")
    expect(page.locator("#confirm-stop")).to_be_visible()
    shot(page, "07-stop-confirmation")
    page.click("#confirm-stop")
    expect(page.locator("#wl-head [data-status]")).to_have_attribute("data-status", "stopped", timeout=30_000)
    expect(page.locator("#log-state")).to_have_text("finished")
    expect(page.locator("#wl-head a", has_text="Stop")).to_have_count(0)
    expect(timeline.locator("li.tl.to-stopped")).to_have_count(1)
    shot(page, "08-workload-stopped")

    # The list, filtered by status, with search.
    page.click(".console-nav >> text=Workloads")
    page.click("#changelist-filter >> text=Stopped")
    expect(page.locator("#result_list")).to_contain_text("ticker")
    shot(page, "09-workloads")

    # Delete, with the admin's confirmation page; the service removes it.
    page.click("#result_list >> text=ticker")
    page.click("#wl-head >> text=Delete")
    page.click("input[type=submit]")  # "Yes, I'm sure"
    expect(page.locator(".messagelist")).to_contain_text("deleted")
    assert not Workload.objects.filter(name="ticker").exists()


def test_submit_form_shows_the_apis_messages(page, live_server, login):
    expect = _expect()
    admin = _user("admin", staff=True)
    make_node("small", cpu=1, memory=1024**3)
    login(page, "admin")

    # No command: the serializer's message, on the command line field.
    _submit(page, live_server, name="nothing", command_line="")
    api = _api(live_server, admin, "POST", "/api/workloads", json={"name": "nothing", "type": "process", "config": {}})
    assert api.status_code == 400
    message = api.json()["config"]["command"][0]
    expect(page.locator('[data-field="command_line"] .field-error')).to_have_text(message)

    # Too big for any node: the service's message, on the memory field.
    _submit(page, live_server, name="huge", command_line="true", memory="1Ti")
    api = _api(live_server, admin, "POST", "/api/workloads", json={
        "name": "huge", "type": "process", "config": {"command": "true"}, "requirements": {"memory": 1024**4}})
    assert api.status_code == 400
    message = api.json()["requirements"][0]
    assert "no registered node could ever hold this" in message
    expect(page.locator('[data-field="memory"] .field-error')).to_have_text(message)

    # A bad cpu: the nested requirements message, on the cpu field.
    _submit(page, live_server, name="neg", command_line="true", cpu="-1")
    api = _api(live_server, admin, "POST", "/api/workloads", json={
        "name": "neg", "type": "process", "config": {"command": "true"}, "requirements": {"cpu": -1}})
    expect(page.locator('[data-field="cpu"] .field-error')).to_have_text(api.json()["requirements"]["cpu"][0])
    expect(page.locator(".form-errors")).to_contain_text("not submitted")
    shot(page, "10-submit-errors")
    assert not Workload.objects.exists()  # bad input is refused whole


def test_user_sees_and_acts_on_only_their_own_workloads(browser, page, live_server, agent, login):
    expect = _expect()
    alice, bob = _user("alice"), _user("bob")
    login(page, "alice")
    _submit(page, live_server, name="alice-job", command_line="sh -c 'echo hello from alice'")
    expect(page.locator("#wl-head [data-status]")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.locator("#log")).to_contain_text("hello from alice")
    job = Workload.objects.get(name="alice-job")
    assert job.owner == alice
    page.click(".console-nav >> text=Workloads")
    expect(page.locator("#result_list")).to_contain_text("alice-job")

    other = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        bobs = other.new_page()
        login(bobs, "bob")
        expect(bobs.locator('#status-counts [data-count="succeeded"] b')).to_have_text("0")
        expect(bobs.locator("#latest-events")).not_to_contain_text("alice-job")
        bobs.click(".console-nav >> text=Workloads")
        expect(bobs.locator("#changelist")).to_contain_text("0 workloads")
        shot(bobs, "11-other-user-workloads")
        # Not by URL either, in the console or in the API (with the same session).
        detail = bobs.goto(f"{live_server.url}/admin/workloads/workload/{job.pk}/change/")
        assert detail.status == 404
        assert bobs.request.get(f"{live_server.url}/api/workloads/{job.pk}").status == 404
        assert bobs.request.get(f"{live_server.url}/api/workloads/{job.pk}/logs").status == 404
        stop = bobs.goto(f"{live_server.url}/admin/workloads/workload/{job.pk}/stop/")
        assert stop.status == 404
        # The rest of the admin (users, raw log rows) stays closed to non-staff users.
        assert bobs.goto(f"{live_server.url}/admin/auth/user/").status == 403
        assert bobs.goto(f"{live_server.url}/admin/workloads/workloadlog/").status == 403
        assert _api(live_server, bob, "GET", "/api/workloads").json() == []
    finally:
        other.close()


def test_a_pending_workloads_page_shows_its_queue_place_and_follows_the_queue(page, live_server, login):
    expect = _expect()
    admin = _user("admin", staff=True)
    make_node("busy", cpu=1, memory=4 * 1024**3)
    holder, first, second = (
        _api(live_server, admin, "POST", "/api/workloads", json={
            "name": name, "type": "process", "config": {"command": "true"},
            "requirements": {"cpu": 1, "memory": 1024**2}, "node": "busy"}).json()
        for name in ("holder", "first", "second"))
    Workload.objects.filter(pk=holder["id"]).update(status=WorkloadStatus.RUNNING, max_runtime_seconds=None)
    login(page, "admin")
    page.goto(f"{live_server.url}/admin/workloads/workload/{second['id']}/change/")
    expect(page.locator("#wl-queue")).to_contain_text("#2 of 2 pending at priority 0")
    expect(page.locator("#wl-estimate")).to_contain_text("unknown")
    shot(page, "12-workload-queued")
    # The one ahead is stopped elsewhere: the page's own refresh moves this one up.
    assert _api(live_server, admin, "POST", f"/api/workloads/{first['id']}/stop").status_code == 200
    expect(page.locator("#wl-queue")).to_contain_text("#1 of 1 pending", timeout=10_000)
    expect(page.locator("#wl-head [data-status]")).to_have_attribute("data-status", "pending")


def test_operator_finds_their_way_around_a_fleet_of_2000_nodes(page, live_server, login):
    from nodes.models import Node
    from nodes.tests.test_console_scale import fleet_create

    expect = _expect()
    fleet_create(2000)
    _user("admin", staff=True)
    login(page, "admin")

    # The dashboard draws the busiest few, not the fleet.
    expect(page.locator("#node-capacity tr[data-node]")).to_have_count(40)
    expect(page.locator("#node-capacity h2")).to_contain_text("40 of 2000")

    # Topology: roots and one level; a collapsed subtree opens (loaded on demand) and closes.
    page.click(".console-nav >> text=Topology")
    child = Node.objects.filter(parent__node_id="f0").order_by("node_id").first()
    item = page.locator(f'li.tree-item[data-pk="{child.pk}"]')
    expect(item.locator("> .tree-node .tree-toggle")).to_have_attribute("aria-expanded", "false")
    shot(page, "12-topology-fleet")
    item.locator("> .tree-node .tree-toggle").click()
    grandchildren = Node.objects.filter(parent=child).count()
    expect(item.locator("> ul.tree > li.tree-item")).to_have_count(grandchildren)
    expect(item.locator("> .tree-node .tree-toggle")).to_have_attribute("aria-expanded", "true")
    item.locator("> .tree-node .tree-toggle").click()
    expect(item.locator("> ul.tree")).to_be_hidden()

    # Find a deep node by name: the path from its root, the match marked.
    deep = Node.objects.filter(depth=2).order_by("-node_id").first()
    page.fill("#tree-search input[name=q]", deep.node_id)
    page.press("#tree-search input[name=q]", "Enter")
    expect(page.locator("li.tree-match .tree-node")).to_have_attribute("data-node", deep.node_id)
    expect(page.locator(".tree-node")).to_have_count(3)
    shot(page, "13-topology-search")
    # An ancestor's other children load in place of "N more".
    root_item = page.locator("#tree > li.tree-item").first
    root_item.locator("> ul.tree > li.tree-more button").click()
    siblings = Node.objects.filter(parent=deep.parent.parent).count()
    expect(root_item.locator("> ul.tree > li.tree-item")).to_have_count(siblings)

    # The node list: paged, filtered by a label typed into the box, then by parent too.
    page.click(".console-nav >> text=Nodes")
    page.fill("#filter-label input[name=label]", "zone=z2")
    page.press("#filter-label input[name=label]", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(50)
    page.fill("#filter-parent input[name=parent]", "f1")
    page.press("#filter-parent input[name=parent]", "Enter")
    expected = Node.objects.filter(parent__node_id="f1", labels__zone="z2").count()
    expect(page.locator("#result_list tbody tr")).to_have_count(expected)
    assert "label=zone%3Dz2" in page.url or "label=zone=z2" in page.url
    shot(page, "14-nodes-filtered")
