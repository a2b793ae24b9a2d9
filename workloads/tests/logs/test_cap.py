"""A workload's output is kept within its cap: the head and the tail stay, the middle goes and the
log says how much; chunks sent again (or dropped before) never come back."""

import pytest
from django.db.models import Sum
from django.db.models.functions import Length

from tests.helpers import make_node, submit_process
from workloads.logs import dropped_marker, workload_log_read, workload_logs_append
from workloads.models import WorkloadLog, WorkloadLogUsage

pytestmark = pytest.mark.django_db


@pytest.fixture
def capped(settings):
    """A 1,000-byte cap: a head of 500 bytes, a tail of 500."""
    settings.CNET_LOG_MAX_BYTES = 1000
    make_node("local")
    return submit_process()


def lines_of(seqs, width=100):
    """Chunks of one 100-byte line each ("line 0007 xxx...\\n"), numbered by their seq."""
    return [(seq, "stdout", f"line {seq:04d} ".ljust(width - 1, "x") + "\n") for seq in seqs]


def stored_bytes(workload) -> int:
    return WorkloadLog.objects.filter(workload=workload).aggregate(n=Sum(Length("text")))["n"] or 0


def test_a_log_over_its_cap_keeps_its_head_and_tail_and_says_what_was_dropped(capped, user_api, user):
    capped.owner = user
    capped.save(update_fields=["owner"])
    for start in range(0, 40, 8):  # 40 lines of 100 bytes in five batches: 4,000 bytes
        workload_logs_append(workload_id=capped.pk, chunks=lines_of(range(start, start + 8)))
    assert stored_bytes(capped) == 1000
    seqs = list(WorkloadLog.objects.filter(workload=capped).order_by("seq").values_list("seq", flat=True))
    assert seqs == [0, 1, 2, 3, 4, *range(35, 40)]
    usage = WorkloadLogUsage.objects.get(workload=capped)
    assert (usage.head_last_seq, usage.dropped_bytes, usage.dropped_chunks) == (4, 3000, 30)

    answer = user_api.get(f"/api/workloads/{capped.pk}/logs").json()
    assert answer["dropped_bytes"] == 3000
    assert answer["lines"][:5] == [text.rstrip("\n") for _, _, text in lines_of(range(5))]
    assert answer["lines"][5] == dropped_marker(3000) and "3000 bytes of output dropped" in answer["lines"][5]
    assert answer["lines"][6:] == [text.rstrip("\n") for _, _, text in lines_of(range(35, 40))]
    # The tail alone: no marker, since nothing is missing between its lines.
    assert user_api.get(f"/api/workloads/{capped.pk}/logs?lines=3").json()["lines"] == [
        text.rstrip("\n") for _, _, text in lines_of(range(37, 40))]


def test_chunks_sent_again_or_dropped_over_the_cap_are_not_stored_again(capped):
    workload_logs_append(workload_id=capped.pk, chunks=lines_of(range(20)))
    before = list(WorkloadLog.objects.filter(workload=capped).order_by("seq").values_list("seq", "text"))
    assert workload_logs_append(workload_id=capped.pk, chunks=lines_of(range(20))) == 20  # a retried batch
    assert list(WorkloadLog.objects.filter(workload=capped).order_by("seq").values_list("seq", "text")) == before
    assert WorkloadLogUsage.objects.get(workload=capped).dropped_bytes == 1000


def test_one_chunk_over_the_whole_cap_keeps_its_end(capped):
    workload_logs_append(workload_id=capped.pk, chunks=[(0, "stdout", "a" * 3000 + "the end\n")])
    (text,) = WorkloadLog.objects.filter(workload=capped).values_list("text", flat=True)
    assert len(text) == 500 and text.endswith("the end\n")
    assert WorkloadLogUsage.objects.get(workload=capped).dropped_bytes == 2508
    assert workload_log_read(workload=capped, lines=None).lines == [dropped_marker(2508), text.rstrip("\n")]


def test_a_multibyte_chunk_is_cut_on_a_character_and_counted_in_bytes(capped):
    workload_logs_append(workload_id=capped.pk, chunks=[(0, "stdout", "é" * 1000)])  # 2,000 bytes
    (text,) = WorkloadLog.objects.filter(workload=capped).values_list("text", flat=True)
    assert text == "é" * 250
    assert WorkloadLogUsage.objects.get(workload=capped).dropped_bytes == 1500


def test_a_log_stored_before_the_cap_counts_as_its_head(capped):
    WorkloadLog.objects.bulk_create(WorkloadLog(workload=capped, seq=seq, stream=stream, text=text)
                                    for seq, stream, text in lines_of(range(8)))  # 800 bytes, over the head
    workload_logs_append(workload_id=capped.pk, chunks=lines_of(range(8, 20)))
    seqs = list(WorkloadLog.objects.filter(workload=capped).order_by("seq").values_list("seq", flat=True))
    assert seqs == [*range(8), *range(15, 20)]
