"""Tokens on the broker: "a task waits in this group's queue", put and taken.

A token carries no task id: the machine that receives one claims the head
of its group's queue in the database, so the order is the database's and a
token lost or duplicated costs nothing but a look. Everything that puts
tokens on a group's queue, takes them off it or counts them is here: the
services announce new tasks, a machine takes the next token itself after a
task (rather than going back to Celery for it), and the scheduler
re-announces tasks whose token went missing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import redis
from celery.utils import uuid
from django.conf import settings
from kombu.serialization import dumps

from console.celery import app
from tasks_app import live

log = logging.getLogger(__name__)

# The Celery task a token runs on a machine (tasks_app.tasks.run_next).
RUN_NEXT = "simdeck.run_next"


def publish_tokens(group, count: int) -> None:
    """Put ``count`` tokens on ``group``'s queue.

    Many go out in one Redis pipeline (kombu's publish batch), not a round
    trip each. The messages are those ``apply_async()`` sends, built and
    published a level below it: for a sweep of a thousand tasks, its
    routing, its settings lookups and the queue's declaration on every
    message took half the time the server spent creating the tasks. The
    messages differ only in their id, so one is built and serialized, and
    each copy gets an id of its own.
    """
    queue = app.amqp.queues[group.queue_name]
    headers, properties, body, _sent = app.amqp.as_task_v2(uuid(), RUN_NEXT, args=(group.pk,))
    content_type, content_encoding, payload = dumps(body, serializer=app.conf.task_serializer)
    with app.producer_or_acquire() as producer, producer.batch():
        producer.maybe_declare(queue)
        for _ in range(count):
            token_id = uuid()
            producer.publish(
                payload,
                exchange="",  # the default exchange: straight to the queue of that name
                routing_key=queue.name,
                headers={**headers, "id": token_id, "root_id": token_id},
                content_type=content_type,
                content_encoding=content_encoding,
                **{**properties, "correlation_id": token_id},
            )


def take_token(group) -> bool:
    """Take one token off the group's queue; False when none waits.

    The message is taken as the worker would take it, so each token still
    stands for one claim. It is gone once taken: should the machine die
    before its claim commits, the scheduler re-announces the task
    (:func:`tokens_waiting`), as it does for any token that went missing.
    """
    try:
        client = _broker_redis()
        if client is not None:
            # kombu keeps a queue's messages of the default priority in a
            # list named after it and consumes from its right end.
            return client.rpop(group.queue_name) is not None
        with app.pool.acquire(block=True) as conn:
            return conn.default_channel.basic_get(group.queue_name, no_ack=True) is not None
    except Exception:  # the broker is away: the worker takes the next token once it is back
        log.warning("Could not take a token of group %s", group.name, exc_info=True)
        return False


def take_token_later(group) -> Callable[[], bool] | None:
    """Take a token with what the current ``live.together()`` block sends, in the same round trip.

    Returns a function that answers, once the block has ended, whether a
    token was taken; None when that cannot be done (the broker is not the
    live log's Redis, or no block is open): then call :func:`take_token`.
    """
    if not _broker_is_live_redis():
        return None
    popped = live.pop_later(group.queue_name)
    if popped is None:
        return None
    return lambda: popped() is not None


def purge_tokens(group) -> None:
    """Drop every token waiting on ``group``'s queue (its machines are gone)."""
    with app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_purge(group.queue_name)
        except Exception:  # the queue may never have existed
            log.debug("Nothing to purge for %s", group.queue_name)


@contextlib.contextmanager
def tokens_waiting() -> Iterator[Callable[[object], int]]:
    """A function answering how many tokens wait in a group's queue, over one broker connection."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel

        def waiting(group) -> int:
            nonlocal channel
            try:
                return channel.queue_declare(queue=group.queue_name, passive=True).message_count
            except Exception:  # the queue does not exist (yet): nothing waits in it
                channel = conn.channel()
                return 0

        yield waiting


@functools.cache
def _broker_redis() -> redis.Redis | None:
    """A client of the broker when it is Redis, kept for the process; None for other brokers.

    Taking a token through kombu builds a channel and a client each time,
    which cost more than the pop itself.
    """
    url = app.conf.broker_url
    if urlsplit(url).scheme not in ("redis", "rediss"):
        return None
    # Timeouts as for the live log's client: a broker that stops answering must not hang the machine.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


@functools.cache
def _broker_is_live_redis() -> bool:
    """Whether the broker is the Redis the live log uses, so tokens can travel with its messages."""
    return app.conf.broker_url == settings.REDIS_URL
