"""One reader of a task's live log per server process, shared by everyone watching it.

A hundred people following one busy task would otherwise make a hundred
blocking XREADs of the same Redis stream for every batch, and parse the
same kilobytes a hundred times. A hub reads the stream once and hands each
batch of entries to every subscriber.

A subscriber joins at the entry id it has shown so far; the hub tells it
where the hub itself stands. Between the two the subscriber reads on its
own (XRANGE), then takes the hub's batches, dropping entries it already
has. Stream ids are ordered, so the seam is exact: no entry twice, none
lost. A subscriber that falls far behind (a slow client) is told so and
catches up on its own the same way, rather than letting batches pile up.
"""

from __future__ import annotations

import asyncio
import logging

import redis
import redis.asyncio as aioredis
from django.conf import settings

log = logging.getLogger(__name__)

# Entries are (id, fields) as redis-py returns them from a stream.
Entries = list[tuple[bytes, dict]]

# At most one batch this often; entries meanwhile are combined.
FRAME_SECONDS = 0.1
# Stream entries read (and combined into frames) at a time.
READ_COUNT = 2000
BLOCK_MS = 15_000
# Batches a subscriber may have waiting before it must catch up by itself.
MAX_WAITING = 50
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0


def id_key(entry_id: str | bytes) -> tuple[int, int]:
    """A stream id as something to compare: ``"1700000000000-3"`` -> (1700000000000, 3)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One viewer's place at a hub: the batches read since it joined, in order."""

    def __init__(self, hub: LogHub, since: str):
        self.hub = hub
        self.since = since  # the hub had read up to this entry when the subscriber joined
        self.batches: asyncio.Queue[Entries] = asyncio.Queue()
        self.lagging = False

    def offer(self, entries: Entries) -> None:
        if self.lagging:
            return
        if self.batches.qsize() >= MAX_WAITING:
            self.fall_behind()
            return
        self.batches.put_nowait(entries)

    def fall_behind(self) -> None:
        """Stop taking batches: the subscriber reads from the stream on its own, then joins again."""
        self.lagging = True
        self.batches.put_nowait([])  # wakes it if it waits

    async def next(self, timeout: float) -> Entries | None:
        """Every batch waiting, as one list; None when none came within ``timeout`` seconds."""
        try:
            entries = await asyncio.wait_for(self.batches.get(), timeout)
        except TimeoutError:
            return None
        while not self.batches.empty():
            entries = entries + self.batches.get_nowait()
        return entries

    def close(self) -> None:
        self.hub.leave(self)


class LogHub:
    """The reader of one stream in this process, alive while anyone subscribes."""

    # By event loop too: a reader belongs to the loop it runs in (one per server
    # process; tests run several one after another).
    hubs: dict[tuple[int, str], LogHub] = {}

    def __init__(self, key: str, start: str):
        self.key = key
        self.place = (id(asyncio.get_running_loop()), key)
        self.last_id = start
        self.subscribers: set[Subscription] = set()
        self.redis = aioredis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.reader = asyncio.create_task(self.read())

    @classmethod
    def subscribe(cls, key: str, after: str) -> Subscription:
        """Join the hub of ``key`` (made on first use, reading from ``after``)."""
        place = (id(asyncio.get_running_loop()), key)
        hub = cls.hubs.get(place)
        if hub is None:
            hub = cls.hubs[place] = cls(key, after)
        subscription = Subscription(hub, hub.last_id)
        hub.subscribers.add(subscription)
        return subscription

    def leave(self, subscription: Subscription) -> None:
        self.subscribers.discard(subscription)
        if not self.subscribers and self.hubs.get(self.place) is self:
            del self.hubs[self.place]
            self.reader.cancel()

    async def read(self) -> None:
        pause = RETRY_MIN_SECONDS
        try:
            while True:
                try:
                    answer = await self.redis.xread(
                        {self.key: self.last_id}, block=BLOCK_MS, count=READ_COUNT
                    )
                except (redis.RedisError, OSError):
                    # Redis is down or restarting: the subscribers keep waiting, we try again.
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, RETRY_MAX_SECONDS)
                    continue
                pause = RETRY_MIN_SECONDS
                entries = [entry for _key, found in answer for entry in found]
                if not entries:
                    continue
                self.last_id = entries[-1][0].decode()
                for subscription in list(self.subscribers):
                    subscription.offer(entries)
                # Lines that arrive meanwhile travel in the next batch: at most
                # a few frames a second, however fast the simulator prints.
                await asyncio.sleep(FRAME_SECONDS)
        except asyncio.CancelledError:
            pass
        except Exception:  # a viewer must never be left waiting on a dead reader
            log.exception("The live log reader of %s stopped", self.key)
            if self.hubs.get(self.place) is self:
                del self.hubs[self.place]
            for subscription in list(self.subscribers):
                subscription.fall_behind()  # they read on their own, then join a new reader
        finally:
            await self.redis.aclose()
