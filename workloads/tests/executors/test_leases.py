"""Leases: exclusive, kept across a restart, and read per owner, not per node."""

import threading

import pytest

from workloads.executors.leases import Leases, LeaseUnavailable


def test_each_key_goes_to_one_owner_and_a_survivor_keeps_its_own(tmp_path):
    leases = Leases(tmp_path)
    assert leases.take("a", ["1", "2", "3"]) == ["1"]
    assert leases.take("b", ["1", "2", "3"]) == ["2"]
    # A re-adopted workload (a new Leases, as after an agent restart) keeps its key, even when
    # its first choice is free again.
    leases.release("a")
    assert Leases(tmp_path).take("b", ["1", "2", "3"]) == ["2"]
    assert Leases(tmp_path).held_by("b") == ["2"] and Leases(tmp_path).owners() == {"2": "b"}
    with pytest.raises(LeaseUnavailable):
        leases.take("c", ["2"])
    assert leases.held_by("c") == [] and leases.owners() == {"2": "b"}


def test_racing_starts_never_share_a_key(tmp_path):
    won: dict[str, list[str]] = {}
    barrier = threading.Barrier(8)

    def start(owner: str) -> None:
        barrier.wait()
        won[owner] = Leases(tmp_path).take(owner, [str(uid) for uid in range(8)])

    threads = [threading.Thread(target=start, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [key for taken in won.values() for key in taken]
    assert sorted(keys) == [str(uid) for uid in range(8)]
    assert {owner: Leases(tmp_path).held_by(owner) for owner in won} == won


def test_leases_an_older_agent_took_without_an_index_are_still_found(tmp_path):
    # What an agent before the index left on disk: lease files only.
    (tmp_path / "7").write_text("survivor")
    (tmp_path / "8").write_text("other")
    leases = Leases(tmp_path)
    assert leases.take("survivor", ["8", "9", "7"]) == ["7"]  # its own, not the first free one
    assert leases.held_by("other") == ["8"]
    assert leases.stale({"survivor"}) == {"other"}


def test_a_start_and_an_exit_read_only_their_own_leases(tmp_path, monkeypatch):
    leases = Leases(tmp_path)
    for i in range(50):
        leases.take(f"w{i}", [str(uid) for uid in range(100)])
    read = []
    original = Leases._holder
    monkeypatch.setattr(Leases, "_holder", lambda self, key: read.append(key) or original(self, key))
    taken = leases.take("new", [str(uid) for uid in range(100)])
    leases.release("new")
    assert len(read) <= 2 * len(taken) and not leases.held_by("new")
