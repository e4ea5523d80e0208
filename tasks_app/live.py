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

from tasks_app.models import Task

log = logging.getLogger(__name__)

# A log stream keeps about this many batches; older ones are in the stored file.
STREAM_MAXLEN = 20_000
# A finished task's stream lingers this long for viewers still attached.
STREAM_TTL_SECONDS = 3600
# While Redis is unreachable, lines wait (up to this much per task) and are
# retried at most this often.
UNSENT_MAX_BYTES = 8 << 20
# The largest stream entry. Output without newlines (a 10 MB line) is stored
# in pieces this size, so that no frame a viewer is sent grows past what the
# WebSocket server will send (1 MiB by default, after JSON or HTML escaping).
ENTRY_MAX_BYTES = 64 * 1024
RETRY_SECONDS = 1.0

# Lines Redis did not take yet, per task; the stdout and stderr readers share them.
_unsent: dict[str, list[tuple[str, bytes]]] = {}
_retry_at: dict[str, float] = {}
_publishing = threading.Lock()


def log_stream_key(task_id: str) -> str:
    return f"{settings.SIMDECK_QUEUE_PREFIX}:log:{task_id}"


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
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def begin_log(task_id: str, *, first_attempt: bool = False) -> None:
    """Start the task's stream afresh: a follower that sees this mark has every line since.

    The stream of a first attempt does not exist yet, and a follower waits
    for it to appear: its mark goes out with the first lines, or with the
    end, in the same round trip. A later attempt's stream still holds the
    lines and the end mark of the one before, and is started over at once.
    """
    key = log_stream_key(task_id)
    with _publishing:
        _retry_at.pop(task_id, None)
        if first_attempt:
            _unsent[task_id] = [("begin", b"")]
            return
        _unsent.pop(task_id, None)
        try:
            # No MULTI: a follower that looks between the two sees no stream, and waits for one.
            pipe = _redis().pipeline(transaction=False)
            pipe.delete(key)  # a resubmitted task's earlier attempt is in its stored log
            pipe.xadd(key, {"s": "begin", "d": b""}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.execute()
        except redis.RedisError:
            log.warning("Could not open the log stream of task %s", task_id, exc_info=True)


def append_log(task_id: str, stream: str, data: bytes) -> str | None:
    """Add a batch of complete lines of ``stream`` ('stdout' or 'stderr'); returns its id.

    When Redis cannot be reached the batch is kept (up to ``UNSENT_MAX_BYTES``
    per task, newest kept) and sent before the next one, so followers see
    the lines late rather than never. Retries wait ``RETRY_SECONDS``: a
    chatty simulator must not stall on a dead connection.
    """
    with _publishing:
        pending = _unsent.setdefault(task_id, [])
        pending.extend((stream, piece) for piece in entry_pieces(data))
        if time.monotonic() < _retry_at.get(task_id, 0.0):
            _trim(pending)
            return None
        try:
            pipe = _redis().pipeline(transaction=False)
            for name, chunk in pending:
                pipe.xadd(
                    log_stream_key(task_id), {"s": name, "d": chunk}, maxlen=STREAM_MAXLEN, approximate=True
                )
            ids = pipe.execute()
        except redis.RedisError:
            if task_id not in _retry_at:
                log.warning("Could not publish log lines of task %s; keeping them", task_id, exc_info=True)
            _retry_at[task_id] = time.monotonic() + RETRY_SECONDS
            _trim(pending)
            return None
        _unsent.pop(task_id, None)
        if _retry_at.pop(task_id, None) is not None:
            log.info("Log lines of task %s flow again", task_id)
        return ids[-1].decode()


def entry_pieces(data: bytes, size: int = ENTRY_MAX_BYTES) -> list[bytes]:
    """``data`` cut into entries of at most ``size`` bytes, never inside a UTF-8 character.

    A viewer's frame holds whole entries; small entries keep every frame
    under the WebSocket server's message limit, however long a line is.
    """
    pieces = []
    while len(data) > size:
        cut = size
        # Back off over continuation bytes (0b10xxxxxx) to the start of a character.
        while cut > size - 4 and data[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(data[:cut])
        data = data[cut:]
    pieces.append(data)
    return pieces


def _trim(pending: list[tuple[str, bytes]]) -> None:
    """Forget the oldest unsent batches beyond the cap (the stored log keeps them)."""
    size = sum(len(d) for _, d in pending)
    while len(pending) > 1 and size > UNSENT_MAX_BYTES:
        size -= len(pending.pop(0)[1])


def end_log(task_id: str) -> None:
    """Mark the stream finished, so followers stop, and let it expire.

    Inside :func:`together` the mark waits for the end of the block.
    """
    with _publishing:
        pending = _unsent.pop(task_id, [])
        _retry_at.pop(task_id, None)
    held = _holding()
    if held is not None:
        held.ends.append((task_id, pending))
        return
    try:
        pipe = _redis().pipeline(transaction=False)  # in order, which is all followers need
        _end_commands(pipe, task_id, pending)
        pipe.execute()
    except redis.RedisError:
        log.warning("Could not close the log stream of task %s", task_id, exc_info=True)


def _end_commands(pipe, task_id: str, pending: list[tuple[str, bytes]]) -> None:
    key = log_stream_key(task_id)
    for name, chunk in pending:
        pipe.xadd(key, {"s": name, "d": chunk}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.xadd(key, {"s": "end", "d": b""}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_SECONDS)


# Adds the end mark unless the stream already ends with one, in one step, so
# two closers (the machine, the reaper) never leave two marks.
_CLOSE_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] and last[1][2][2] == 'end' then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 's', 'end', 'd', '')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def close_log(task_id: str) -> None:
    """End the stream of a task whose machine will never write to it again.

    For tasks that ended without a machine to close their log: one lost
    with its machine, one ended while still queued. Followers stop; a
    stream that already ended is left as it is.
    """
    try:
        _redis().eval(_CLOSE_SCRIPT, 1, log_stream_key(task_id), STREAM_MAXLEN, STREAM_TTL_SECONDS)
    except redis.RedisError:
        log.warning("Could not close the log stream of task %s", task_id, exc_info=True)


def task_changed(
    task_id: str,
    group_id: int,
    owner_id: int,
    status: str,
    left_queue: bool,
    project_id: int | None = None,
) -> None:
    """Tell viewers a task changed status (called after the change committed).

    Pages listing many tasks (the table, the overview) listen on the project
    groups of the projects their user belongs to (staff: on ``tasks.all``);
    they treat the event as a prompt to re-read what changed through the
    access layer, never as data to show. So only the task's own group hears
    of every change; the groups of many tasks get wake-ups, at most one per
    ``WAKE_SECONDS`` each (see :func:`_send`). Groups nobody is in are
    skipped (see :func:`_listened`).
    """
    tasks_changed([(task_id, group_id, owner_id, project_id)], status, left_queue)


def tasks_changed(changed: list[tuple[str, int, int, int | None]], status: str, left_queue: bool) -> None:
    """:func:`task_changed` for many tasks that moved together, e.g. a batch submission.

    ``changed`` holds (task, machine group, owner, project) ids. Each task's
    own group hears of its task; a group that lists many tasks hears once,
    of the last of its tasks (its pages re-read what they show anyway).
    """
    try:
        groups, deliver = _change_messages(changed, status, left_queue)
        held = _holding()
        if held is not None:
            held.changes.append((groups, deliver))
        else:
            deliver(_listened(groups))
    except Exception:  # the live view is a convenience; the change itself is stored
        log.warning("Could not publish the change of %s tasks", len(changed), exc_info=True)


def _change_messages(changed, status: str, left_queue: bool):
    """The groups that may hear of a change, and what sends it to those of them anyone is in."""
    messages, last = [], {}
    for task_id, group_id, owner_id, project_id in changed:
        event = {"type": "task.changed", "task": task_id, "status": status, "group": group_id}
        messages.append((task_group(task_id), event))
        names = [machine_group_group(group_id), owner_group(owner_id), ALL_TASKS_GROUP]
        if project_id is not None:
            names.append(project_group(project_id))
        last |= dict.fromkeys(names, event)

    def deliver(listened: set[str]) -> None:
        try:
            found = [(name, event) for name, event in messages if name in listened]
            if left_queue:
                queues = {c[1] for c in changed}
                found += [
                    (machine_group_group(g), queue_order(g))
                    for g in queues
                    if machine_group_group(g) in listened
                ]
            wakes = [(name, event) for name, event in last.items() if name in listened]
            if found or wakes:
                _send(found, wakes=wakes)
        except Exception:  # the live view is a convenience; the change itself is stored
            log.warning("Could not publish the change of %s tasks", len(changed), exc_info=True)

    return {name for name, _ in messages} | set(last), deliver


def resources_sampled(task_id: str) -> None:
    """Tell the task's viewers a resource sample was written (they read it from the database)."""
    try:
        if _listened({task_group(task_id)}):
            _send([(task_group(task_id), {"type": "resources.sampled", "task": task_id})])
    except Exception:  # the sample itself is stored
        log.warning("Could not publish the resource use of task %s", task_id, exc_info=True)


def _listened(groups: set[str]) -> set[str]:
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
        if not _redis().exists(*keys.values()):
            return set()
        return _which_listened(keys)
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


def _which_listened(keys: dict[str, str]) -> set[str]:
    pipe = _redis().pipeline(transaction=False)
    for name in keys.values():
        pipe.exists(name)
    return {group for group, present in zip(keys, pipe.execute(), strict=True) if present}


# -- holding: what a machine sends for a tiny task, in one round trip ---------------

_held = threading.local()


class _Held:
    """Log ends and status changes waiting for the end of a :func:`together` block."""

    def __init__(self) -> None:
        self.ends: list[tuple[str, list[tuple[str, bytes]]]] = []
        self.changes: list[tuple[set[str], Callable[[set[str]], None]]] = []
        self.pops: list[tuple[str, list]] = []

    def send(self) -> None:
        if not self.ends and not self.changes and not self.pops:
            return
        checks = []
        try:
            pipe = _redis().pipeline(transaction=False)
            for task_id, pending in self.ends:
                _end_commands(pipe, task_id, pending)
            popped_from = len(pipe)
            for key, _slot in self.pops:
                pipe.rpop(key)
            for groups, deliver in self.changes:
                keys = _member_keys(groups)
                if keys:
                    pipe.exists(*keys.values())
                    checks.append((keys, deliver))
                else:
                    deliver(_listened(groups))  # nobody to ask about, or no way to ask: no round trip
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
                deliver(_which_listened(keys) if count else set())
            except redis.RedisError:
                deliver(set(keys))


def _holding() -> _Held | None:
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
    if _holding() is not None:
        yield
        return
    work = _held.work = _Held()
    try:
        yield
    finally:
        if _holding() is work:
            _held.work = None
            work.send()


def pop_later(key: str) -> Callable[[], bytes | None] | None:
    """Pop the right end of the list ``key`` with what the current :func:`together` block sends.

    Returns a function that gives what was popped once the block has ended
    (None if the list was empty or Redis could not be reached), or None when
    no block holds anything: then pop it yourself.
    """
    work = _holding()
    if work is None:
        return None
    slot: list = []
    work.pops.append((key, slot))
    return lambda: slot[0] if slot else None


def release() -> None:
    """Send what the current :func:`together` block holds, now, and hold nothing more in it."""
    work = _holding()
    if work is not None:
        _held.work = None
        work.send()


def queue_order(group_id: int) -> dict:
    """The group's queue order, sent once; each viewer finds its own position in it."""
    order = Task.objects.queued_in(group_id).order_by("queued_at", "id").values_list("id", flat=True)
    return {"type": "queue.moved", "order": list(order[:10_000])}


# A group that lists many tasks is woken at most this often: a machine that
# moves hundreds of tasks a second sends each of those groups about ten
# messages a second rather than a thousand, and every page reading them
# refreshes at most once a second anyway (tasks_app.live_pages).
WAKE_SECONDS = 0.1


def _send(messages: list[tuple[str, dict]], wakes: list[tuple[str, dict]] = ()) -> None:
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
