"""The workload counts the dashboard and /metrics read (issue 16, point 8) are kept by database
triggers: whatever writes the table (one submit, an array's bulk insert, a batch placement, a
bulk stop, a delete, a user gone), they equal a count of the table, on SQLite and on Postgres,
before and after the control loop folds Postgres's deltas in, and two folds at once count once."""

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count

from tests.helpers import GiB, make_node
from workloads.models import Workload, WorkloadArray, WorkloadCount, WorkloadCountDelta, WorkloadStatus
from workloads.selectors import workload_counts, workload_counts_by_status
from workloads.services import workload_array_stop, workload_counts_fold, workload_delete, workload_transition

S = WorkloadStatus
BODY = {"type": "process", "requirements": {"cpu": 0.5, "memory": 268435456}, "config": {"command": "true"}}


def counted(owner_id=None) -> dict:
    """A count of the table by (status, type), of one owner (0: of none) or of all."""
    rows = (Workload.objects.all() if owner_id is None else Workload.objects.filter(owner__isnull=True)
            if owner_id == 0 else Workload.objects.filter(owner_id=owner_id))
    return {(s, t): n for s, t, n in rows.order_by().values("status", "type").annotate(n=Count("pk"))
            .values_list("status", "type", "n")}


def busy_history(api, user_api, user) -> None:
    make_node("local", cpu=2, memory=8 * GiB)  # 4 fit; the rest wait pending
    array = api.post("/api/workloads", BODY | {"name": "sweep", "count": 6}, format="json").json()
    singles = [user_api.post("/api/workloads", BODY | {"name": f"mine-{i}"}, format="json").json() for i in range(3)]
    workload_transition(workload_id=singles[0]["id"], to=S.RUNNING)
    workload_transition(workload_id=singles[0]["id"], to=S.FAILED)  # frees room: a pending one is placed
    workload_array_stop(array=WorkloadArray.objects.get(pk=array["id"]))
    workload_delete(workload=Workload.objects.get(pk=singles[1]["id"]))


@pytest.mark.django_db
def test_the_counts_equal_a_count_of_the_table_whatever_wrote_it(api, user_api, user, admin_user):
    busy_history(api, user_api, user)
    for fold in (False, True):
        if fold:
            workload_counts_fold()
        assert workload_counts() == counted()
        assert workload_counts(owner_id=user.pk) == counted(user.pk)
        assert workload_counts(owner_id=admin_user.pk) == counted(admin_user.pk)
    mine = workload_counts_by_status(user=user)
    assert mine["total"] == Workload.objects.filter(owner=user).count() == 2
    assert workload_counts_by_status(user=admin_user)["total"] == Workload.objects.count() == 8
    get_user_model().objects.filter(pk=user.pk).delete()  # their workloads stay, owned by nobody
    workload_counts_fold()
    assert workload_counts(owner_id=0) == counted(0) and sum(counted(0).values()) == 2
    assert workload_counts() == counted()
    assert workload_counts(owner_id=user.pk) == {}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="deltas and folds are Postgres's")
@pytest.mark.django_db(transaction=True)
def test_two_folds_at_once_count_each_change_once(api, user_api, user):
    busy_history(api, user_api, user)
    assert WorkloadCountDelta.objects.exists()
    barrier = threading.Barrier(2)

    def fold() -> None:
        try:
            barrier.wait()
            workload_counts_fold()
        finally:
            connection.close()

    threads = [threading.Thread(target=fold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not WorkloadCountDelta.objects.exists()
    assert workload_counts() == counted()  # now read from the folded counts alone
    assert WorkloadCount.objects.filter(n__lt=0).count() == 0
