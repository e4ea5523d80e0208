"""Asking the machine that runs a task, and reading a task's logs wherever they are.

The questions go to the machine's worker as a Celery remote-control
command, answered by :mod:`tasks_app.executor.inspect` on the machine;
once the task has left its machine, its stored logs answer instead. A
machine on another host reaches no broker: its question waits in a Redis
list of that machine's, which the machine reads through the machine
interface while it runs a task, and its answer comes back in a Redis key
of its own (:func:`ask_elsewhere`).
"""

from __future__ import annotations

import functools
import json
import secrets

import redis
from django.conf import settings
from django.core.files.storage import default_storage

from console.celery import app
from tasks_app import storage
from tasks_app.errors import Refused
from tasks_app.executor import inspect
from tasks_app.models import Task
from tasks_app.statuses import ON_MACHINE, TERMINAL, Status

# Long enough for a machine busy computing to answer, short enough for a CLI.
MACHINE_ANSWER_SECONDS = 4.0


class NotRunning(Refused):
    """The task is not on a machine, so there is nothing to look at there."""

    def __init__(self, task: Task):
        status = Status(task.status)
        if status in TERMINAL:
            hint = f"Its files are in its outputs: simdeck tasks download {task.id}"
        else:
            hint = "Try again once it is In Progress."
        super().__init__(
            f"Task {task.id} is not running (it is {status.label}), so there is nothing to look at "
            f"on a machine. {hint}",
            code="not_running",
            status=409,
        )


def ask_machine(task: Task, op: str, **params) -> dict:
    """Ask the worker running ``task`` a question (see :mod:`tasks_app.executor.inspect`)."""
    machine = task.machine
    if Status(task.status) not in ON_MACHINE or machine is None or not machine.hostname:
        raise NotRunning(task)
    if machine.token_digest:
        answer = ask_elsewhere(machine.pk, {"task_id": task.id, "op": op, "params": params})
    else:
        node = f"{machine.name}@{machine.hostname}"
        replies = app.control.broadcast(
            inspect.COMMAND,
            arguments={"task_id": task.id, "op": op, "params": params},
            destination=[node],
            reply=True,
            timeout=MACHINE_ANSWER_SECONDS,
            limit=1,
        )
        answer = next((r[node] for r in replies or [] if node in r), None)
    if answer is None:
        raise Refused(
            f"Machine {machine.name} did not answer within {MACHINE_ANSWER_SECONDS:.0f} s; "
            "it may be overloaded or gone. Try again in a moment.",
            code="machine_unavailable",
            status=503,
        )
    if answer.get("ok"):
        return answer
    if answer.get("error") == "not_here":
        task.refresh_from_db()  # it moved on while we asked
        raise NotRunning(task)
    if answer.get("error") == "invalid":
        raise Refused(answer.get("message", "Invalid request."), field=answer.get("field"))
    raise Refused(
        f"Machine {machine.name} could not answer: {answer.get('message') or answer.get('error')}",
        code="machine_error",
        status=502,
    )


def questions_key(machine_id: int) -> str:
    """The Redis list where questions for a machine on another host wait for it."""
    return f"{settings.SIMDECK_QUEUE_PREFIX}:machine:{machine_id}:questions"


def answer_key(machine_id: int, question_id: str) -> str:
    return f"{settings.SIMDECK_QUEUE_PREFIX}:machine:{machine_id}:answer:{question_id}"


@functools.cache
def _redis() -> redis.Redis:
    # Reads wait as long as a machine may take to answer.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=MACHINE_ANSWER_SECONDS + 5)


def ask_elsewhere(machine_id: int, question: dict) -> dict | None:
    """Ask a machine on another host; its answer, or None if it gave none in time."""
    question_id = secrets.token_hex(16)
    key = questions_key(machine_id)
    try:
        client = _redis()
        with client.pipeline(transaction=False) as pipe:
            # Unread questions go with the machine: a list of a machine gone is gone soon too.
            pipe.rpush(key, json.dumps({**question, "id": question_id}))
            pipe.expire(key, 60)
            pipe.execute()
        got = client.blpop([answer_key(machine_id, question_id)], timeout=MACHINE_ANSWER_SECONDS)
    except redis.RedisError:
        return None
    return json.loads(got[1]) if got else None


def answer_from_elsewhere(machine_id: int, question_id: str, answer: dict) -> None:
    """Hand a machine's answer to whoever waits for it (for a little while: it may have given up)."""
    key = answer_key(machine_id, question_id)
    with _redis().pipeline(transaction=False) as pipe:
        pipe.rpush(key, json.dumps(answer))
        pipe.expire(key, 30)
        pipe.execute()


def read_logs(
    task: Task, offsets: dict[str, int | None], *, tail_lines: int = 0, max_bytes: int = 64 * 1024
) -> dict:
    """New text of the task's logs since ``offsets`` (stream -> byte offset, None for a tail).

    While the task is on a machine the machine answers; afterwards the
    stored logs do. Offsets mean the same bytes in both, so a reader that
    follows a task across its end loses nothing and sees nothing twice.
    """
    streams = [s for s in ("stdout", "stderr") if s in offsets]
    if Status(task.status) in ON_MACHINE:
        try:
            answer = ask_machine(
                task,
                "read",
                files=[{"path": f"{s}.txt", "offset": offsets[s]} for s in streams],
                lines=tail_lines,
                max_bytes=max_bytes,
            )
        except NotRunning:
            pass  # it just ended: the stored logs have the same bytes
        else:
            chunks = {}
            for stream, item in zip(streams, answer["files"], strict=True):
                chunks[stream] = _empty_chunk(offsets[stream]) if item.get("missing") else item
            return {"status": task.status, "live": True, **chunks}
    chunks = {}
    for stream in streams:
        name = storage.log_name(task.id, stream, task.attempt)
        if not storage.exists(name):
            chunks[stream] = _empty_chunk(offsets[stream])
            continue
        size = default_storage.size(name)
        with storage.open_file(name) as f:
            chunks[stream] = inspect.read_text(f, size, offsets[stream], tail_lines, max_bytes)
    return {"status": task.status, "live": False, **chunks}


def _empty_chunk(offset: int | None) -> dict:
    return {"offset": offset or 0, "next_offset": offset or 0, "size": 0, "text": ""}
