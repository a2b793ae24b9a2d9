"""The admin (Web UI) node changelist, as a staff user sees it."""

import pytest

from nodes.models import JoinToken, Node, NodeStatus
from nodes.resources import Resources
from nodes.selectors import key_hash
from nodes.services import join_token_create, node_allocate, node_credential_authenticate, node_join
from tests.helpers import make_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster():
    make_node("local")
    make_node("child-1", parent="local")


def test_node_changelist_renders_with_filters_and_search(staff_client, cluster):
    response = staff_client.get("/admin/nodes/node/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "local" in html and "child-1" in html
    assert 'id="changelist-filter"' in html
    searched = staff_client.get("/admin/nodes/node/?q=child")
    assert searched.status_code == 200
    assert "child-1" in searched.content.decode()
    assert searched.context["cl"].result_count == 1
    filtered = staff_client.get("/admin/nodes/node/?status__exact=draining")
    assert filtered.status_code == 200 and filtered.context["cl"].result_count == 0


def test_deleting_an_idle_node_goes_through_the_service(staff_client, cluster):
    child = Node.objects.get(node_id="child-1")
    response = staff_client.post(f"/admin/nodes/node/{child.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Node.objects.filter(node_id="child-1").exists()


def test_a_node_holding_work_is_not_deleted_and_the_console_says_why(staff_client, cluster):
    local = Node.objects.get(node_id="local")
    node_allocate(node_pk=local.pk, requirements=Resources(cpu=1000))
    response = staff_client.post(f"/admin/nodes/node/{local.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == f"/admin/nodes/node/{local.pk}/change/"
    assert "holds work (cpu_allocated_millicores 1000 allocated)" in response.content.decode()
    assert Node.objects.filter(node_id="local").exists()
    assert Node.objects.get(node_id="child-1").parent_id == local.pk  # nothing moved either


# --- credentials in the console ----------------------------------------------------------------

def joined(node_id: str) -> str:
    key = node_join(token=join_token_create(), node_id=node_id)
    make_node(node_id)
    return key


def test_staff_see_a_revoke_button_and_revoking_asks_first_then_goes_through_the_service(staff_client):
    key = joined("n1")
    node = Node.objects.get(node_id="n1")
    page = staff_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert 'id="revoke-credential"' in page and "active" in page
    confirm = staff_client.get(f"/admin/nodes/node/{node.pk}/revoke/")
    assert confirm.status_code == 200 and 'id="confirm-revoke"' in confirm.content.decode()
    assert node_credential_authenticate(key=key) is not None  # asking changed nothing
    done = staff_client.post(f"/admin/nodes/node/{node.pk}/revoke/", follow=True)
    assert done.redirect_chain[-1][0] == f"/admin/nodes/node/{node.pk}/change/"
    html = done.content.decode()
    assert "credential revoked" in html and 'id="revoke-credential"' not in html and "revoked" in html
    assert node_credential_authenticate(key=key) is None
    assert Node.objects.get(node_id="n1").status == NodeStatus.OFFLINE


def test_a_node_without_a_credential_shows_no_revoke_button(staff_client):
    node = make_node("legacy")
    page = staff_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert 'id="revoke-credential"' not in page and "has not joined with a join token" in page


def test_non_staff_can_neither_revoke_nor_make_join_tokens_in_the_console(client, user):
    key = joined("n1")
    node = Node.objects.get(node_id="n1")
    client.force_login(user)
    assert 'id="revoke-credential"' not in client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert client.get(f"/admin/nodes/node/{node.pk}/revoke/").status_code == 403
    assert client.post(f"/admin/nodes/node/{node.pk}/revoke/").status_code == 403
    assert node_credential_authenticate(key=key) is not None
    assert 'id="make-join-token"' not in client.get("/admin/nodes/node/").content.decode()
    assert client.post("/admin/nodes/node/join-token/", {"ttl": "1h", "uses": "1"}).status_code == 403
    assert JoinToken.objects.count() == 1  # only the one joined() made


def test_staff_make_a_join_token_in_the_console_and_see_it_once_with_how_to_use_it(staff_client, admin_user):
    changelist = staff_client.get("/admin/nodes/node/").content.decode()
    assert 'id="make-join-token"' in changelist
    form = staff_client.get("/admin/nodes/node/join-token/")
    assert form.status_code == 200 and 'id="confirm-join-token"' in form.content.decode()
    assert not JoinToken.objects.exists()
    made = staff_client.post("/admin/nodes/node/join-token/", {"ttl": "never", "uses": "3"})
    assert made.status_code == 200 and "no-store" in made["Cache-Control"]
    token = made.context["token"]
    html = made.content.decode()
    assert token.startswith("cnetjoin_") and token in html
    assert "/api/node/join" in html and "Authorization: Node" in html
    row = JoinToken.objects.get(key_hash=key_hash(token))
    assert row.uses_left == 3 and row.expires_at is None and row.created_by == admin_user
    assert node_join(token=token, node_id="from-console").startswith("cnetnode_")
    again = staff_client.get("/admin/nodes/node/join-token/").content.decode()
    assert token not in again  # shown once: never again


@pytest.mark.parametrize(("form", "says"), [({"ttl": "1h", "uses": "-1"}, "uses"), ({"ttl": "1h", "uses": "x"}, "uses"),
                                            ({"ttl": "soon", "uses": "1"}, "ttl")])
def test_bad_join_token_forms_are_refused_naming_the_field(staff_client, form, says):
    response = staff_client.post("/admin/nodes/node/join-token/", form)
    assert response.status_code == 400
    assert 'class="form-errors"' in response.content.decode() and response.context["error"].startswith(says)
    assert not JoinToken.objects.exists()
