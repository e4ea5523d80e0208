"""A look at an output file without downloading it: images, tables, text.

Files are read as a stream out of the stored archive, never whole: a text's
head is its first 64 KB, its tail the last 64 KB kept while the rest streams
past (memory stays at a couple of MB whatever the size; the time is that
of unpacking it); a table's head and chart come from its first rows. Images
are shown from the file itself, an SVG only inside ``<img>`` and served with
a policy that forbids scripts, so whatever it holds cannot run.
"""

from __future__ import annotations

import codecs
import collections
import csv
import io
import math
from pathlib import PurePosixPath

IMAGES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
SVG = "image/svg+xml"
TABLES = {".csv": ",", ".tsv": "\t"}
TEXTS = {
    ".txt", ".log", ".out", ".err", ".dat", ".json", ".md", ".py", ".sh", ".xml", ".yaml", ".yml",
    ".ini", ".cfg", ".obj", ".vtk", ".inp", ".f90", ".c", ".cpp", ".h",
}  # fmt: skip
HEAD_BYTES = TAIL_BYTES = 64 * 1024
LINES = 40
CHUNK = 1 << 20
TABLE_ROWS = 20
CHART_ROWS = 2000
CHART_COLUMNS = 4
# An image larger than this is linked, not shown.
IMAGE_MAX_BYTES = 20 * 2**20
CHART_W, CHART_H = 300, 80


def kind(path: str) -> str | None:
    """``image``, ``svg``, ``table``, ``text`` or None (no preview)."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in IMAGES:
        return "image"
    if suffix == ".svg":
        return "svg"
    if suffix in TABLES:
        return "table"
    if suffix in TEXTS or not suffix:
        return "text"
    return None


def content_type(path: str) -> str | None:
    """The type an image is served inline with; None for anything else."""
    suffix = PurePosixPath(path).suffix.lower()
    return SVG if suffix == ".svg" else IMAGES.get(suffix)


def text(stream, size: int) -> dict:
    """The first and last lines of a text read from ``stream`` (``size`` bytes in all)."""
    head = stream.read(HEAD_BYTES)
    if size <= HEAD_BYTES:
        return {"head": _lines(head)[: LINES * 2], "tail": [], "whole": len(head) == size, "size": size}
    tail = collections.deque(maxlen=TAIL_BYTES // CHUNK + 2)
    while chunk := stream.read(CHUNK):
        tail.append(chunk)
    rest = b"".join(tail)[-TAIL_BYTES:]
    head_lines = _lines(head)[:-1][:LINES]  # the last line may be cut
    tail_lines = _lines(rest)[1:][-LINES:]  # so may the first
    return {"head": head_lines, "tail": tail_lines, "whole": False, "size": size}


def _lines(data: bytes) -> list[str]:
    return codecs.decode(data, "utf-8", "replace").splitlines()


def table(stream, delimiter: str) -> dict:
    """The head of a table and a small chart of each of its first numeric columns."""
    raw = stream.read(4 * CHUNK)
    lines = _lines(raw)
    if len(raw) == 4 * CHUNK:
        lines = lines[:-1]  # cut in the middle of a row
    rows = list(csv.reader(io.StringIO("\n".join(lines[: CHART_ROWS + 1])), delimiter=delimiter))
    if not rows:
        return {"header": [], "rows": [], "charts": []}
    header, body = rows[0], rows[1:]
    charts = []
    for index, name in enumerate(header):
        values = [_number(row[index]) if index < len(row) else None for row in body]
        numbers = [v for v in values if v is not None]
        if len(numbers) >= 2 and len(numbers) >= len(values) * 0.8:
            charts.append(_chart(name, numbers))
        if len(charts) == CHART_COLUMNS:
            break
    return {"header": header, "rows": body[:TABLE_ROWS], "charts": charts, "rows_read": len(body)}


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _chart(name: str, values: list[float]) -> dict:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = CHART_W / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{CHART_H - (v - low) / span * CHART_H:.1f}" for i, v in enumerate(values)
    )
    return {
        "name": name,
        "points": points,
        "low": low,
        "high": high,
        "count": len(values),
        "w": CHART_W,
        "h": CHART_H,
    }
