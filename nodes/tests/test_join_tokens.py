"""Join tokens: made by staff or a command, spent by agents joining, refused once spent or expired."""

import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.errors import Forbidden, InvalidRequest, StateConflict
from nodes.models import JoinToken, Node, NodeCredential, NodeStatus
from nodes.selectors import key_hash
from nodes.services import join_token_create, node_credential_revoke, node_join, ttl_seconds_parse
from tests.helpers import make_node

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_a_join_token_is_shown_once_and_kept_only_as_its_hash():
    token = join_token_create()
    assert token.startswith("cnetjoin_") and len(token) > len("cnetjoin_") + 40
    row = JoinToken.objects.get()
    assert row.key_hash == key_hash(token) and token not in row.key_hash
    assert row.uses_left == 1
    assert "uses left 1" in str(row)


@pytest.mark.django_db
def test_a_join_token_expires_after_its_ttl():
    with time_machine.travel(START, tick=False) as clock:
        token = join_token_create(ttl_seconds=60, uses=None)
        assert JoinToken.objects.get().expires_at == START + timedelta(seconds=60)
        clock.shift(59)
        assert node_join(token=token, node_id="early").startswith("cnetnode_")
        clock.shift(2)
        with pytest.raises(Forbidden, match="expired"):
            node_join(token=token, node_id="late")
    assert not Node.objects.filter(node_id="late").exists()


@pytest.mark.django_db
def test_a_token_that_never_expires_and_has_unlimited_uses_stays_usable():
    with time_machine.travel(START, tick=False) as clock:
        token = join_token_create(ttl_seconds=None, uses=None)
        clock.shift(timedelta(days=400))
        for i in range(3):
            node_join(token=token, node_id=f"n{i}")
    row = JoinToken.objects.get()
    assert row.expires_at is None and row.uses_left is None
    assert NodeCredential.objects.count() == 3


@pytest.mark.django_db
def test_a_join_with_an_unlimited_token_only_reads_it():
    """Written, the token's row would be locked by every join of a fleet joining at once."""
    token = join_token_create(uses=None)
    with CaptureQueriesContext(connection) as queries:
        node_join(token=token, node_id="n")
    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "jointoken" in q["sql"]]
    assert NodeCredential.objects.filter(node__node_id="n").exists()


@pytest.mark.django_db
def test_each_join_spends_one_use_and_a_used_up_token_is_refused():
    token = join_token_create(uses=1)
    node_join(token=token, node_id="first")
    with pytest.raises(Forbidden, match="used up") as refused:
        node_join(token=token, node_id="second")
    assert refused.value.status == 403 and "create_join_token" in str(refused.value)
    assert JoinToken.objects.get().uses_left == 0
    assert list(Node.objects.values_list("node_id", flat=True)) == ["first"]


@pytest.mark.django_db
def test_an_unknown_or_revoked_token_is_refused_and_nothing_is_written():
    with pytest.raises(Forbidden, match="no such token"):
        node_join(token="cnetjoin_made-up", node_id="n1")
    token = join_token_create(uses=5)
    JoinToken.objects.update(revoked_at=START)
    with pytest.raises(Forbidden, match="revoked"):
        node_join(token=token, node_id="n1")
    assert not Node.objects.exists() and not NodeCredential.objects.exists()
    assert JoinToken.objects.get().uses_left == 5


@pytest.mark.django_db
def test_joining_makes_an_offline_node_without_capacity_that_registration_fills_in():
    key = node_join(token=join_token_create(), node_id="fresh-1")
    assert key.startswith("cnetnode_")
    node = Node.objects.get(node_id="fresh-1")
    assert node.status == NodeStatus.OFFLINE and node.cpu_millicores == 0 and node.memory_bytes == 0
    assert node.credential.key_hash == key_hash(key)
    node = make_node("fresh-1", cpu=2)
    assert node.status == NodeStatus.READY and node.cpu_millicores == 2000
    assert NodeCredential.objects.get().node_id == node.pk


@pytest.mark.django_db
def test_a_join_token_cannot_take_over_a_node_that_has_a_credential():
    make_node("busy")
    first = node_join(token=join_token_create(), node_id="busy")
    token = join_token_create()
    with pytest.raises(StateConflict, match="revoke") as refused:
        node_join(token=token, node_id="busy")
    assert refused.value.status == 409
    assert JoinToken.objects.get(key_hash=key_hash(token)).uses_left == 1  # the refusal spent nothing
    assert NodeCredential.objects.get().key_hash == key_hash(first)
    assert Node.objects.get(node_id="busy").status == NodeStatus.READY


@pytest.mark.django_db
def test_after_revocation_the_node_may_join_again_with_a_new_credential():
    old = node_join(token=join_token_create(), node_id="n1")
    node_credential_revoke(node_id="n1")
    new = node_join(token=join_token_create(), node_id="n1")
    credential = NodeCredential.objects.get()
    assert credential.key_hash == key_hash(new) != key_hash(old) and credential.revoked_at is None


@pytest.mark.django_db
@pytest.mark.parametrize("node_id", ["", "x" * 129, "has space", "slash/y", "semi;colon", None, 7])
def test_a_bad_node_id_is_refused_naming_the_field_and_spends_nothing(node_id):
    token = join_token_create()
    with pytest.raises(InvalidRequest) as refused:
        node_join(token=token, node_id=node_id)
    assert refused.value.field == "node_id"
    assert JoinToken.objects.get().uses_left == 1 and not Node.objects.exists()


@pytest.mark.django_db
def test_node_ids_of_the_allowed_characters_join():
    token = join_token_create(uses=None)
    for node_id in ["a", "x" * 128, "edge-01.rack_2:east"]:
        node_join(token=token, node_id=node_id)
    assert Node.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(("ttl", "uses", "field"), [(0, 1, "ttl_seconds"), (-5, 1, "ttl_seconds"),
                                                    (10**12, 1, "ttl_seconds"), ("1h", 1, "ttl_seconds"),
                                                    (60, 0, "uses"), (60, -1, "uses"), (60, True, "uses")])
def test_bad_token_settings_are_refused_naming_the_field(ttl, uses, field):
    with pytest.raises(InvalidRequest) as refused:
        join_token_create(ttl_seconds=ttl, uses=uses)
    assert refused.value.field == field
    assert not JoinToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_racing_joins_on_a_one_use_token_let_exactly_one_node_in():
    token = join_token_create(uses=1)
    results: dict[str, object] = {}
    barrier = threading.Barrier(6)

    def join(node_id: str) -> None:
        try:
            barrier.wait()
            results[node_id] = node_join(token=token, node_id=node_id)
        except Forbidden as refused:
            results[node_id] = refused
        finally:
            connection.close()

    threads = [threading.Thread(target=join, args=(f"racer-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [node_id for node_id, result in results.items() if isinstance(result, str)]
    assert len(results) == 6 and len(winners) == 1
    assert JoinToken.objects.get().uses_left == 0
    assert list(Node.objects.values_list("node_id", flat=True)) == winners
    assert NodeCredential.objects.get().node.node_id == winners[0]


@pytest.mark.django_db(transaction=True)
def test_racing_joins_as_one_node_give_it_exactly_one_credential():
    token = join_token_create(uses=None)
    results = []
    barrier = threading.Barrier(4)

    def join() -> None:
        try:
            barrier.wait()
            results.append(node_join(token=token, node_id="same"))
        except StateConflict as refused:
            results.append(refused)
        finally:
            connection.close()

    threads = [threading.Thread(target=join) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [result for result in results if isinstance(result, str)]
    assert len(results) == 4 and len(keys) == 1
    assert NodeCredential.objects.get().key_hash == key_hash(keys[0])


# --- the command -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800),
                                               ("90", 90), ("1.5h", 5400), ("never", None), ("NEVER", None)])
def test_ttl_spellings(text, seconds):
    assert ttl_seconds_parse(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "-1h", "0s", "1 hour", "soon"])
def test_bad_ttl_spellings_are_refused(text):
    with pytest.raises(InvalidRequest) as refused:
        ttl_seconds_parse(text)
    assert refused.value.field == "ttl"


@pytest.mark.django_db
def test_the_command_prints_a_token_on_its_last_line_that_joins():
    out = StringIO()
    with time_machine.travel(START, tick=False):
        call_command("create_join_token", stdout=out)
        lines = out.getvalue().splitlines()
        assert len(lines) > 1 and "1 node" in lines[0] and "expires in 1h" in lines[0]
        token = lines[-1]
        row = JoinToken.objects.get(key_hash=key_hash(token))
        assert row.uses_left == 1 and row.expires_at == START + timedelta(hours=1) and row.created_by is None
        assert node_join(token=token, node_id="from-the-command").startswith("cnetnode_")
        with pytest.raises(Forbidden, match="used up"):
            node_join(token=token, node_id="second")


@pytest.mark.django_db
def test_the_command_takes_ttl_and_uses_with_zero_for_unlimited():
    out = StringIO()
    call_command("create_join_token", "--ttl", "never", "--uses", "0", stdout=out)
    row = JoinToken.objects.get(key_hash=key_hash(out.getvalue().splitlines()[-1]))
    assert row.expires_at is None and row.uses_left is None
    out = StringIO()
    with time_machine.travel(START, tick=False):
        call_command("create_join_token", "--ttl", "15m", "--uses", "3", stdout=out)
    row = JoinToken.objects.get(key_hash=key_hash(out.getvalue().splitlines()[-1]))
    assert row.expires_at == START + timedelta(minutes=15) and row.uses_left == 3


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "says"), [(["--ttl", "soon"], "--ttl"), (["--uses", "-2"], "--uses")])
def test_the_command_refuses_bad_options_and_makes_nothing(args, says):
    with pytest.raises(CommandError, match=says):
        call_command("create_join_token", *args, stdout=StringIO())
    assert not JoinToken.objects.exists()
