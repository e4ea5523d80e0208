"""Bulk actions with their count preview, CSV export and saved views of the tasks table."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from tasks_app.lifecycle import Status
from tasks_app.models import Activity, SavedView, Task
from tests.test_console_pages import HAPPY, make_task, store_input

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def test_a_bulk_kill_previews_the_count_then_acts_on_confirmation(logged_in, alice, group):
    queued = [make_task(alice, group) for _ in range(3)]
    done = make_task(alice, group, to=HAPPY)
    data = {"action": "kill", "scope": "filter", "filter": "status=active"}
    preview = logged_in.post(reverse("task-bulk"), data, HTTP_HX_REQUEST="true")
    html = preview.content.decode()
    assert "3 tasks match the filter" in html and "Kill 3 tasks" in html and "<html" not in html
    assert all(Task.objects.get(pk=t.pk).status == Status.SUBMITTED for t in queued)
    logged_in.post(reverse("task-bulk"), data | {"confirm": "on"})
    assert {Task.objects.get(pk=t.pk).status for t in queued} == {Status.KILLED}
    assert Task.objects.get(pk=done.pk).status == Status.SUCCESS


def test_bulk_metadata_on_selected_rows_records_each_edit(logged_in, alice, group):
    a, b, c = (make_task(alice, group) for _ in range(3))
    data = {"action": "metadata", "scope": "selected", "ids": [a.id, b.id], "key": "batch", "value": "7"}
    logged_in.post(reverse("task-bulk"), data | {"confirm": "on"})
    assert [Task.objects.get(pk=t.pk).metadata for t in (a, b, c)] == [{"batch": "7"}, {"batch": "7"}, {}]
    assert Activity.objects.filter(kind="metadata-edited").count() == 2


def test_bulk_actions_need_a_selection_and_a_key(logged_in, alice, group):
    response = logged_in.post(reverse("task-bulk"), {"action": "metadata", "scope": "selected"})
    assert response.status_code == 422
    html = response.content.decode()
    assert "Select at least one row" in html and "Give the key" in html


def test_bulk_actions_never_touch_another_users_tasks(client, bob, alice, group):
    task = make_task(alice, group)
    client.force_login(bob)
    client.post(
        reverse("task-bulk"), {"action": "kill", "scope": "selected", "ids": [task.id], "confirm": "on"}
    )
    client.post(reverse("task-bulk"), {"action": "kill", "scope": "filter", "filter": "", "confirm": "on"})
    assert Task.objects.get(pk=task.pk).status == Status.SUBMITTED


def test_bulk_resubmit_makes_linked_tasks(logged_in, alice, group):
    failed = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    store_input(failed)
    logged_in.post(
        reverse("task-bulk"), {"action": "resubmit", "scope": "selected", "ids": [failed.id], "confirm": "on"}
    )
    assert Task.objects.filter(resubmitted_from=failed, status=Status.SUBMITTED).count() == 1


def test_csv_export_of_the_filter_streams_every_match(logged_in, alice, group):
    make_task(alice, group, metadata={"note": "a,b"})
    make_task(alice, group, to=HAPPY)
    response = logged_in.get(reverse("task-export"), {"status": "active"})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 1 and rows[0]["status"] == "submitted" and rows[0]["metadata"] == '{"note": "a,b"}'


def test_csv_export_of_selected_rows(logged_in, alice, group):
    a, _ = make_task(alice, group), make_task(alice, group)
    response = logged_in.post(reverse("task-bulk"), {"action": "export", "scope": "selected", "ids": [a.id]})
    text = b"".join(response.streaming_content).decode()
    assert a.id in text and text.count("\n") == 2


def test_a_saved_view_can_be_the_default_and_shared(logged_in, client, alice, bob, group):
    logged_in.post(
        reverse("saved-view-create"),
        {"name": "failures", "query": "status=failed-any&after=xyz", "is_default": "on"},
    )
    view = SavedView.objects.get(owner=alice)
    assert view.query == "status=failed-any" and view.is_default
    response = logged_in.get(reverse("task-list"))
    assert response.url == reverse("task-list") + "?status=failed-any"
    assert logged_in.get(reverse("task-list"), {"clear": "1"}).status_code == 200
    logged_in.post(
        reverse("saved-view-create"),
        {"name": "team", "query": "status=active", "share": "on", "project": "dambreak"},
    )
    make_task(bob, group)  # bob now has a task in the project, so he sees it
    client.force_login(bob)
    html = client.get(reverse("task-list")).content.decode()
    assert "team" in html and "failures" not in html


def test_nobody_deletes_another_users_view(client, alice, bob):
    view = SavedView.objects.create(owner=alice, name="mine", query="status=active")
    client.force_login(bob)
    assert client.post(reverse("saved-view-delete", args=[view.pk])).status_code == 404
