"""The machine's pool wakes the worker's event loop when a task ends, after its slot is free."""

from __future__ import annotations

import threading

from kombu.asynchronous import Hub

from tasks_app.executor.pool import TaskPool


def test_the_loop_wakes_when_a_task_ends_and_its_slot_is_already_free():
    pool = TaskPool(limit=1)
    pool.start()
    hub = Hub()
    pool.register_with_event_loop(hub)
    released = threading.Event()
    seen_at_wake = []
    original_drain = pool.drain

    def drain():
        seen_at_wake.append(released.is_set())
        original_drain()

    hub.readers[pool.ended_r] = (drain, ())  # the reader the loop calls, observed
    running = threading.Event()
    go = threading.Event()

    def task():
        running.set()
        go.wait(30)
        return "done"

    try:
        pool.apply_async(task, callback=lambda _result: released.set())
        assert running.wait(30)
        # While the task runs nothing wakes the loop.
        assert not hub.poller.poll(0.2)
        go.set()
        events = hub.poller.poll(30)
        assert [fd for fd, _ in events] == [pool.ended_r]
        for fd, _ in events:
            callback, args = hub.readers[fd]
            callback(*args)
        # The request's callback (Celery frees the slot there) ran before the wake.
        assert seen_at_wake == [True]
        # Drained: the next turn of the loop sleeps again.
        assert not hub.poller.poll(0.2)
    finally:
        pool.stop()
        hub.close()
