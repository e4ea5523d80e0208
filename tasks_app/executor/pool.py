"""The machine's Celery pool: one task on a thread, and the worker told at once when it ends.

Celery's thread pool ends a task on its own thread and tells no one. With
Redis and prefetch disabled, the worker's event loop stops reading the
queue while the task runs and looks again only at its next turn, which
comes after a second of quiet when nothing else wakes it. A prefork pool
wakes it with its result pipe; this pool writes a byte to a pipe of its
own when a task has ended (after Celery has marked it done, so the worker
counts the slot free), and the next token is taken in milliseconds instead
of up to a second later.
"""

from __future__ import annotations

import os

from celery.concurrency import thread


class TaskPool(thread.TaskPool):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ended_r, self.ended_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.loop = None

    def register_with_event_loop(self, loop) -> None:
        super().register_with_event_loop(loop)
        self.loop = loop
        loop.add_reader(self.ended_r, self.drain)

    def drain(self) -> None:
        """Empty the pipe; being woken was the point."""
        try:
            while os.read(self.ended_r, 512):
                pass
        except BlockingIOError:
            pass

    def wake(self, _future=None) -> None:
        try:
            os.write(self.ended_w, b"\0")
        except BlockingIOError:  # full: the loop has wake-ups waiting already
            pass

    def on_apply(self, *args, **kwargs):
        result = super().on_apply(*args, **kwargs)
        # A future's callbacks run once apply_target has returned, so after
        # the request's own callback has released its slot.
        result.f.add_done_callback(self.wake)
        return result

    def on_stop(self) -> None:
        super().on_stop()
        if self.loop is not None:
            self.loop.remove_reader(self.ended_r)
        for fd in (self.ended_r, self.ended_w):
            os.close(fd)
