"""Reading a log: ``lines`` is capped, and the cost follows what is returned, not the log's length."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.helpers import make_node, submit_process
from workloads.logs import workload_log_read, workload_logs_append
from workloads.models import WorkloadLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def long_log(settings):
    """5,000 chunks of two lines each, under a cap that keeps them all."""
    settings.CNET_LOG_MAX_BYTES = 10 * 1024 * 1024
    make_node("local")
    workload = submit_process()
    WorkloadLog.objects.bulk_create(WorkloadLog(workload=workload, seq=seq, text=f"a {seq}\nb {seq}\n")
                                    for seq in range(5000))
    return workload


def test_the_last_lines_read_only_the_newest_chunks(long_log):
    with CaptureQueriesContext(connection) as queries:
        read = workload_log_read(workload=long_log, lines=3)
    assert read.lines == ["b 4998", "a 4999", "b 4999"] and read.dropped_bytes == 0
    # One read of the usage row, one page of chunks: no query reads the log beyond its last pages.
    chunk_reads = [q["sql"] for q in queries.captured_queries if '"workloads_workloadlog"' in q["sql"]]
    assert len(chunk_reads) == 1 and "LIMIT 4" in chunk_reads[0]


def test_pages_double_until_the_lines_are_there(long_log):
    with CaptureQueriesContext(connection) as queries:
        read = workload_log_read(workload=long_log, lines=100)
    assert read.lines[0] == "a 4950" and read.lines[-1] == "b 4999" and len(read.lines) == 100
    limits = [q["sql"].rsplit("LIMIT", 1)[1].split()[0] for q in queries.captured_queries
              if '"workloads_workloadlog"' in q["sql"]]
    assert limits == ["4", "8", "16", "32"]  # 60 chunks read for the 50 that hold the lines


def test_lines_above_the_maximum_are_refused_naming_the_field(long_log, settings, api):
    settings.CNET_LOG_MAX_LINES = 50
    answer = api.get(f"/api/workloads/{long_log.pk}/logs?lines=51")
    assert answer.status_code == 400 and "lines" in answer.json()["detail"]
    # Without ``lines``: the last 50.
    lines = api.get(f"/api/workloads/{long_log.pk}/logs").json()["lines"]
    assert len(lines) == 50 and lines[-1] == "b 4999"


def test_a_short_log_is_read_whole_and_zero_lines_read_nothing(settings):
    make_node("local")
    workload = submit_process()
    workload_logs_append(workload_id=workload.pk, chunks=[(0, "stdout", "one\ntwo\n"), (1, "stderr", "three\n")])
    assert workload_log_read(workload=workload, lines=None).lines == ["one", "two", "three"]
    assert workload_log_read(workload=workload, lines=0).lines == []
