"""Where workers and viewers meet: what live events exist and where they travel.

Two paths, each chosen for what it carries:

* **Log lines** go into a Redis stream per task (``XADD``). A stream keeps
  order, gives every batch an id a viewer can resume from, and lets a viewer
  who joins late read what was already printed before following new lines,
  so nothing is lost or shown twice, across reconnects too.
* **Status changes, queue moves and resource samples** go through the Channels layer to groups
  named after the task, its machine group and its owner; consumers render
  them for the browser or pass them on as JSON.

Workers call these functions from synchronous code. Publishing never raises:
a Redis hiccup must not fail a task; the durable record is in PostgreSQL and
in the stored log files.

The package's modules: :mod:`~tasks_app.live.logs` (log streams),
:mod:`~tasks_app.live.messages` (each kind of event with its payload, a
type the consumers read back), :mod:`~tasks_app.live.events` (the one sender
of each kind) and :mod:`~tasks_app.live.publishing` (how either reaches Redis). What the
browser connects to is in :mod:`tasks_app.sockets`.
"""

from tasks_app.live.events import (
    progress_changed,
    queue_order,
    resources_sampled,
    task_changed,
    tasks_changed,
)
from tasks_app.live.logs import (
    ENTRY_MAX_BYTES,
    append_log,
    begin_log,
    close_log,
    end_log,
    entry_pieces,
    log_stream_key,
)
from tasks_app.live.publishing import (
    ALL_TASKS_GROUP,
    flush,
    machine_group_group,
    owner_group,
    pop_later,
    project_group,
    release,
    task_group,
    together,
)

__all__ = [
    "progress_changed",
    "ALL_TASKS_GROUP",
    "ENTRY_MAX_BYTES",
    "append_log",
    "begin_log",
    "close_log",
    "end_log",
    "entry_pieces",
    "flush",
    "log_stream_key",
    "machine_group_group",
    "owner_group",
    "pop_later",
    "project_group",
    "queue_order",
    "release",
    "resources_sampled",
    "task_changed",
    "task_group",
    "tasks_changed",
    "together",
]
