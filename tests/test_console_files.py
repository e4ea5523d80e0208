"""A task's input and output files as folder trees in the console."""

from __future__ import annotations

import re

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from tasks_app import storage
from tasks_app.models import Task
from tasks_app.views import filetree
from tests.helpers import zipped
from tests.test_console_pages import HAPPY, make_task, store_input

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def store_outputs(task, files: dict[str, bytes]) -> None:
    name = default_storage.save(storage.output_name(task.id), ContentFile(zipped(files)))
    Task.objects.filter(pk=task.pk).update(output_path=name)


def test_folders_come_first_sum_what_is_below_them_and_single_folder_chains_merge():
    rows = filetree.rows(
        [
            ("stdout.txt", 5),
            ("output/vtk/b.vtk", 20),
            ("output/vtk/a.vtk", 10),
            ("output/log/run.log", 7),
            ("deep/er/still/file.txt", 3),
            ("a.txt", 1),
        ]
    )
    shape = [(r["kind"], r.get("name"), r.get("size"), r.get("files")) for r in rows]
    assert shape == [
        ("folder", "deep/er/still", 3, 1),
        ("file", "file.txt", 3, None),
        ("end", None, None, None),
        ("folder", "output", 37, 3),
        ("folder", "log", 7, 1),
        ("file", "run.log", 7, None),
        ("end", None, None, None),
        ("folder", "vtk", 30, 2),
        ("file", "a.vtk", 10, None),
        ("file", "b.vtk", 20, None),
        ("end", None, None, None),
        ("end", None, None, None),
        ("file", "a.txt", 1, None),
        ("file", "stdout.txt", 5, None),
    ]
    assert rows[1]["path"] == "deep/er/still/file.txt"


def test_a_folder_with_many_files_starts_closed():
    rows = filetree.rows([(f"frames/f{i:04d}.vtk", 1) for i in range(filetree.OPEN_UP_TO + 1)] + [("a/b", 1)])
    folders = {r["name"]: r["open"] for r in rows if r["kind"] == "folder"}
    assert folders == {"a": True, "frames": False}


def test_the_files_page_shows_trees_with_sizes_and_escaped_links(logged_in, alice, group):
    task = make_task(alice, group, to=HAPPY)
    store_input(task, {"scene/config.json": b"{}", "run.sh": b"echo\n"})
    store_outputs(
        task,
        {
            "output/vtk/a.vtk": b"a" * 1000,
            "output/vtk/b.vtk": b"b" * 2000,
            "output/<b>x&y.txt": b"z" * 7,
            "stdout.txt": b"hi\n",
        },
    )
    page = logged_in.get(reverse("task-files", args=[task.id]))
    html = page.content.decode()
    assert "<html" in html and html.count("<details") == 3  # output, vtk, scene
    assert "2.9 KB" in html  # the vtk folder: 3000 bytes summed
    assert "3 files, 2.9 KB" in html  # output: both frames and the odd name
    assert "&lt;b&gt;x&amp;y.txt" in html and "<b>x" not in html
    assert f"/tasks/{task.id}/files/outputs/output/%3Cb%3Ex&amp;y.txt" in html
    assert f'href="/tasks/{task.id}/files/outputs.zip"' in html
    partial = logged_in.get(reverse("task-files", args=[task.id]), HTTP_HX_REQUEST="true")
    body = partial.content.decode()
    assert "<html" not in body and 'id="file-lists"' in body and body.count("<details") == 3
    one = logged_in.get(reverse("task-file", args=[task.id, "outputs", "output/<b>x&y.txt"]))
    assert b"".join(one.streaming_content) == b"z" * 7


def test_the_files_page_reads_a_large_tree_in_the_same_queries(
    logged_in, alice, group, django_assert_num_queries
):
    small = make_task(alice, group, to=HAPPY)
    store_outputs(small, {"a.txt": b"a"})
    large = make_task(alice, group, to=HAPPY)
    store_outputs(large, {f"run{i % 7}/frame{i}.vtk": b"v" * i for i in range(700)})
    logged_in.get(reverse("task-files", args=[small.id]))
    with django_assert_num_queries(3):  # session, user, task
        logged_in.get(reverse("task-files", args=[small.id]), HTTP_HX_REQUEST="true")
    with django_assert_num_queries(3):
        html = logged_in.get(reverse("task-files", args=[large.id]), HTTP_HX_REQUEST="true").content.decode()
    assert len(re.findall(r'<li class="file">', html)) == 700
    assert html.count("<details>") == 7  # each run folder has 100 frames: closed


def test_nobody_lists_another_users_files(client, alice, bob, group):
    task = make_task(alice, group, to=HAPPY)
    store_outputs(task, {"a.txt": b"a"})
    client.force_login(bob)
    assert client.get(reverse("task-files", args=[task.id]), HTTP_HX_REQUEST="true").status_code == 404
    assert client.get(reverse("task-file", args=[task.id, "outputs", "a.txt"])).status_code == 404
