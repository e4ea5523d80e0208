"""WebSocket consumers: a task's status and queue position, and its log, live.

Both refuse before accepting when the caller may not see the task (the
access layer answers "not found" for someone else's task, so the socket is
closed the same way as for an id that does not exist). Messages from the
client are not expected; anything a client sends closes the socket with a
reason instead of raising in the server.

``format=json`` (the CLI, the client) gets JSON frames; the default is HTML
fragments with ``hx-swap-oob`` ids, which htmx's WebSocket extension swaps
into the page by id.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404
from django.template.loader import render_to_string
from django.utils.html import escape

from tasks_app import access, live, storage
from tasks_app.lifecycle import TERMINAL, Status

CLOSE_NOT_FOUND = 4404
CLOSE_UNEXPECTED = 4400
# A late joiner first gets at most this many batches of what was printed.
BACKLOG_BATCHES = 200


@database_sync_to_async
def _visible_task(user, task_id: str):
    if not user or not user.is_authenticated:
        return None
    try:
        return access.task_for(user, task_id)
    except Http404:
        return None


class _TaskSocket(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.task_id = self.scope["url_route"]["kwargs"]["task_id"]
        self.params = {k: v[-1] for k, v in parse_qs(self.scope["query_string"].decode()).items()}
        self.json = self.params.get("format") == "json"
        self.task = await _visible_task(self.scope.get("user"), self.task_id)
        if self.task is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()
        await self.started()

    async def started(self) -> None:
        raise NotImplementedError

    async def receive(self, text_data=None, bytes_data=None) -> None:
        # Viewers only listen; anything else is a misbehaving client.
        await self.close(code=CLOSE_UNEXPECTED, reason="This socket only sends; do not write to it.")


class TaskEventsConsumer(_TaskSocket):
    """Status changes and the queue position of one task."""

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
        if event["task"] == self.task_id:
            await self.send_state()

    async def queue_moved(self, event: dict) -> None:
        order = event["order"]
        if self.task_id in order:
            position = order.index(self.task_id)
            if self.json:
                await self.send(json.dumps({"type": "position", "position_in_queue": position}))
            else:
                await self.send_state(position)

    async def send_state(self, position: int | None = None) -> None:
        task, position = await self._reload(position)
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
            html = await database_sync_to_async(_render_header)(task, position)
            await self.send(
                '<section id="task-header" class="card task-header" aria-live="polite" hx-swap-oob="true">'
                f"{html}</section>"
            )

    @database_sync_to_async
    def _reload(self, position: int | None):
        task = access.task_for(self.task.owner, self.task_id)
        return task, task.position_in_queue() if position is None else position


def _render_header(task, position: int | None) -> str:
    from tasks_app.views.tasks import header_context

    return render_to_string("tasks/task_detail.html#header", header_context(task, position=position))


class TaskLogConsumer(_TaskSocket):
    """The task's stdout and stderr: what was printed so far, then every new line.

    Frames carry the stream entry id; a client that reconnects with
    ``?after=<id>`` resumes right after the last batch it saw.
    """

    async def started(self) -> None:
        self.redis = aioredis.from_url(settings.REDIS_URL)
        self.follower = asyncio.create_task(self.follow())

    async def disconnect(self, code) -> None:
        follower = getattr(self, "follower", None)
        if follower:
            follower.cancel()
        if getattr(self, "redis", None):
            await self.redis.aclose()

    async def follow(self) -> None:
        key = live.log_stream_key(self.task_id)
        after = self.params.get("after")
        if after is None:
            backlog = await self.redis.xrevrange(key, count=BACKLOG_BATCHES)
            if not backlog and Status(self.task.status) in TERMINAL:
                await self.send_stored_tail()
                return
            if not self.json:
                # The page's log view is replaced by the backlog on every
                # (re)connect, so a reconnect neither repeats nor skips lines.
                await self.send('<div id="log-lines" hx-swap-oob="innerHTML"></div>')
            for entry_id, fields in reversed(backlog):
                if not await self.deliver(entry_id, fields):
                    return
            after = backlog[0][0].decode() if backlog else "0-0"
        while True:
            answer = await self.redis.xread({key: after}, block=15_000, count=500)
            for _key, entries in answer:
                for entry_id, fields in entries:
                    after = entry_id.decode()
                    if not await self.deliver(entry_id, fields):
                        return

    async def deliver(self, entry_id: bytes, fields: dict) -> bool:
        """Send one batch; False once the stream has ended."""
        stream = fields[b"s"].decode()
        if stream == "end":
            await self.send(
                json.dumps({"type": "end"})
                if self.json
                else '<span id="log-end" hx-swap-oob="true">Ended.</span>'
            )
            await self.close()
            return False
        text = fields[b"d"].decode("utf-8", "replace")
        if self.json:
            await self.send(
                json.dumps({"type": "lines", "id": entry_id.decode(), "stream": stream, "text": text})
            )
        else:
            await self.send(
                f'<div id="log-lines" hx-swap-oob="beforeend"><pre class="log-{stream}" '
                f'data-id="{entry_id.decode()}">{escape(text)}</pre></div>'
            )
        return True

    async def send_stored_tail(self) -> None:
        """An ended task whose live stream expired: its stored log, then the end."""
        for stream in ("stdout", "stderr"):
            text = await database_sync_to_async(_stored_tail)(self.task_id, stream)
            if text:
                await self.deliver(b"0-0", {b"s": stream.encode(), b"d": text.encode()})
        await self.deliver(b"0-0", {b"s": b"end", b"d": b""})


def _stored_tail(task_id: str, stream: str, max_bytes: int = 256 * 1024) -> str:
    name = storage.log_name(task_id, stream)
    if not storage.exists(name):
        return ""
    with storage.open_file(name) as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        return f.read().decode("utf-8", "replace")
