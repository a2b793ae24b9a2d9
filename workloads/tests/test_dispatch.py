"""Dispatch rings the real (embedded or Redis) broker and leaves nothing in the working directory."""

import pytest

from workloads.dispatch import request_pending_placement


@pytest.mark.django_db
def test_publishing_writes_no_broker_files_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert request_pending_placement() is True
    assert list(tmp_path.iterdir()) == []
