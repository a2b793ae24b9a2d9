"""Dispatch rings the real (embedded or Redis) broker and leaves nothing in the working directory."""

import pytest
from django.db import transaction

from tests.helpers import make_node, submit_process
from workloads.dispatch import request_pending_placement, request_pending_placement_on_commit
from workloads.models import WorkloadStatus


@pytest.mark.django_db
def test_publishing_writes_no_broker_files_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert request_pending_placement() is True
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db
def test_releases_ring_for_a_pending_pass_once_a_transaction_and_only_while_work_waits(
        django_capture_on_commit_callbacks):
    # A burst of short jobs frees room nobody waits for at every exit: no pass for those.
    make_node("busy", cpu=1)
    with django_capture_on_commit_callbacks() as rings:
        with transaction.atomic():
            request_pending_placement_on_commit()
            request_pending_placement_on_commit()  # a batch of exits in one transaction
    assert len(rings) == 1
    assert rings[0]() is False  # nothing pending: nothing rung

    submit_process(cpu=1, name="holds")
    waiting = submit_process(cpu=1, name="waits")
    assert waiting.status == WorkloadStatus.PENDING
    assert rings[0]() is True
