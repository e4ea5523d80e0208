"""Following a task live over the server's WebSockets.

The server pushes JSON frames (``?format=json``): on ``/ws/tasks/<id>/`` the
task's status and queue position whenever they change, on
``/ws/tasks/<id>/logs/`` its stdout and stderr in frames, each carrying the
id of the last log entry in it. A socket that drops is opened again with
backoff; the log resumes after the last id received, so no line is lost
or printed twice across a reconnect or a restart of the server.

When WebSockets cannot be used at all (a proxy that does not pass them, an
older server) opening the first socket raises :class:`Unavailable` and the
callers fall back to asking over HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from simdeck import api
from simdeck.errors import NotFound, ServerUnreachable

# The server closes with this code for a task the key may not see (or that does not exist).
CLOSE_NOT_FOUND = 4404
OPEN_TIMEOUT = 10.0
# A client leaving (the task ended, Ctrl+C) waits this long for the server's
# side of the closing handshake: a busy server must not hold up the exit.
CLOSE_TIMEOUT = 2.0
MAX_BACKOFF = 10.0


class Unavailable(Exception):
    """WebSockets do not reach this server; use HTTP instead."""


class Socket:
    """One JSON WebSocket to the server that reopens itself after it dropped.

    ``path`` is asked again for each (re)connect, so it can carry where to
    resume. ``lost(exc)`` and ``back()`` are told when contact is lost and
    regained; after ``max_outage`` seconds without contact,
    :class:`ServerUnreachable` is raised.
    """

    def __init__(
        self,
        client: api.Client,
        path: Callable[[], str],
        *,
        lost: Callable[[Exception], None] | None = None,
        back: Callable[[], None] | None = None,
        max_outage: float = 15 * 60,
    ):
        self.client = client
        self.path = path
        self.lost = lost or (lambda exc: None)
        self.back = back or (lambda: None)
        self.max_outage = max_outage
        self.ws: ClientConnection | None = None
        # Set when the server closed the socket on purpose (the log ended).
        self.finished = False
        self.opened_at = 0.0
        self.pause = 0.5

    def _connect(self) -> ClientConnection:
        self.opened_at = time.monotonic()
        base = urlsplit(self.client.url)
        scheme = "wss" if base.scheme == "https" else "ws"
        headers = {"Authorization": f"Bearer {self.client.api_key}"} if self.client.api_key else {}
        # Entered at once: the connection outlives this call and is closed by close().
        return connect(
            f"{scheme}://{base.netloc}{base.path.rstrip('/')}{self.path()}",
            additional_headers=headers,
            origin=f"{base.scheme}://{base.netloc}",
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            max_size=None,  # the server bounds its frames; a long backlog comes in pieces
            compression=None,
        ).__enter__()

    def open(self) -> Socket:
        """Connect for the first time; :class:`Unavailable` when WebSockets cannot be used."""
        try:
            self.ws = self._connect()
        except InvalidStatus as exc:
            raise Unavailable(f"the server refused the WebSocket ({exc.response.status_code})") from exc
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from exc
        return self

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def __enter__(self) -> Socket:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def recv(self, timeout: float | None) -> dict | None:
        """The next frame; None when ``timeout`` passed, or once the server has finished."""
        while not self.finished:
            if self.ws is None:
                self._reconnect()
            try:
                message = self.ws.recv(timeout=timeout)
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                self.ws = None
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code == CLOSE_NOT_FOUND:
                    raise NotFound(
                        "The server does not know this task, or this key may not see it."
                    ) from None
                if code == 1000:
                    self.finished = True
                    return None
                # Dropped (a restart, Redis away on the server): reconnect and go on,
                # waiting longer each time a fresh connection drops again at once.
                if time.monotonic() - self.opened_at < 5:
                    time.sleep(self.pause)
                    self.pause = min(self.pause * 2, MAX_BACKOFF)
                else:
                    self.pause = 0.5
                continue
            return json.loads(message)
        return None

    def _reconnect(self) -> None:
        outage = time.monotonic()
        delay = 0.5
        first = True
        while True:
            try:
                self.ws = self._connect()
            except (OSError, WebSocketException, TimeoutError) as exc:
                if first:
                    self.lost(exc)
                    first = False
                if time.monotonic() - outage > self.max_outage:
                    raise ServerUnreachable(
                        f"Lost the live connection to {self.client.url} for over "
                        f"{self.max_outage / 60:.0f} minutes ({exc})."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if not first:
                self.back()
            return


class LogFollower:
    """A task's log over its WebSocket, as ``(stream, text)`` pieces, resuming by entry id.

    ``from_start``: every line since the task started (the stream must still
    hold its beginning, else :class:`Unavailable` before anything is
    returned); otherwise the server's backlog of recent lines, then new ones.
    """

    def __init__(self, client: api.Client, task_id: str, *, from_start: bool, **socket_options):
        self.task_id = task_id
        self.after: str | None = "0-0" if from_start else None
        self.from_start = from_start
        self.begun = not from_start
        self.ended = False
        self.socket = Socket(client, self._path, **socket_options)

    def _path(self) -> str:
        resume = f"&after={self.after}" if self.after else ""
        return f"/ws/tasks/{self.task_id}/logs/?format=json{resume}"

    def open(self) -> LogFollower:
        self.socket.open()
        return self

    def close(self) -> None:
        self.socket.close()

    def read(self, timeout: float | None) -> list[tuple[str, str]] | None:
        """The pieces of the next frame ([] when none came in ``timeout``); None once the log ended."""
        if self.ended:
            return None
        frame = self.socket.recv(timeout)
        if frame is None:
            if self.socket.finished:  # closed after its end: reopen to see what follows, if anything
                self.socket.finished = False
                self.socket.close()
            return []
        kind = frame.get("type")
        if kind == "begin":
            self.begun = True
        elif kind == "lines" and not self.begun:
            # The stream no longer holds the start of the log (a long one is trimmed).
            self.close()
            raise Unavailable("the live log no longer holds the first lines")
        if frame.get("id") and frame["id"] != "0-0":
            self.after = frame["id"]
        if kind == "end":
            self.ended = True
            return None
        if kind == "lines":
            return [(stream, text) for stream, text in frame["parts"]]
        return []

    def restart_after_end(self) -> None:
        """The task went back to its queue after its log ended: follow its next attempt."""
        self.ended = False
        self.socket.finished = False
        self.socket.close()


def follow_log(
    client: api.Client,
    task_id: str,
    streams: tuple[str, ...],
    is_over: Callable[[], bool],
    *,
    quiet_check: float = 10.0,
) -> Iterator[tuple[str, str]]:
    """Every line of a task's log from its start until it has ended, over the WebSocket.

    ``is_over()`` (a status check over HTTP) is asked when the log ends and
    after ``quiet_check`` seconds without a frame: a task whose machine was
    lost never closes its log. Raises :class:`Unavailable` before yielding
    anything when the live path cannot serve (the caller then uses HTTP).
    """
    follower = LogFollower(client, task_id, from_start=True).open()
    try:
        while True:
            pieces = follower.read(quiet_check)
            if pieces is None:  # the log ended; a task sent back to its queue starts another
                if is_over():
                    return
                follower.restart_after_end()
                continue
            if not pieces:
                if not is_over():
                    continue
                if not follower.begun:
                    # It ended without starting while followed (killed in its queue, say).
                    raise Unavailable("the task ended before its log could be followed")
                # Over without an end mark (its machine was lost): take what is on its way.
                while pieces := follower.read(2.0):
                    yield from ((s, t) for s, t in pieces if s in streams)
                return
            yield from ((s, t) for s, t in pieces if s in streams)
    finally:
        follower.close()
