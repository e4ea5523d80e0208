"""The local provider's placement of machines on the host."""

import os

from tasks_app.providers.local import cpu_set


def test_small_machines_are_pinned_to_different_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_set(1, slot=0) == [0]
    assert cpu_set(1, slot=1) == [1]
    assert cpu_set(2, slot=1) == [2, 3]
    assert cpu_set(2, slot=2) == [0, 1]
    assert cpu_set(4, slot=5) is None  # the type asks for the whole host: share it
