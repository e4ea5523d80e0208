"""Log streams: a task's output as a Redis stream, begun, appended to and ended by its machine.

A stream keeps order, gives every batch an id a viewer can resume from, and
lets a viewer who joins late read what was already printed before following
new lines, so nothing is lost or shown twice, across reconnects too. While
Redis is away, lines wait and are sent late rather than never; the stored
log file is the durable record.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings

from tasks_app.live.publishing import holding, redis_client

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
            pipe = redis_client().pipeline(transaction=False)
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
            pipe = redis_client().pipeline(transaction=False)
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
    held = holding()
    if held is not None:
        held.ends.append(lambda pipe: _end_commands(pipe, task_id, pending))
        return
    try:
        pipe = redis_client().pipeline(transaction=False)  # in order, which is all followers need
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
        redis_client().eval(_CLOSE_SCRIPT, 1, log_stream_key(task_id), STREAM_MAXLEN, STREAM_TTL_SECONDS)
    except redis.RedisError:
        log.warning("Could not close the log stream of task %s", task_id, exc_info=True)
