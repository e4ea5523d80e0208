"""Sending live messages from synchronous code: the Channels layer, and Redis round trips saved.

Workers and the services call these from synchronous code. Sending never
raises and never waits on Redis: one event loop of the process's own, in a
thread, hands the messages over in order (:func:`send`). A group nobody
listens to is skipped (:func:`listened`), and a :func:`together` block
holds what a machine sends for a tiny task for one round trip.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from channels.layers import get_channel_layer
from django.conf import settings

log = logging.getLogger(__name__)


def task_group(task_id: str) -> str:
    return f"task.{task_id}"


def machine_group_group(group_id: int) -> str:
    return f"group.{group_id}"


def owner_group(user_id: int) -> str:
    return f"owner.{user_id}"


def project_group(project_id: int) -> str:
    return f"project.{project_id}"


# Every status change, for pages of staff users (who see every task).
ALL_TASKS_GROUP = "tasks.all"


@functools.cache
def redis_client() -> redis.Redis:
    """The live Redis, with timeouts: a Redis that stops answering must not hang a sender."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def listened(groups: set[str]) -> set[str]:
    """Which of ``groups`` anyone has joined, in one Redis round trip; all of them when that cannot be told.

    Most groups have nobody in them most of the time: every task has a group
    of its own, and a sweep runs unattended. A send costs two Redis calls
    and a hop to the publishing loop even when nobody receives it; a look at
    the channel layer's record of each group's members (one pipelined call)
    saves all that, and saves reading a queue order nobody would see.
    Nothing is missed by skipping: the change is committed before this look,
    and a viewer joins its groups before it reads what it shows, so one who
    joins after the look reads the change itself.
    """
    keys = _member_keys(groups)
    if keys is None:
        return set() if get_channel_layer() is None else groups
    if not keys:
        return set()
    try:
        # One count for all of them first: in an unattended sweep it is zero.
        if not redis_client().exists(*keys.values()):
            return set()
        return _whichlistened(keys)
    except redis.RedisError:
        return groups


def _member_keys(groups: set[str]) -> dict[str, str] | None:
    """The Redis key of the channel layer's member set of each of ``groups``; None if none can be read."""
    layer = get_channel_layer()
    if layer is None:
        return None
    hosts = getattr(layer, "hosts", None)
    key = getattr(layer, "_group_key", None)  # channels_redis: the sorted set of the group's channels
    if key is None or not hosts or len(hosts) != 1 or hosts[0].get("address") != settings.REDIS_URL:
        return None
    return {group: key(group) for group in sorted(groups)}


def _whichlistened(keys: dict[str, str]) -> set[str]:
    pipe = redis_client().pipeline(transaction=False)
    for name in keys.values():
        pipe.exists(name)
    return {group for group, present in zip(keys, pipe.execute(), strict=True) if present}


_held = threading.local()


class _Held:
    """Log ends and status changes waiting for the end of a :func:`together` block."""

    def __init__(self) -> None:
        # Functions adding each held log end's commands to a pipeline.
        self.ends: list[Callable[[object], None]] = []
        self.changes: list[tuple[set[str], Callable[[set[str]], None]]] = []
        self.pops: list[tuple[str, list]] = []

    def send(self) -> None:
        if not self.ends and not self.changes and not self.pops:
            return
        checks = []
        try:
            pipe = redis_client().pipeline(transaction=False)
            for add_end in self.ends:
                add_end(pipe)
            popped_from = len(pipe)
            for key, _slot in self.pops:
                pipe.rpop(key)
            for groups, deliver in self.changes:
                keys = _member_keys(groups)
                if keys:
                    pipe.exists(*keys.values())
                    checks.append((keys, deliver))
                else:
                    deliver(listened(groups))  # nobody to ask about, or no way to ask: no round trip
            results = pipe.execute() if len(pipe) else []
            counts = results[len(results) - len(checks) :]
            popped = results[popped_from : popped_from + len(self.pops)]
            for (_key, slot), value in zip(self.pops, popped, strict=True):
                slot.append(value)
        except redis.RedisError:
            log.warning("Could not send the held ends of %s logs", len(self.ends), exc_info=True)
            for keys, deliver in checks:
                deliver(set(keys))  # as _listened does when it cannot tell
            return
        for (keys, deliver), count in zip(checks, counts, strict=True):
            try:
                deliver(_whichlistened(keys) if count else set())
            except redis.RedisError:
                deliver(set(keys))


def holding() -> _Held | None:
    """What the current :func:`together` block holds; None outside one."""
    return getattr(_held, "work", None)


@contextlib.contextmanager
def together():
    """Hold the log ends and status changes of the block, and send them at its end in one round trip.

    A machine that claims a tiny task and ends it a few milliseconds later
    would otherwise make three round trips to Redis for it: one to ask who
    hears of the claim, one to end the log, one to ask who hears of the
    ending. A block inside another joins it; :func:`release` sends what is
    held at once and ends the holding early (a task that runs for a while
    is shown at once).
    """
    if holding() is not None:
        yield
        return
    work = _held.work = _Held()
    try:
        yield
    finally:
        if holding() is work:
            _held.work = None
            work.send()


def pop_later(key: str) -> Callable[[], bytes | None] | None:
    """Pop the right end of the list ``key`` with what the current :func:`together` block sends.

    Returns a function that gives what was popped once the block has ended
    (None if the list was empty or Redis could not be reached), or None when
    no block holds anything: then pop it yourself.
    """
    work = holding()
    if work is None:
        return None
    slot: list = []
    work.pops.append((key, slot))
    return lambda: slot[0] if slot else None


def release() -> None:
    """Send what the current :func:`together` block holds, now, and hold nothing more in it."""
    work = holding()
    if work is not None:
        _held.work = None
        work.send()


# A group that lists many tasks is woken at most this often: a machine that
# moves hundreds of tasks a second sends each of those groups about ten
# messages a second rather than a thousand, and every page reading them
# refreshes at most once a second anyway (tasks_app.sockets.pages).
WAKE_SECONDS = 0.1


def send(messages: list[tuple[str, dict]], wakes: list[tuple[str, dict]] = ()) -> None:
    """Hand ``messages`` to the publishing loop, which sends them in the order given.

    ``wakes`` are messages that only prompt their group to look again (a
    page re-reads what it shows): a group woken less than ``WAKE_SECONDS``
    ago gets the latest of them once that time is up, so each change still
    reaches it within ``WAKE_SECONDS``, coalesced with the others.

    The caller does not wait for Redis: a status change, an API answer or a
    machine's next step never waits on viewers. One queue, drained by one
    coroutine, keeps every change in the order it was made.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _publishing_loop()
    _pending.acquire()  # released once sent; a stuck Redis stops the senders at the cap
    try:
        loop.call_soon_threadsafe(_outbox[1].put_nowait, (layer, messages, list(wakes)))
    except BaseException:
        _pending.release()
        raise


# Wake-ups held back, by group (touched by the publishing loop only), and
# when each group was last woken, in the loop's clock.
_owed: dict[str, tuple] = {}
_woken: dict[str, float] = {}


async def _deliver(outbox: asyncio.Queue) -> None:
    loop = asyncio.get_running_loop()
    while True:
        layer, messages, wakes = await outbox.get()
        try:
            for group, message in messages:
                # A stuck Redis costs the viewers a message, never the sender's time.
                await asyncio.wait_for(layer.group_send(group, message), timeout=5)
            for group, message in wakes:
                if group in _owed:  # one is already due: this one replaces it
                    _owed[group] = (layer, message)
                    continue
                wait = _woken.get(group, -WAKE_SECONDS) + WAKE_SECONDS - loop.time()
                if wait > 0:
                    _owed[group] = (layer, message)
                    loop.call_later(wait, lambda g=group: loop.create_task(_wake_owed(g)))
                    continue
                if len(_woken) > 10_000:  # forget groups not woken lately
                    for name in [n for n, at in _woken.items() if at < loop.time() - WAKE_SECONDS]:
                        del _woken[name]
                _woken[group] = loop.time()
                await asyncio.wait_for(layer.group_send(group, message), timeout=5)
        except Exception:  # the live view is a convenience; the change itself is stored
            log.warning("Could not publish %s live messages", len(messages) + len(wakes), exc_info=True)
        finally:
            _pending.release()


async def _wake_owed(group: str) -> None:
    layer, message = _owed.pop(group)
    _woken[group] = asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(layer.group_send(group, message), timeout=5)
    except Exception:  # the live view is a convenience; the change itself is stored
        log.warning("Could not wake the live group %s", group, exc_info=True)


def flush(timeout: float = 5.0) -> bool:
    """Wait until every message handed over so far is sent (or ``timeout``); True if all were."""
    deadline = time.monotonic() + timeout
    taken = 0
    try:
        while taken < PENDING_MAX:
            if not _pending.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            taken += 1
    finally:
        for _ in range(taken):
            _pending.release()
    while _owed:  # wake-ups held back, due within WAKE_SECONDS
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# At most this many sends wait for Redis; beyond, senders wait for room.
PENDING_MAX = 10_000
_pending = threading.BoundedSemaphore(PENDING_MAX)
_outbox: tuple[int, asyncio.Queue] | None = None
_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _publishing_loop() -> asyncio.AbstractEventLoop:
    """An event loop of this process's own, running in a thread, for sending from sync code.

    A fresh loop per send (``async_to_sync``) would open a new Redis
    connection each time, about ten times the cost of the send itself; one
    loop keeps its connections. It also serves sync code that runs under
    another event loop, which must not be blocked. A forked child (a Celery
    pool process) does not inherit the thread, so it starts its own.
    """
    global _loop, _outbox, _pending
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or _loop[1].is_closed():
            loop = asyncio.new_event_loop()
            if _loop is not None and _loop[0] != os.getpid():
                _pending = threading.BoundedSemaphore(PENDING_MAX)  # the parent's count is not ours
            _outbox = (os.getpid(), asyncio.Queue())
            _owed.clear()  # a parent's held-back wake-ups are its own loop's to send
            _woken.clear()
            loop.create_task(_deliver(_outbox[1]))
            threading.Thread(target=loop.run_forever, name="live-publisher", daemon=True).start()
            _loop = (os.getpid(), loop)
            atexit.register(flush, 2.0)  # what is still on its way when the process ends
        return _loop[1]
