"""Where workers and viewers meet: what live events exist and where they travel.

Two paths, each chosen for what it carries:

* **Log lines** go into a Redis stream per task (``XADD``). A stream keeps
  order, gives every batch an id a viewer can resume from, and lets a viewer
  who joins late read what was already printed before following new lines,
  so nothing is lost or shown twice, across reconnects too.
* **Status changes and queue moves** go through the Channels layer to groups
  named after the task, its machine group and its owner; consumers render
  them for the browser or pass them on as JSON.

Workers call these functions from synchronous code. Publishing never raises:
a Redis hiccup must not fail a task; the durable record is in PostgreSQL and
in the stored log files.
"""

from __future__ import annotations

import functools
import logging

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

log = logging.getLogger(__name__)

# A log stream keeps about this many batches; older ones are in the stored file.
STREAM_MAXLEN = 20_000
# A finished task's stream lingers this long for viewers still attached.
STREAM_TTL_SECONDS = 3600


def log_stream_key(task_id: str) -> str:
    return f"{settings.SIMDECK_QUEUE_PREFIX}:log:{task_id}"


def task_group(task_id: str) -> str:
    return f"task.{task_id}"


def machine_group_group(group_id: int) -> str:
    return f"group.{group_id}"


def owner_group(user_id: int) -> str:
    return f"owner.{user_id}"


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def append_log(task_id: str, stream: str, data: bytes) -> str | None:
    """Add a batch of complete lines of ``stream`` ('stdout' or 'stderr'); returns its id."""
    try:
        entry = _redis().xadd(
            log_stream_key(task_id), {"s": stream, "d": data}, maxlen=STREAM_MAXLEN, approximate=True
        )
        return entry.decode()
    except redis.RedisError:
        log.warning("Could not publish log lines of task %s", task_id, exc_info=True)
        return None


def end_log(task_id: str) -> None:
    """Mark the stream finished, so followers stop, and let it expire."""
    key = log_stream_key(task_id)
    try:
        pipe = _redis().pipeline()
        pipe.xadd(key, {"s": "end", "d": b""}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(key, STREAM_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError:
        log.warning("Could not close the log stream of task %s", task_id, exc_info=True)


def task_changed(task_id: str, group_id: int, owner_id: int, status: str, left_queue: bool) -> None:
    """Tell viewers a task changed status (called after the change committed)."""
    layer = get_channel_layer()
    if layer is None:
        return
    event = {"type": "task.changed", "task": task_id, "status": status, "group": group_id}
    send = async_to_sync(layer.group_send)
    try:
        for name in (task_group(task_id), machine_group_group(group_id), owner_group(owner_id)):
            send(name, event)
        if left_queue:
            queue_moved(group_id)
    except Exception:  # the live view is a convenience; the change itself is stored
        log.warning("Could not publish the change of task %s", task_id, exc_info=True)


def queue_moved(group_id: int) -> None:
    """Send the group's queue order once; each viewer finds its own position in it."""
    from tasks_app.models import Task

    order = list(
        Task.objects.queued_in(group_id).order_by("queued_at", "id").values_list("id", flat=True)[:10_000]
    )
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(machine_group_group(group_id), {"type": "queue.moved", "order": order})
