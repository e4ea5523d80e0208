"""What a machine answers about the task it runs (the worker side of ``/machine/…`` and live logs).

The remote-control round trip through the broker is exercised end to end in
test_client.py and test_cli.py; here the answers themselves, on real files.
"""

from __future__ import annotations

import io
import os

import pytest
from django.conf import settings

from tasks_app.executor import inspect

TASK = "t" * 25


@pytest.fixture
def folder():
    base = settings.SIMDECK_WORK_DIR / "lab-1" / TASK
    (base / "work" / "out").mkdir(parents=True)
    (base / "logs").mkdir()
    (base / "logs" / "stdout.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    (base / "logs" / "stderr.txt").write_text("")
    (base / "work" / "out" / "a.csv").write_text("x\n")
    (base / "work" / "mesh.csv").write_text("1\n2\n")
    os.utime(base / "work" / "out" / "a.csv", (2_000_000_000, 2_000_000_000))
    return base


def ask(op: str, **params) -> dict:
    return inspect.answer("lab-1", TASK, op, params)


def test_it_lists_the_task_files_with_its_logs_first(folder):
    answer = ask("list_files")
    assert answer["ok"] and not answer["truncated"]
    assert [f["path"] for f in answer["files"]] == ["stdout.txt", "stderr.txt", "mesh.csv", "out/a.csv"]
    assert ask("last_modified")["file"]["path"] == "out/a.csv"


def test_it_tails_and_then_follows_a_file(folder):
    tail = ask("read", files=[{"path": "stdout.txt", "offset": None}], lines=2)["files"][0]
    assert tail["text"] == "line 99\nline 100\n"
    assert tail["next_offset"] == tail["size"]
    with open(folder / "logs" / "stdout.txt", "a") as f:
        f.write("line 101\n")
    more = ask("read", files=[{"path": "stdout.txt", "offset": tail["next_offset"]}])["files"][0]
    assert more["text"] == "line 101\n" and more["offset"] == tail["next_offset"]
    missing = ask("read", files=[{"path": "nothing.txt", "offset": None}])["files"][0]
    assert missing == {"path": "nothing.txt", "missing": True}


def test_it_never_reads_outside_the_task_folder(folder):
    (folder / "work" / "escape").symlink_to("/etc")
    for path in ("../logs/stdout.txt", "/etc/passwd", "escape/passwd", "a\\..\\b"):
        answer = ask("read", files=[{"path": path, "offset": None}])
        assert answer["ok"] is False and answer["error"] == "invalid", path
    assert [f["path"] for f in ask("list_files")["files"]].count("escape") == 0
    assert inspect.answer("lab-1", "../../etc", "list_files")["error"] == "invalid"


def test_a_task_that_is_not_here_is_said_so(folder):
    answer = inspect.answer("lab-2", TASK, "list_files")
    assert answer == {
        "ok": False,
        "error": "not_here",
        "message": f"Task {TASK} is not running on machine lab-2.",
    }
    assert ask("reboot")["error"] == "invalid"


def test_pieces_of_text_never_split_a_character():
    data = "né\n".encode() * 3  # "é" is two bytes
    f = io.BytesIO(data)
    text, after = inspect.read_chunk(f, len(data), 0, 2)  # stops inside the first "é"
    assert (text, after) == ("n", 1)
    text, after = inspect.read_chunk(f, len(data), after, 100)
    assert text == "é\nné\nné\n" and after == len(data)
    garbage = io.BytesIO(b"ok\xff\n")
    assert inspect.read_chunk(garbage, 4, 0, 100) == ("ok\ufffd\n", 4)


def test_a_tail_starts_at_a_line_and_a_truncated_file_starts_over():
    data = b"one\ntwo\nthree"
    f = io.BytesIO(data)
    assert inspect.read_text(f, len(data), None, 2, 1000)["text"] == "two\nthree"
    assert inspect.read_text(f, len(data), None, 10, 1000)["text"] == "one\ntwo\nthree"
    assert inspect.read_text(f, len(data), None, 0, 1000)["text"] == ""
    assert inspect.read_text(f, len(data), 50, 0, 1000)["text"] == "one\ntwo\nthree"
