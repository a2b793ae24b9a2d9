"""The spool's journal: what a restarted agent reads back is exactly what was not delivered yet."""

from workloads.agent.client import Spool


class Delivers:
    """A control plane that accepts every batch (what ``Spool.flush`` calls)."""

    node_id = "n"

    def __init__(self, spool: Spool, *, meanwhile=()):
        self.spool, self.meanwhile, self.got = spool, list(meanwhile), []

    def logs(self, chunks):
        self.got += chunks
        for report in self.meanwhile:  # spooled while the batch was on its way
            self.spool.add(reports=[report])
        self.meanwhile = []
        return {}

    def reports(self, reports):
        return [{"workload_id": r["workload_id"], "accepted": True, "status": r["status"]} for r in reports]


def chunk(seq: int) -> dict:
    return {"workload_id": "w", "seq": seq, "stream": "stdout", "text": f"line {seq}\n"}


def test_what_is_read_back_is_what_was_not_delivered(tmp_path):
    path = tmp_path / "n.spool"
    spool = Spool(path)
    spool.add(logs=[chunk(0), chunk(1)])
    late = {"workload_id": "w", "status": "succeeded"}
    spool.flush(Delivers(spool, meanwhile=[late]))  # the two chunks go; the exit came during
    spool.add(logs=[chunk(2)])

    again = Spool(path)
    assert again.entries == [{"report": late}, {"logs": chunk(2)}]
    with path.open("a") as file:
        file.write('{"logs": {"torn')  # a crash mid-line: the last line, skipped
    assert Spool(path).entries == again.entries


def test_a_spool_delivered_whole_is_emptied_and_one_that_grew_long_is_rewritten(tmp_path, monkeypatch):
    path = tmp_path / "n.spool"
    spool = Spool(path)
    spool.add(logs=[chunk(0)])
    spool.flush(Delivers(spool))
    assert path.stat().st_size == 0 and not Spool(path).entries

    monkeypatch.setattr(Spool, "COMPACT_AFTER", 3)
    spool.add(logs=[chunk(1), chunk(2), chunk(3)])
    spool.flush(Delivers(spool, meanwhile=[{"workload_id": "w", "status": "failed"}]))
    assert path.read_text().count("\n") == 1  # the one entry left, not the journal of four lines
    assert Spool(path).entries == [{"report": {"workload_id": "w", "status": "failed"}}]
