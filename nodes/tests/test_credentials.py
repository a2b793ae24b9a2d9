"""Node credentials: a node's key authenticates it (and only it) until staff revoke it."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory
from rest_framework.views import APIView

from core.errors import NotFound
from nodes.authentication import IsNode, NodeCredentialAuthentication, NodeUser
from nodes.models import JoinToken, Node, NodeCredential, NodeStatus
from nodes.resources import Resources
from nodes.selectors import key_hash
from nodes.services import join_token_create, node_credential_authenticate, node_credential_revoke, node_join
from tests.helpers import make_node
from workloads import control
from workloads.models import WorkloadStatus
from workloads.services import workload_submit

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def joined(node_id: str) -> str:
    key = node_join(token=join_token_create(), node_id=node_id)
    make_node(node_id)
    return key


class WhoAmI(APIView):
    """A node endpoint as the node API declares one."""

    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNode]

    def get(self, request):
        return Response({"node": request.auth.node_id, "user": request.user.username,
                         "staff": request.user.is_staff, "pk": request.user.pk})


def call_whoami(header: str | None):
    factory = APIRequestFactory()
    request = factory.get("/whoami", HTTP_AUTHORIZATION=header) if header else factory.get("/whoami")
    response = WhoAmI.as_view()(request)
    response.render()
    return response


def test_a_credential_authenticates_its_own_node_and_is_kept_only_as_its_hash():
    key = joined("n1")
    assert key.startswith("cnetnode_")
    assert NodeCredential.objects.get().key_hash == key_hash(key)
    assert node_credential_authenticate(key=key) == Node.objects.get(node_id="n1")
    other = joined("n2")
    assert node_credential_authenticate(key=other).node_id == "n2"


@pytest.mark.parametrize("key", ["", "cnetnode_", "cnetnode_nonsense", "cnetjoin_x", "Token abc"])
def test_unknown_keys_authenticate_no_node(key):
    joined("n1")
    assert node_credential_authenticate(key=key) is None


def test_a_join_token_is_not_a_node_credential():
    token = join_token_create(uses=None)
    node_join(token=token, node_id="n1")
    assert node_credential_authenticate(key=token) is None


def test_a_revoked_credential_authenticates_nothing_and_the_node_goes_offline():
    key = joined("n1")
    assert Node.objects.get(node_id="n1").status == NodeStatus.READY
    assert node_credential_revoke(node_id="n1") is True
    assert node_credential_authenticate(key=key) is None
    assert Node.objects.get(node_id="n1").status == NodeStatus.OFFLINE
    assert NodeCredential.objects.get().revoked_at is not None
    assert node_credential_revoke(node_id="n1") is False  # once is enough


def test_revoking_a_node_without_a_credential_changes_nothing_and_an_unknown_node_is_not_found():
    make_node("legacy")
    assert node_credential_revoke(node_id="legacy") is False
    assert Node.objects.get(node_id="legacy").status == NodeStatus.READY
    with pytest.raises(NotFound):
        node_credential_revoke(node_id="ghost")


def test_work_on_a_revoked_node_is_handled_as_lost_by_the_control_loop():
    joined("n1")
    workload = workload_submit(owner=None, name="w", type="process", config={"command": "sleep"},
                               requirements=Resources(cpu=1000), node="n1")
    assert workload.status == WorkloadStatus.SCHEDULED
    node_credential_revoke(node_id="n1")
    assert control.mark_lost_on_offline_nodes() == 1
    workload.refresh_from_db()
    assert workload.status == WorkloadStatus.LOST
    assert Node.objects.get(node_id="n1").allocated()["cpu"] == 0


def test_last_used_is_written_at_most_once_a_minute():
    key = joined("n1")
    with time_machine.travel(START, tick=False) as clock:
        node_credential_authenticate(key=key)
        assert NodeCredential.objects.get().last_used_at == START
        clock.shift(30)
        with CaptureQueriesContext(connection) as queries:
            assert node_credential_authenticate(key=key) is not None
        assert len(queries) == 1 and queries[0]["sql"].lstrip().upper().startswith("SELECT")
        assert NodeCredential.objects.get().last_used_at == START
        clock.shift(31)
        node_credential_authenticate(key=key)
        assert NodeCredential.objects.get().last_used_at == START + timedelta(seconds=61)


# --- DRF authentication ------------------------------------------------------------------------

def test_the_node_header_authenticates_a_non_staff_node_user_acting_for_its_node():
    key = joined("n1")
    response = call_whoami(f"Node {key}")
    assert response.status_code == 200
    assert response.data == {"node": "n1", "user": "node:n1", "staff": False, "pk": None}
    user = NodeUser(Node.objects.get(node_id="n1"))
    assert user.is_authenticated and not user.is_superuser and not user.is_anonymous


@pytest.mark.parametrize("header", ["Node cnetnode_wrong", "Node", "Node a b", "node cnetnode_wrong"])
def test_a_bad_node_header_is_401_saying_how_to_get_a_credential(header):
    joined("n1")
    response = call_whoami(header)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Node realm="cnet"'
    assert "create_join_token" in response.data["detail"]


def test_a_revoked_key_is_refused_by_the_authentication():
    key = joined("n1")
    assert call_whoami(f"Node {key}").status_code == 200
    node_credential_revoke(node_id="n1")
    response = call_whoami(f"Node {key}")
    assert response.status_code == 401 and "revoked" in response.data["detail"]


def test_a_node_endpoint_refuses_requests_without_a_node_credential(user):
    assert call_whoami(None).status_code == 401
    factory = APIRequestFactory()
    request = factory.get("/whoami")
    from rest_framework.test import force_authenticate

    force_authenticate(request, user=user)
    assert WhoAmI.as_view()(request).status_code == 403  # a user, however authenticated, is not a node


@pytest.mark.parametrize("path", ["/api/workloads", "/api/nodes", "/api/resources", "/api/tasks"])
def test_user_endpoints_do_not_accept_node_credentials(path):
    key = joined("local")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {key}")
    assert client.get(path).status_code == 401


# --- the staff API -----------------------------------------------------------------------------

def test_staff_revoke_a_node_over_the_api(api):
    key = joined("n1")
    response = api.post("/api/nodes/n1/revoke")
    assert response.status_code == 200
    assert response.json()["node_id"] == "n1" and response.json()["status"] == "offline"
    assert node_credential_authenticate(key=key) is None


def test_revoke_is_staff_only_and_404_for_an_unknown_node(api, user_api):
    key = joined("n1")
    assert user_api.post("/api/nodes/n1/revoke").status_code == 403
    node_client = APIClient()
    node_client.credentials(HTTP_AUTHORIZATION=f"Node {key}")
    assert node_client.post("/api/nodes/n1/revoke").status_code == 401
    assert node_credential_authenticate(key=key) is not None
    assert api.post("/api/nodes/ghost/revoke").status_code == 404


def test_staff_make_join_tokens_over_the_api(api, admin_user):
    with time_machine.travel(START, tick=False):
        response = api.post("/api/nodes/join-tokens", {}, format="json")
        assert response.status_code == 201
        body = response.json()
        assert body["join_token"].startswith("cnetjoin_") and body["uses"] == 1
        assert body["expires_at"].startswith("2026-12-01T13:00:00")
        row = JoinToken.objects.get(key_hash=key_hash(body["join_token"]))
        assert row.created_by == admin_user
        assert node_join(token=body["join_token"], node_id="n1")
    body = api.post("/api/nodes/join-tokens/", {"ttl_seconds": None, "uses": None}, format="json").json()
    assert body["expires_at"] is None and body["uses"] is None
    body = api.post("/api/nodes/join-tokens", {"ttl_seconds": 60, "uses": 5}, format="json").json()
    assert body["uses"] == 5


@pytest.mark.parametrize(("payload", "field"), [({"uses": 0}, "uses"), ({"uses": "2"}, "uses"),
                                                ({"ttl_seconds": 0}, "ttl_seconds"),
                                                ({"ttl_seconds": "1h"}, "ttl_seconds"),
                                                ({"ttl_seconds": 10**12}, "ttl_seconds"),
                                                ({"uses": 1, "node": "x"}, "node")])
def test_bad_join_token_requests_are_400_naming_the_field_and_make_nothing(api, payload, field):
    response = api.post("/api/nodes/join-tokens", payload, format="json")
    assert response.status_code == 400
    assert field in response.json() and response.json()["detail"].startswith(field)
    assert not JoinToken.objects.exists()


def test_join_tokens_are_staff_only(user_api):
    assert user_api.post("/api/nodes/join-tokens", {}, format="json").status_code == 403
    assert not JoinToken.objects.exists()


def test_the_staff_endpoints_are_in_the_openapi_schema(api):
    paths = api.get("/api/schema?format=json").json()["paths"]
    revoke = next(path for path in paths if path.rstrip("/").endswith("/revoke"))
    assert "post" in paths[revoke] and "{node_id}" in revoke
    tokens = next(path for path in paths if "join-tokens" in path)
    assert "201" in paths[tokens]["post"]["responses"]
