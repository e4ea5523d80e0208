"""Reading stored logs in pages, however large they are.

A page is found by byte offset: the server seeks there and reads forward
line by line, so a 1 GB log costs what a small one costs. Searching reads
in bounded chunks and stops after a fixed budget, telling where it stopped
so the reader can continue; nothing ever holds the whole file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from django.core.files.storage import default_storage

from tasks_app import services, storage
from tasks_app.executor import questions
from tasks_app.executor.inspect import MAX_READ_BYTES
from tasks_app.models import Task

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
LINES_PER_PAGE = 200
# How far back a "previous page" looks for its lines.
BACK_WINDOW = 256 * 1024
# How much one search request reads before it hands back a "continue" offset.
SEARCH_BUDGET = 64 * 1024 * 1024
CONTEXT_LINES = 5
ERROR_PATTERN = re.compile(rb"error|exception|traceback|fatal|segmentation fault|abort", re.IGNORECASE)
MAX_LINE = 4096  # longer lines are cut on screen (the download keeps them)


@dataclass
class Line:
    offset: int
    number: int | None
    text: str
    match: bool = False


@dataclass
class LogPage:
    stream: str
    size: int
    exists: bool
    offset: int = 0
    lines: list[Line] = field(default_factory=list)
    next_offset: int | None = None
    prev_offset: int | None = None
    # Where a search stopped without finding enough, to continue from there.
    searched_to: int | None = None
    query: str = ""
    note: str = ""


def _lines_from(f: BinaryIO, offset: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without newline) from ``offset`` to the end, read in chunks."""
    f.seek(offset)
    pos = offset
    rest = b""
    while pos < size or rest:
        chunk = f.read(min(1 << 20, size - pos)) if pos < size else b""
        pos += len(chunk)
        data = rest + chunk
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            yield pos - len(data) + start, data[start:nl]
            start = nl + 1
        rest = data[start:]
        if not chunk:
            if rest:
                yield pos - len(rest), rest
            return


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + " …"


def _back(f: BinaryIO, offset: int, lines: int) -> int:
    """Where the ``lines`` lines before ``offset`` begin (a line boundary)."""
    start = max(0, offset - BACK_WINDOW)
    f.seek(start)
    data = f.read(offset - start)
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return start if start == 0 else start + data.find(b"\n") + 1
    return start + pos + 1


def read_page(task: Task, stream: str, *, offset: int = 0, lines: int = LINES_PER_PAGE) -> LogPage:
    """``lines`` lines of a stored log starting at the line that holds ``offset``."""
    name = storage.log_name(task.id, stream, task.attempt)
    if not storage.exists(name):
        return LogPage(stream=stream, size=0, exists=False)
    size = default_storage.size(name)
    with storage.open_file(name) as f:
        offset = min(max(0, offset), size)
        if offset:  # snap to the start of the line holding it
            offset = _back(f, offset + 1, 1) if offset < size else offset
        page = LogPage(stream=stream, size=size, exists=True, offset=offset)
        for pos, raw in _lines_from(f, offset, size):
            if len(page.lines) == lines:
                page.next_offset = pos
                break
            page.lines.append(Line(pos, None, _decode(raw)))
        page.prev_offset = _back(f, offset, lines) if offset else None
    return page


def search(task: Task, stream: str, query: str, *, offset: int = 0, lines: int = LINES_PER_PAGE) -> LogPage:
    """Lines containing ``query`` (case-insensitive) from ``offset`` on, within the search budget."""
    name = storage.log_name(task.id, stream, task.attempt)
    if not storage.exists(name):
        return LogPage(stream=stream, size=0, exists=False, query=query)
    size = default_storage.size(name)
    needle = query.lower().encode()
    page = LogPage(stream=stream, size=size, exists=True, offset=offset, query=query)
    with storage.open_file(name) as f:
        for pos, raw in _lines_from(f, min(max(0, offset), size), size):
            if pos - offset > SEARCH_BUDGET:
                page.searched_to = pos
                break
            if needle in raw.lower():
                if len(page.lines) == lines:
                    page.next_offset = pos
                    break
                page.lines.append(Line(pos, None, _decode(raw), match=True))
    return page


def first_error(task: Task, stream: str, *, offset: int = 0) -> LogPage:
    """The first line that looks like an error, with a few lines around it."""
    name = storage.log_name(task.id, stream, task.attempt)
    if not storage.exists(name):
        return LogPage(stream=stream, size=0, exists=False)
    size = default_storage.size(name)
    with storage.open_file(name) as f:
        found = None
        for pos, raw in _lines_from(f, min(max(0, offset), size), size):
            if pos - offset > SEARCH_BUDGET:
                page = LogPage(stream=stream, size=size, exists=True, offset=offset, searched_to=pos)
                page.note = "No error line yet in this part of the log."
                return page
            if ERROR_PATTERN.search(raw):
                found = pos
                break
        if found is None:
            page = read_page(task, stream, offset=0, lines=0)
            page.note = "No line in this log looks like an error."
            return page
        start = _back(f, found, CONTEXT_LINES)
    page = read_page(task, stream, offset=start, lines=2 * CONTEXT_LINES + 1)
    for line in page.lines:
        line.match = line.offset == found
    page.note = "The first line that looks like an error, with the lines around it."
    return page


def stream_lines(task: Task, stream: str, query: str = "") -> Iterator[bytes]:
    """The whole log, or only its lines containing ``query``, as bytes for a download."""
    name = storage.log_name(task.id, stream, task.attempt)
    size = default_storage.size(name)
    needle = query.lower().encode()
    with storage.open_file(name) as f:
        if not needle:
            while chunk := f.read(1 << 20):
                yield chunk
            return
        for _, raw in _lines_from(f, 0, size):
            if needle in raw.lower():
                yield raw + b"\n"


def stream_running(task, stream: str, query: str = "") -> Iterator[bytes]:
    """A log still on the task's machine, as far as it goes now, read from there in pieces.

    The first piece is read before anything is sent, so a machine that
    cannot answer gives an error page rather than an empty file. When the
    task leaves its machine meanwhile, the same offsets continue in storage.
    """

    def piece(offset: int) -> dict:
        return questions.read_logs(task, {stream: offset}, max_bytes=MAX_READ_BYTES)[stream]

    first = piece(0)
    needle = query.lower()

    def pieces() -> Iterator[bytes]:
        chunk, offset, rest = first, 0, ""
        while True:
            if not needle:
                yield chunk["text"].encode()
            else:
                *lines, rest = (rest + chunk["text"]).split("\n")
                yield "".join(f"{line}\n" for line in lines if needle in line.lower()).encode()
            if chunk["next_offset"] <= offset or chunk["next_offset"] >= chunk["size"]:
                break
            offset = chunk["next_offset"]
            try:
                chunk = piece(offset)
            except services.Refused as exc:
                log.warning("Log download of task %s cut short at byte %d: %s", task.id, offset, exc)
                return
        if needle and needle in rest.lower():
            yield f"{rest}\n".encode()

    return pieces()
