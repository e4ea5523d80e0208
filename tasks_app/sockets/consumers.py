"""WebSocket consumers: a task's status and queue position, and its log, live.

Both refuse before accepting when the caller may not see the task (the
access layer answers "not found" for another team's task, so the socket is
closed the same way as for an id that does not exist). While open, each
socket looks again every ``SIMDECK_WS_RECHECK_SECONDS``: a revoked API key,
a deactivated user or a membership taken away closes it (code 4403). Messages from the
client are not expected; anything a client sends closes the socket with a
reason instead of raising in the server.

``format=json`` (the CLI, the client) gets JSON frames; the default is HTML
fragments with ``hx-swap-oob`` ids, which htmx's WebSocket extension swaps
into the page by id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
from urllib.parse import parse_qs

import redis
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from django.http import Http404
from django.template.loader import render_to_string

from tasks_app import access, live, storage
from tasks_app.lifecycle import TERMINAL, Status
from tasks_app.live.messages import QueueMoved, TaskChanged, TaskProgress
from tasks_app.models import APIKey, ResourceSample, Task
from tasks_app.sockets import hub as log_hub
from tasks_app.views.resources import resources_context
from tasks_app.views.tasks import header_context, timeline_context

log = logging.getLogger(__name__)

CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_UNEXPECTED = 4400
CLOSE_UNAVAILABLE = 1011
# A late joiner first gets at most this many batches of what was printed.
BACKLOG_BATCHES = 200
# At most one log frame per viewer this often; entries meanwhile are combined.
FRAME_SECONDS = log_hub.FRAME_SECONDS
# Stream entries read (and combined into frames) at a time.
READ_COUNT = log_hub.READ_COUNT
# A viewer that hears nothing this long asks whether its task ended unnoticed.
QUIET_SECONDS = log_hub.BLOCK_MS / 1000
# A frame takes no more entries once its text reaches this many characters.
# Entries are at most live.ENTRY_MAX_BYTES, so escaped for JSON or HTML a frame
# stays below daphne's 1 MiB message limit: larger messages are silently dropped.
FRAME_MAX_CHARS = 64 * 1024
# The page keeps at most this many log lines; older ones are removed from it.
PAGE_LINES = 5000
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


@database_sync_to_async
def _visible_task(user, task_id: str):
    if not user or not user.is_authenticated:
        return None
    try:
        return access.task_for(user, task_id)
    except Http404:
        return None


class LiveSocket(AsyncWebsocketConsumer):
    """A consumer that closes quietly, rather than failing, while Redis is away.

    The channel layer lives in Redis; when Redis goes down, joining a group
    or waiting for a message raises. The socket is then closed with
    ``CLOSE_UNAVAILABLE``; the page and the client reconnect by themselves
    with backoff, and resume once Redis is back.
    """

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except (redis.RedisError, OSError) as exc:
            log.info("Closing a live socket while Redis is unreachable: %s", exc)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})


@database_sync_to_async
def _still_allowed(user, key_id: int | None, task_id: str) -> bool:
    """Whether the socket's viewer may still see the task, with the key they came with."""
    if key_id is not None and not APIKey.objects.filter(pk=key_id, revoked_at__isnull=True).exists():
        return False
    if not type(user).objects.filter(pk=user.pk, is_active=True).exists():
        return False
    return access.visible_tasks(user).filter(pk=task_id).exists()


class _TaskSocket(LiveSocket):
    async def connect(self) -> None:
        self.task_id = self.scope["url_route"]["kwargs"]["task_id"]
        self.params = {k: v[-1] for k, v in parse_qs(self.scope["query_string"].decode()).items()}
        self.json = self.params.get("format") == "json"
        self.task = await _visible_task(self.scope.get("user"), self.task_id)
        if self.task is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()
        self.watchdog = asyncio.create_task(self.watch_access())
        await self.started()

    async def watch_access(self) -> None:
        """Close the socket once its viewer may no longer see the task."""
        user, key_id = self.scope["user"], self.scope.get("api_key_id")
        while True:
            await asyncio.sleep(settings.SIMDECK_WS_RECHECK_SECONDS)
            try:
                allowed = await _still_allowed(user, key_id, self.task_id)
            except DatabaseError:
                # Unable to tell (the database restarts): a viewer is never
                # kept on unchecked. Clients reconnect and are checked afresh.
                log.warning("Could not re-check a viewer of task %s; closing", self.task_id, exc_info=True)
                await self.close(code=CLOSE_UNAVAILABLE)
                return
            if not allowed:
                await self.close(code=CLOSE_FORBIDDEN)
                return

    async def websocket_disconnect(self, message) -> None:
        watchdog = getattr(self, "watchdog", None)
        if watchdog:
            watchdog.cancel()
        await super().websocket_disconnect(message)

    async def started(self) -> None:
        raise NotImplementedError

    async def receive(self, text_data=None, bytes_data=None) -> None:
        # Viewers only listen; anything else is a misbehaving client.
        await self.close(code=CLOSE_UNEXPECTED, reason="This socket only sends; do not write to it.")


class TaskEventsConsumer(_TaskSocket):
    """Status changes and the queue position of one task."""

    shown_status: str | None = None  # the status whose timeline the page holds

    async def started(self) -> None:
        self.groups_joined = [
            live.task_group(self.task_id),
            live.machine_group_group(self.task.machine_group_id),
        ]
        for name in self.groups_joined:
            await self.channel_layer.group_add(name, self.channel_name)
        await self.send_state()

    async def disconnect(self, code) -> None:
        for name in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(name, self.channel_name)

    async def task_changed(self, event: dict) -> None:
        if TaskChanged.of(event).task == self.task_id:
            await self.send_state()

    async def queue_moved(self, event: dict) -> None:
        order = QueueMoved.of(event).order
        if self.task_id in order:
            position = order.index(self.task_id)
            if self.json:
                await self.send(json.dumps({"type": "position", "position_in_queue": position}))
            else:
                await self.send_state(position)

    async def task_progress(self, event: dict) -> None:
        """The machine recorded how far the simulation got: the bar and the estimate, fresh."""
        progress = TaskProgress.of(event)
        if progress.task != self.task_id:
            return
        if self.json:
            await self.send(
                json.dumps({"type": "progress", "progress": progress.progress, "eta": progress.eta})
            )
            return
        try:
            task, _ = await self._reload(0)
        except Http404:  # no longer the viewer's to see
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.send(await database_sync_to_async(_render_progress)(task))

    async def resources_sampled(self, event: dict) -> None:
        """The machine wrote a resource sample: the figures and charts, fresh."""
        if self.json:
            latest = await database_sync_to_async(_latest_sample)(self.task_id)
            await self.send(json.dumps({"type": "resources", **latest}))
        else:
            await self.send(await database_sync_to_async(_render_resources)(self.task_id))

    async def send_state(self, position: int | None = None) -> None:
        try:
            task, position = await self._reload(position)
        except Http404:  # no longer the viewer's to see
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if self.json:
            await self.send(
                json.dumps(
                    {
                        "type": "status",
                        "status": task.status,
                        "status_label": task.get_status_display(),
                        "what_happened": task.guidance.what_happened,
                        "position_in_queue": position,
                    }
                )
            )
        else:
            html = await database_sync_to_async(_render_header)(task, position, self.scope["user"])
            if task.status != self.shown_status:
                # Queue moves only touch the header; a new status also adds a timeline row.
                html += await database_sync_to_async(_render_timeline)(task)
                self.shown_status = task.status
            await self.send(html)

    @database_sync_to_async
    def _reload(self, position: int | None):
        # As the viewer, so the header shows only the buttons their role allows.
        task = access.task_for(self.scope["user"], self.task_id)
        return task, task.position_in_queue() if position is None else position


def _render_header(task, position: int | None, user) -> str:
    context = header_context(task, position=position, user=user) | {"oob": True}
    return render_to_string("tasks/task_detail.html#header", context)


def _render_progress(task) -> str:
    return render_to_string("tasks/task_detail.html#progress", {"task": task, "oob": True})


def _render_timeline(task) -> str:
    context = timeline_context(task) | {"oob": True}
    return render_to_string("tasks/task_detail.html#timeline", context) + render_to_string(
        "tasks/task_detail.html#path", context
    )


def _render_resources(task_id: str) -> str:
    task = Task.objects.get(pk=task_id)  # the viewer's access was checked on connect
    return render_to_string("tasks/task_resources.html#resources", resources_context(task) | {"oob": True})


def _latest_sample(task_id: str) -> dict:
    sample = ResourceSample.objects.filter(task_id=task_id).order_by("-at", "-id").first()
    if sample is None:
        return {}
    return {
        "at": sample.at.isoformat(),
        "cpu_percent": sample.cpu_percent,
        "memory_bytes": sample.memory_bytes,
        "disk_bytes": sample.disk_bytes,
    }


class TaskLogConsumer(_TaskSocket):
    """The task's stdout and stderr: what was printed so far, then every new line.

    Lines are sent in frames, at most one per ``FRAME_SECONDS``: whatever the
    simulator printed meanwhile waits in the stream and goes out together,
    so a simulator printing thousands of lines a second costs a viewer ten
    messages a second. Each frame carries the id of the last stream entry in
    it; a client that reconnects with ``?after=<id>`` resumes right after it.

    JSON frames (``?format=json``): ``{"type": "begin", "id"}`` where the
    task's output starts (a follower that saw it has every line), ``{"type":
    "lines", "id", "parts": [[stream, text], ...]}`` and ``{"type": "end",
    "id"}``. HTML frames append to ``#log-lines`` and keep at most
    ``PAGE_LINES`` lines there, removing the oldest batches by id.

    When Redis goes away the follower waits and retries from the last entry
    it sent, so the log resumes where it stopped once Redis is back.
    """

    # The log is read from its stream, not from the channel layer: no layer,
    # so this socket keeps working while only the layer's Redis calls fail.
    channel_layer_alias = "log-sockets-use-no-channel-layer"

    async def started(self) -> None:
        self.redis = aioredis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.batches: collections.deque[tuple[int, int]] = collections.deque()  # (number, lines)
        self.lines_shown = 0
        self.batch_number = 0
        self.hidden = False
        self.cut = False  # lines were left out before the first batch shown
        self.follower = asyncio.create_task(self.follow())

    async def disconnect(self, code) -> None:
        follower = getattr(self, "follower", None)
        if follower:
            follower.cancel()
        if getattr(self, "subscription", None):
            self.subscription.close()
        if getattr(self, "redis", None):
            await self.redis.aclose()

    async def follow(self) -> None:
        key = live.log_stream_key(self.task_id)
        after = self.params.get("after")
        if after is not None and not STREAM_ID.fullmatch(after):
            await self.close(
                code=CLOSE_UNEXPECTED, reason="after= takes a log entry id such as 1700000000000-0."
            )
            return
        pause = RETRY_MIN_SECONDS
        while True:
            try:
                if after is None:
                    after = await self.send_backlog(key)
                elif self.subscription is None or self.subscription.lagging or not self.caught_up:
                    after = await self.catch_up(key, after)
                else:
                    after = await self.take_batches(after)
                if after is None:
                    return
            except (redis.RedisError, OSError):
                # Redis is down or restarting: keep the socket, try again from where we were.
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_SECONDS)
                continue
            pause = RETRY_MIN_SECONDS

    subscription: log_hub.Subscription | None = None
    caught_up = False

    async def catch_up(self, key: str, after: str) -> str | None:
        """Read on our own up to where this process's reader of the stream stands, then join it.

        Returns the last entry sent (None once the log ended).
        """
        self.caught_up = False
        if self.subscription is None or self.subscription.lagging:
            if self.subscription is not None:
                self.subscription.close()
            self.subscription = log_hub.LogHub.subscribe(key, after)
        since = log_hub.id_key(self.subscription.since)
        while log_hub.id_key(after) < since:
            entries = await self.redis.xrange(
                key, min=f"({after}", max=self.subscription.since, count=READ_COUNT
            )
            if not entries:
                break  # trimmed meanwhile: the batches continue from the hub
            after = entries[-1][0].decode()
            if not await self.deliver(entries):
                return None
        self.caught_up = True
        return after

    async def take_batches(self, after: str) -> str | None:
        """The reader's next batches, without what we sent already; returns the last entry sent."""
        entries = await self.subscription.next(QUIET_SECONDS)
        if entries is None:
            return None if await self.ended_quietly() else after
        seen = log_hub.id_key(after)
        entries = [entry for entry in entries if log_hub.id_key(entry[0]) > seen]
        if not entries:
            return after
        if not await self.deliver(entries):
            return None
        return entries[-1][0].decode()

    async def ended_quietly(self) -> bool:
        """After a quiet spell: end the log of a task that ended without its end mark.

        The mark can be missing when Redis lost the stream (a restart) or was
        down when the task ended; the status in the database is the truth.
        """
        try:
            status = await database_sync_to_async(_current_status)(self.task_id)
        except DatabaseError:  # restarting: the next quiet spell asks again
            return False
        if status is None or Status(status) not in TERMINAL:
            return False
        return not await self.deliver([(b"0-0", {b"s": b"end", b"d": b""})])

    async def send_backlog(self, key: str) -> str | None:
        """What was printed before this viewer came; returns where to follow from (None: ended)."""
        backlog = await self.redis.xrevrange(key, count=BACKLOG_BATCHES)
        if not backlog and Status(self.task.status) in TERMINAL:
            await self.send_stored_tail()
            return None
        if not self.json:
            # The page's log view is replaced by the backlog on every
            # (re)connect, so a reconnect neither repeats nor skips lines.
            await self.send(render_to_string("tasks/live_log.html#restart"))
        # A full backlog that does not reach the start mark leaves earlier lines out.
        self.cut = len(backlog) == BACKLOG_BATCHES and backlog[-1][1].get(b"s") != b"begin"
        if backlog and not await self.deliver(list(reversed(backlog))):
            return None
        return backlog[0][0].decode() if backlog else "0-0"

    async def deliver(self, entries: list[tuple[bytes, dict]]) -> bool:
        """Send ``entries`` as one frame (plus the begin and end marks); False once the log ended."""
        parts: list[list[str]] = []
        last_id = ""
        size = 0
        for entry_id, fields in entries:
            stream = fields[b"s"].decode()
            if stream == "end":
                await self.send_parts(parts, last_id)
                await self.send(
                    json.dumps({"type": "end", "id": entry_id.decode()})
                    if self.json
                    else render_to_string("tasks/live_log.html#ended")
                )
                await self.close()
                return False
            last_id = entry_id.decode()
            if stream == "begin":
                await self.send_parts(parts, last_id)
                parts = []
                if self.json:
                    await self.send(json.dumps({"type": "begin", "id": last_id}))
                continue
            text = fields[b"d"].decode("utf-8", "replace")
            if parts and parts[-1][0] == stream:
                parts[-1][1] += text
            else:
                parts.append([stream, text])
            size += len(text)
            if size >= FRAME_MAX_CHARS:
                # Whole entries per frame keep every id exact for a resume.
                await self.send_parts(parts, last_id)
                parts, size = [], 0
        await self.send_parts(parts, last_id)
        return True

    async def send_parts(self, parts: list[list[str]], last_id: str) -> None:
        if not parts:
            return
        if self.json:
            await self.send(json.dumps({"type": "lines", "id": last_id, "parts": parts}))
        else:
            await self.send(self.html_batch(parts, last_id))

    def html_batch(self, parts: list[list[str]], last_id: str) -> str:
        """One batch for the page, and the removal of what falls off its top."""
        kept = _last_lines(parts, PAGE_LINES)
        self.cut = self.cut or kept != parts
        parts = kept
        count = sum(text.count("\n") or 1 for _, text in parts)
        self.batch_number += 1
        self.batches.append((self.batch_number, count))
        self.lines_shown += count
        removed = []
        while self.lines_shown > PAGE_LINES and len(self.batches) > 1:
            number, lines = self.batches.popleft()
            self.lines_shown -= lines
            removed.append(number)
        hidden_note = bool(removed or self.cut) and not self.hidden
        self.hidden = self.hidden or hidden_note
        context = {
            "removed": removed,
            "hidden_note": hidden_note,
            "page_lines": f"{PAGE_LINES:,}",
            "task_id": self.task_id,
            "number": self.batch_number,
            "last_id": last_id,
            "parts": parts,
        }
        return render_to_string("tasks/live_log.html#batch", context)

    async def send_stored_tail(self) -> None:
        """An ended task whose live stream expired: its stored log, then the end."""
        entries = []
        for stream in ("stdout", "stderr"):
            text = await database_sync_to_async(_stored_tail)(self.task_id, stream)
            if text:
                entries += [
                    (b"0-0", {b"s": stream.encode(), b"d": d}) for d in live.entry_pieces(text.encode())
                ]
        entries.append((b"0-0", {b"s": b"end", b"d": b""}))
        await self.deliver(entries)


def _last_lines(parts: list[list[str]], limit: int) -> list[list[str]]:
    """The last ``limit`` lines of ``parts`` (one frame can hold more than the page keeps)."""
    kept: list[list[str]] = []
    left = limit
    for stream, text in reversed(parts):
        lines = text.splitlines(keepends=True)
        if len(lines) > left:
            lines = lines[len(lines) - left :]
        if lines:
            kept.append([stream, "".join(lines)])
        left -= len(lines)
        if left <= 0:
            break
    return kept[::-1]


def _current_status(task_id: str) -> str | None:
    return Task.objects.filter(pk=task_id).values_list("status", flat=True).first()


def _stored_tail(task_id: str, stream: str, max_bytes: int = 256 * 1024) -> str:
    attempt = Task.objects.filter(pk=task_id).values_list("attempt", flat=True).first() or 1
    name = storage.log_name(task_id, stream, attempt)
    if not storage.exists(name):
        return ""
    with storage.open_file(name) as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        return f.read().decode("utf-8", "replace")
