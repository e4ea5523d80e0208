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

import asyncio
import functools
import logging
import threading

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
    event = {"type": "task.changed", "task": task_id, "status": status, "group": group_id}
    messages = [
        (name, event) for name in (task_group(task_id), machine_group_group(group_id), owner_group(owner_id))
    ]
    if left_queue:
        messages.append((machine_group_group(group_id), queue_order(group_id)))
    try:
        _send(messages)
    except Exception:  # the live view is a convenience; the change itself is stored
        log.warning("Could not publish the change of task %s", task_id, exc_info=True)


def queue_order(group_id: int) -> dict:
    """The group's queue order, sent once; each viewer finds its own position in it."""
    from tasks_app.models import Task

    order = Task.objects.queued_in(group_id).order_by("queued_at", "id").values_list("id", flat=True)
    return {"type": "queue.moved", "order": list(order[:10_000])}


def _send(messages: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return

    async def send_all() -> None:
        for group, message in messages:
            await layer.group_send(group, message)

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: plain synchronous code
        async_to_sync(send_all)()
        return
    # Synchronous code running under an event loop (e.g. a thread driving a
    # browser) cannot block that loop; send from a helper thread instead.
    helper = threading.Thread(target=async_to_sync(send_all), daemon=True)
    helper.start()
    helper.join(timeout=5)
