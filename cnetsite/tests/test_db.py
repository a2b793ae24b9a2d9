"""atomic_retried on a real Postgres deadlock: the aborted transaction runs again and wins."""

import threading

import pytest
from django.db import connection

from core.db import atomic_retried
from nodes.models import Node
from tests.helpers import make_node


@pytest.mark.django_db(transaction=True)
def test_a_transaction_aborted_to_break_a_deadlock_runs_again_and_both_commit_once():
    if connection.vendor != "postgresql":
        pytest.skip("row-lock deadlocks are Postgres's; SQLite runs one writer at a time")
    first, second = make_node("a").pk, make_node("b").pk
    both_hold_one = threading.Barrier(2, timeout=10)
    runs: list[str] = []
    errors: list[BaseException] = []

    def claim_in_order(name: str, order: tuple[int, int]) -> None:
        def work() -> None:
            runs.append(name)
            for step, pk in enumerate(order):
                with connection.cursor() as cursor:
                    cursor.execute("UPDATE nodes_node SET cpu_allocated_millicores = cpu_allocated_millicores + 1 "
                                   "WHERE id = %s", [pk])
                if step == 0 and runs.count(name) == 1:
                    both_hold_one.wait()  # each holds one row and reaches for the other's: a cycle

        try:
            atomic_retried(work)
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim_in_order, args=("ab", (first, second))),
               threading.Thread(target=claim_in_order, args=("ba", (second, first)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(runs) in (["ab", "ab", "ba"], ["ab", "ba", "ba"])  # exactly one ran again
    assert list(Node.objects.order_by("node_id").values_list("cpu_allocated_millicores", flat=True)) == [2, 2]
