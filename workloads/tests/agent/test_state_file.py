"""The agent's state file is a journal: each save appends what changed, and reading it back gives
the last state saved, across restarts, compactions and a line torn by a crash."""

import json

from workloads.agent.reconcile import StateFile


def entry(offset: int) -> dict:
    return {"pid": 100 + offset, "log_offsets": {"stdout": offset, "stderr": 0}, "type": "process"}


def test_what_is_read_back_is_the_last_state_saved_and_a_save_appends_only_what_changed(tmp_path):
    state_file = StateFile(tmp_path / "node.json")
    state_file.save(lambda: {"a": entry(0), "b": entry(0)})
    state_file.save(lambda: {"a": entry(0), "b": entry(7), "c": entry(0)})
    state_file.save(lambda: {"b": entry(7), "c": entry(0)})

    assert state_file.load() == {"b": entry(7), "c": entry(0)}
    *_, changed, gone = state_file.path.read_text().splitlines()
    assert json.loads(changed) == {"b": entry(7), "c": entry(0)}  # not "a": it had not changed
    assert json.loads(gone) == {"a": None}
    assert StateFile(state_file.path).load() == {"b": entry(7), "c": entry(0)}  # as a restarted agent reads it


def test_a_line_torn_by_a_crash_leaves_the_state_saved_before_it(tmp_path):
    state_file = StateFile(tmp_path / "node.json")
    state_file.save(lambda: {"a": entry(0)})
    state_file.save(lambda: {"a": entry(3)})
    with state_file.path.open("a") as file:
        file.write('{"a": {"pid": 1')  # the save the crash interrupted
    assert StateFile(state_file.path).load() == {"a": entry(3)}


def test_a_restarted_agent_and_a_long_journal_write_it_whole(tmp_path):
    first = StateFile(tmp_path / "node.json")
    first.save(lambda: {"a": entry(0)})
    first.save(lambda: {"a": entry(1)})
    restarted = StateFile(first.path)
    restarted.save(lambda: {"a": entry(2), "b": entry(0)})
    assert len(restarted.path.read_text().splitlines()) == 1

    for offset in range(StateFile.COMPACT_AFTER + 1):
        restarted.save(lambda offset=offset: {"a": entry(offset)})
    assert len(restarted.path.read_text().splitlines()) < StateFile.COMPACT_AFTER
    assert StateFile(first.path).load() == {"a": entry(StateFile.COMPACT_AFTER)}


def test_the_state_file_an_earlier_agent_wrote_whole_is_read(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"a": entry(5)}))  # one snapshot, no newline
    assert StateFile(path).load() == {"a": entry(5)}
