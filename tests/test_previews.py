"""Looking at output files in the console (images, tables, texts of any size); the overview's recent tasks."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from tasks_app import storage
from tasks_app.models import Task
from tasks_app.services import previews
from tests.test_console_pages import HAPPY, make_task

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG: red pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def with_outputs(task: Task, files: dict[str, bytes]) -> Task:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    name = default_storage.save(storage.output_name(task.id), ContentFile(buffer.getvalue()))
    Task.objects.filter(pk=task.pk).update(output_path=name)
    task.refresh_from_db()
    return task


EVIL_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><rect width="4" height="4"/></svg>'
)
CSV = b"step,time,energy,label\n" + b"".join(
    f"{i},{i * 0.1:.1f},{100 - i * i},x{i}\n".encode() for i in range(50)
)


def test_an_image_a_svg_and_a_table_are_shown_safely(logged_in, alice, group):
    task = with_outputs(
        make_task(alice, group, to=HAPPY), {"plot.png": png(), "shape.svg": EVIL_SVG, "run.csv": CSV}
    )
    files = logged_in.get(reverse("task-files", args=[task.id])).content.decode()
    assert reverse("task-file-preview", args=[task.id, "outputs", "run.csv"]) in files

    page = logged_in.get(reverse("task-file-preview", args=[task.id, "outputs", "plot.png"])).content.decode()
    src = reverse("task-file", args=[task.id, "outputs", "plot.png"]) + "?inline=1"
    assert f'<img class="preview-image" src="{src}"' in page
    image = logged_in.get(src)
    assert image["Content-Type"] == "image/png" and b"".join(image.streaming_content) == png()

    svg = logged_in.get(reverse("task-file", args=[task.id, "outputs", "shape.svg"]) + "?inline=1")
    assert svg["Content-Type"] == "image/svg+xml"
    assert (
        "sandbox" in svg["Content-Security-Policy"] and "default-src 'none'" in svg["Content-Security-Policy"]
    )
    page = logged_in.get(
        reverse("task-file-preview", args=[task.id, "outputs", "shape.svg"])
    ).content.decode()
    assert "<script>" not in page and "<img" in page, "shown only through <img>, never inlined"
    download = logged_in.get(reverse("task-file", args=[task.id, "outputs", "run.csv"]) + "?inline=1")
    assert download["Content-Type"] == "application/octet-stream", "only images are served inline"

    page = logged_in.get(reverse("task-file-preview", args=[task.id, "outputs", "run.csv"])).content.decode()
    assert page.count("<tr>") == 1 + previews.TABLE_ROWS and '<th scope="col">energy</th>' in page
    assert page.count("<polyline") == 3, "step, time and energy; label is not a number"


def test_a_big_text_shows_its_head_and_tail_with_flat_memory(logged_in, alice, group):
    # 64 MB, deflated to a little: large enough that holding it would show, small enough to be quick.
    lines = 1_000_000
    body = b"".join(
        b"line %07d of the log, padded to sixty-four bytes or so .....\n" % i for i in range(lines)
    )
    assert len(body) > 60 * 2**20
    task = with_outputs(make_task(alice, group, to=HAPPY), {"big.log": body})
    del body
    url = reverse("task-file-preview", args=[task.id, "outputs", "big.log"])
    tracemalloc.start()
    try:
        page = logged_in.get(url).content.decode()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak} bytes"
    assert "line 0000000 of the log" in page and f"line {lines - 1:07d} of the log" in page
    assert "line 0500000" not in page


def test_nobody_previews_another_teams_files(client, alice, bob, group):
    task = with_outputs(make_task(alice, group, to=HAPPY), {"run.csv": CSV})
    client.force_login(bob)
    assert client.get(reverse("task-file-preview", args=[task.id, "outputs", "run.csv"])).status_code == 404
    client.force_login(alice)
    assert (
        client.get(reverse("task-file-preview", args=[task.id, "outputs", "nothing.csv"])).status_code == 404
    )


def test_the_overview_lists_my_recent_tasks_with_their_progress(logged_in, alice, bob, group):
    done = make_task(alice, group, to=HAPPY)
    running = make_task(alice, group, to=HAPPY[:3])
    Task.objects.filter(pk=running.pk).update(progress=0.42)
    html = logged_in.get(reverse("overview")).content.decode()
    recent = html[html.index('id="recent-tasks"') :]
    recent = recent[: recent.index("</ul>")]
    assert done.id in recent and running.id in recent and 'value="42"' in recent
