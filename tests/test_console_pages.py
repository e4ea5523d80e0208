"""Console pages beyond the basics: the table's filters and pages, the task page's
parts (waiting, timeline, diagram, logs, files, metadata, resubmission), groups,
projects, the overview and the account page.

Tasks are made through the services and moved with ``lifecycle.transition``;
no machine runs here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from tasks_app import lifecycle, services, storage
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, APIKey, Machine, MachineGroup, ProjectHourCount, Quota, Task
from tests.helpers import zipped

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]

HAPPY = [Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS]


def make_task(owner, group, *, to=(Status.SUBMITTED,), simulator="commands", metadata=None, at=None):
    task = Task.objects.create(
        owner=owner,
        project=group.project,
        machine_group=group,
        simulator=simulator,
        parameters={"commands": ["echo hi"]},
        metadata=metadata or {},
    )
    # The moves are spread over the last two minutes, never in the future: a
    # task "ending" after now would fall outside the hour buckets of the chart.
    when = at or timezone.now() - dt.timedelta(minutes=2)
    if at:
        Task.objects.filter(pk=task.pk).update(created_at=at)
        task.created_at = at
    for i, status in enumerate(to):
        lifecycle.transition(
            task, status, reason=f"to {status.value}", at=when + dt.timedelta(seconds=10 * (i + 1))
        )
    return task


def store_input(task, files=None):
    data = zipped(files or {"run.sh": b"echo hi\n"})
    name = default_storage.save(storage.input_name(task.id), ContentFile(data))
    Task.objects.filter(pk=task.pk).update(
        input_path=name, input_size=len(data), input_sha256=hashlib.sha256(data).hexdigest()
    )
    task.refresh_from_db()


def store_log(task, stream, text: str):
    default_storage.save(storage.log_name(task.id, stream), ContentFile(text.encode()))


# -- the tasks table ----------------------------------------------------------------


def test_the_table_filters_by_status_group(logged_in, alice, group):
    queued = make_task(alice, group)
    done = make_task(alice, group, to=HAPPY)
    failed = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    html = logged_in.get(reverse("task-list"), {"status": "failed-any"}).content.decode()
    assert failed.id in html and done.id not in html and queued.id not in html
    html = logged_in.get(reverse("task-list"), {"status": "active"}).content.decode()
    assert queued.id in html and done.id not in html
    html = logged_in.get(reverse("task-list"), {"status": "completed"}).content.decode()
    assert done.id in html and failed.id not in html


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("ab", {"ab0", "ab9x", "abz", "abzz1"}),
        ("ab9", {"ab9x"}),
        ("abz", {"abz", "abzz1"}),
        ("abzz", {"abzz1"}),
        ("z", {"zz"}),
        ("a", {"a9", "ab0", "ab9x", "abz", "abzz1", "ac"}),
        ("b", set()),
        ("é", set()),
    ],
)
def test_an_id_prefix_is_a_range_with_the_right_ends(alice, group, prefix, expected):
    from tasks_app.task_filter import id_prefix

    for task_id in ["a9", "ab0", "ab9x", "abz", "abzz1", "ac", "zz", "9z"]:
        Task.objects.create(
            id=task_id, owner=alice, project=group.project, machine_group=group, simulator="commands"
        )
    assert set(Task.objects.filter(id_prefix(prefix)).values_list("id", flat=True)) == expected


def test_the_table_filters_by_metadata_id_prefix_owner_and_dates(logged_in, alice, bob, group):
    a = make_task(alice, group, metadata={"case": "dambreak"})
    b = make_task(alice, group, metadata={"case": "wave"}, at=timezone.now() - dt.timedelta(days=10))
    html = logged_in.get(reverse("task-list"), {"meta": "case=dambreak"}).content.decode()
    assert a.id in html and b.id not in html
    html = logged_in.get(reverse("task-list"), {"q": b.id[:6]}).content.decode()
    assert b.id in html
    since = (timezone.now() - dt.timedelta(days=2)).date().isoformat()
    html = logged_in.get(reverse("task-list"), {"since": since}).content.decode()
    assert a.id in html and b.id not in html
    html = logged_in.get(reverse("task-list"), {"owner": "bob"}).content.decode()
    assert a.id not in html


def test_the_table_shows_a_chosen_metadata_column_escaped(logged_in, alice, group):
    make_task(alice, group, metadata={"note": "<script>x</script>"})
    html = logged_in.get(reverse("task-list"), {"col": "note"}).content.decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html


def test_a_bad_filter_says_what_is_wrong(logged_in, alice, group):
    make_task(alice, group)
    html = logged_in.get(reverse("task-list"), {"meta": "nokey", "status": "nonsense"}).content.decode()
    assert "key=value" in html and "Unknown status" in html


def test_the_table_pages_with_a_cursor_without_repeating_rows(logged_in, alice, group, monkeypatch):
    from tasks_app.views import table

    monkeypatch.setattr(table, "PAGE_SIZE", 3)
    base = timezone.now() - dt.timedelta(hours=1)
    ids = [make_task(alice, group, at=base + dt.timedelta(minutes=i)).id for i in range(7)]
    seen, url = [], reverse("task-list") + "?sort=-created"
    for _ in range(3):
        page = logged_in.get(url).context["page"]
        seen += [t.id for t in page.rows]
        if not page.next_cursor:
            break
        url = reverse("task-list") + f"?sort=-created&after={page.next_cursor}"
    assert seen == list(reversed(ids))


@pytest.mark.parametrize("sort", ["created", "status", "-simulator"])
def test_every_order_pages_through_all_tasks(logged_in, alice, group, monkeypatch, sort):
    from tasks_app.views import table

    monkeypatch.setattr(table, "PAGE_SIZE", 2)
    made = {make_task(alice, group, to=HAPPY[: i % 4 + 1]).id for i in range(5)}
    seen, after = [], ""
    while True:
        page = logged_in.get(reverse("task-list"), {"sort": sort, "after": after}).context["page"]
        seen += [t.id for t in page.rows]
        if not page.next_cursor:
            break
        after = page.next_cursor
    assert sorted(seen) == sorted(made) and len(seen) == len(made)


def test_the_table_never_counts_or_offsets(logged_in, alice, group, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(60):
        make_task(alice, group)
    page = logged_in.get(reverse("task-list")).context["page"]
    with CaptureQueriesContext(connection) as queries:
        logged_in.get(reverse("task-list"), {"after": page.next_cursor})
    sql = " ".join(q["sql"] for q in queries).upper()
    assert "OFFSET" not in sql and 'COUNT(*) AS "__COUNT"' not in sql


def test_the_table_answers_htmx_with_the_results_and_varies_on_it(logged_in, alice, group):
    task = make_task(alice, group)
    response = logged_in.get(reverse("task-list"), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert task.id in html and 'id="results"' in html and "<html" not in html
    assert 'role="search"' not in html  # the filter form stays as the user left it
    assert "HX-Request" in response["Vary"]
    restore = logged_in.get(
        reverse("task-list"), HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert "<html" in restore.content.decode()


def test_the_table_keeps_its_queries_constant(logged_in, alice, group, django_assert_max_num_queries):
    for _ in range(30):
        make_task(alice, group, metadata={"k": "v"})
    # One of them is every page's budget banner (tasks_app.context_processors).
    with django_assert_max_num_queries(7):
        logged_in.get(reverse("task-list"), {"col": "k", "status": "active"})


# -- the task page -------------------------------------------------------------------


def test_a_task_in_a_group_not_started_says_so(logged_in, alice, group):
    task = make_task(alice, group)
    html = logged_in.get(reverse("task-detail", args=[task.id])).content.decode()
    assert "has not been started" in html and "Start lab" in html


def test_a_task_behind_busy_machines_names_them_and_estimates(logged_in, alice, group):
    services.start_group(group)
    machine = Machine.objects.create(group=group, name="lab-1", state=Machine.State.ONLINE)
    past = timezone.now() - dt.timedelta(hours=2)
    for _ in range(2):
        make_task(alice, group, to=HAPPY, at=past)
    running = make_task(alice, group, to=HAPPY[:3])
    Task.objects.filter(pk=running.pk).update(machine=machine)
    make_task(alice, group)
    waiting = make_task(alice, group)
    html = logged_in.get(reverse("task-detail", args=[waiting.id])).content.decode()
    assert "The only machine of lab is busy" in html
    assert (
        running.id[:8] in html and 'Tasks ahead in the queue: <strong id="queue-position">1</strong>' in html
    )
    assert "Estimated start" in html and "last 2 finished tasks" in html


def test_a_task_with_no_machine_online_says_so(logged_in, alice, group):
    services.start_group(group)
    task = make_task(alice, group)
    html = logged_in.get(reverse("task-detail", args=[task.id])).content.decode()
    assert "No machine of lab is online yet" in html


def test_the_task_page_shows_the_breakdown_the_path_and_its_queries_are_constant(
    logged_in, alice, group, django_assert_max_num_queries
):
    task = make_task(alice, group, to=HAPPY, metadata={"a": "1", "b": "2"})
    # One of them is every page's budget banner (tasks_app.context_processors), one the
    # chain of tasks (remote_assets).
    with django_assert_max_num_queries(14):
        response = logged_in.get(reverse("task-detail", args=[task.id]))
    html = response.content.decode()
    assert "phase-computing" in html and "Computing" in html
    assert "node-current" in html and "<svg" in html
    taken = [e for e in response.context["diagram"].edges if e.taken]
    assert len(taken) == 5


def test_the_header_partial_is_what_htmx_polls_until_the_task_ends(logged_in, alice, group):
    task = make_task(alice, group)
    response = logged_in.get(reverse("task-detail", args=[task.id]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and 'id="queue-position"' in html
    assert "<html" not in html and "Timeline" not in html
    services.kill_task(task)
    response = logged_in.get(reverse("task-detail", args=[task.id]), HTTP_HX_REQUEST="true")
    assert response.status_code == 286 and "Killed" in response.content.decode()


def test_the_header_partial_renders_with_what_the_live_socket_gives_it(alice, group):
    # tasks_app.sockets.consumers pushes this partial with only these three names.
    from django.template.loader import render_to_string

    task = make_task(alice, group)
    html = render_to_string(
        "tasks/task_detail.html#header", {"task": task, "guidance": task.guidance, "position": 0}
    )
    assert "In Queue" in html and 'id="queue-position"' in html


def test_a_running_task_follows_its_log_live(logged_in, alice, group):
    task = make_task(alice, group, to=HAPPY[:3])
    html = logged_in.get(reverse("task-detail", args=[task.id])).content.decode()
    assert f'ws-connect="/ws/tasks/{task.id}/logs/"' in html and 'id="log-lines"' in html


def test_killing_with_htmx_answers_with_the_new_header(logged_in, alice, group):
    task = make_task(alice, group)
    response = logged_in.post(reverse("task-kill", args=[task.id]), HTTP_HX_REQUEST="true")
    assert "Killed" in response.content.decode() and "<html" not in response.content.decode()


def test_killing_without_htmx_redirects_with_a_message(logged_in, alice, group):
    task = make_task(alice, group)
    response = logged_in.post(reverse("task-kill", args=[task.id]), follow=True)
    assert "was killed before it ran" in response.content.decode()


# -- logs ----------------------------------------------------------------------------


@pytest.fixture
def ended_task(alice, group):
    task = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    lines = [f"step {i}" for i in range(500)]
    lines[321] = "ERROR: pressure solver diverged"
    store_log(task, "stdout", "\n".join(lines) + "\n")
    store_log(task, "stderr", "")
    return task


def test_logs_come_in_pages_by_byte_offset(logged_in, ended_task):
    url = reverse("task-logs", args=[ended_task.id])
    first = logged_in.get(url, {"lines": 100}).context["log"]
    assert [x.text for x in first.lines][:2] == ["step 0", "step 1"] and len(first.lines) == 100
    second = logged_in.get(url, {"lines": 100, "offset": first.next_offset}).context["log"]
    assert second.lines[0].text == "step 100"
    back = logged_in.get(url, {"lines": 100, "offset": second.prev_offset}).context["log"]
    assert back.lines[0].text == "step 0"


def test_logs_jump_to_the_first_error_with_context(logged_in, ended_task):
    log = logged_in.get(reverse("task-logs", args=[ended_task.id]), {"find": "error"}).context["log"]
    texts = [x.text for x in log.lines]
    assert "step 316" in texts and "step 326" in texts
    assert [x.text for x in log.lines if x.match] == ["ERROR: pressure solver diverged"]


def test_logs_filter_by_text_and_download_the_filtered_view(logged_in, ended_task):
    url = reverse("task-logs", args=[ended_task.id])
    log = logged_in.get(url, {"q": "step 49"}).context["log"]
    assert [x.text for x in log.lines] == ["step 49"] + [f"step 49{i}" for i in range(10)]
    response = logged_in.get(reverse("task-log-download", args=[ended_task.id, "stdout"]), {"q": "diverged"})
    assert b"".join(response.streaming_content) == b"ERROR: pressure solver diverged\n"
    whole = logged_in.get(reverse("task-log-download", args=[ended_task.id, "stdout"]))
    assert b"".join(whole.streaming_content).count(b"\n") == 500


def test_the_log_view_is_a_partial_for_htmx_and_escapes_lines(logged_in, alice, group):
    task = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    store_log(task, "stderr", "<b>bold</b>\n")
    html = logged_in.get(
        reverse("task-logs", args=[task.id]), {"stream": "stderr"}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert 'id="log-view"' in html and "&lt;b&gt;bold" in html and "<html" not in html


def test_a_task_without_logs_says_why(logged_in, alice, group):
    task = make_task(alice, group)
    html = logged_in.get(reverse("task-logs", args=[task.id])).content.decode()
    assert "No stdout is stored" in html


# -- files ---------------------------------------------------------------------------


def test_files_are_listed_with_sizes_and_downloadable(logged_in, alice, group):
    task = make_task(alice, group, to=HAPPY)
    store_input(task, {"scene.json": b"{}"})
    data = zipped({"out/result.csv": b"a,b\n1,2\n", "stdout.txt": b"hi\n"})
    name = default_storage.save(storage.output_name(task.id), ContentFile(data))
    Task.objects.filter(pk=task.pk).update(output_path=name)
    html = logged_in.get(reverse("task-files", args=[task.id]), HTTP_HX_REQUEST="true").content.decode()
    assert "out/result.csv" in html and "scene.json" in html and "8 B" in html
    one = logged_in.get(reverse("task-file", args=[task.id, "outputs", "out/result.csv"]))
    assert b"".join(one.streaming_content) == b"a,b\n1,2\n"
    whole = logged_in.get(reverse("task-archive", args=[task.id, "outputs"]))
    assert b"".join(whole.streaming_content) == data
    assert logged_in.get(reverse("task-file", args=[task.id, "outputs", "nope.txt"])).status_code == 404


def test_nobody_reads_another_users_logs_or_files(client, bob, ended_task):
    client.force_login(bob)
    assert client.get(reverse("task-logs", args=[ended_task.id])).status_code == 404
    assert client.get(reverse("task-log-download", args=[ended_task.id, "stdout"])).status_code == 404
    assert client.get(reverse("task-files", args=[ended_task.id])).status_code == 404


# -- metadata ------------------------------------------------------------------------


def test_metadata_is_added_edited_and_deleted_inline_with_a_history(logged_in, alice, group):
    task = make_task(alice, group)
    url = reverse("task-metadata", args=[task.id])
    response = logged_in.post(url, {"key": "case", "value": "<script>x</script>"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<html" not in html
    logged_in.post(url, {"original": "case", "key": "scene", "value": "wave"}, HTTP_HX_REQUEST="true")
    task.refresh_from_db()
    assert task.metadata == {"scene": "wave"}
    logged_in.post(reverse("task-metadata-delete", args=[task.id]), {"key": "scene"}, HTTP_HX_REQUEST="true")
    task.refresh_from_db()
    assert task.metadata == {}
    edits = list(Activity.objects.filter(task=task, kind="metadata-edited").order_by("at", "id"))
    assert [e.data["after"] for e in edits] == [{"case": "<script>x</script>"}, {"scene": "wave"}, {}]
    assert edits[1].data["before"] == {"case": "<script>x</script>"}


def test_an_invalid_metadata_entry_shows_its_error_in_place(logged_in, alice, group):
    task = make_task(alice, group)
    response = logged_in.post(
        reverse("task-metadata", args=[task.id]), {"key": "  ", "value": "x"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert 'id="metadata"' in html and "field-error" in html and 'aria-invalid="true"' in html
    task.refresh_from_db()
    assert task.metadata == {}


def test_the_metadata_editor_opens_a_key_for_editing(logged_in, alice, group):
    task = make_task(alice, group, metadata={"case": "dam"})
    html = logged_in.get(
        reverse("task-metadata", args=[task.id]), {"edit": "case"}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert 'value="dam"' in html and "Save" in html


def test_nobody_edits_another_users_metadata(client, bob, alice, group):
    task = make_task(alice, group)
    client.force_login(bob)
    assert (
        client.post(reverse("task-metadata", args=[task.id]), {"key": "k", "value": "v"}).status_code == 404
    )


# -- resubmission --------------------------------------------------------------------


def test_resubmitting_makes_a_linked_task_with_the_same_input(logged_in, alice, group):
    original = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED], metadata={"case": "dam"})
    store_input(original)
    response = logged_in.post(reverse("task-resubmit", args=[original.id]))
    new = Task.objects.get(resubmitted_from=original)
    assert response.url == reverse("task-detail", args=[new.id])
    assert new.status == Status.SUBMITTED and new.parameters == original.parameters
    assert new.metadata == {"case": "dam"} and new.input_sha256 == original.input_sha256
    html = logged_in.get(reverse("task-detail", args=[original.id])).content.decode()
    assert "Resubmitted as" in html and new.id in html
    assert original.id in logged_in.get(reverse("task-detail", args=[new.id])).content.decode()


def test_resubmitting_with_edits_prefills_and_applies_them(logged_in, alice, group):
    original = make_task(alice, group, to=HAPPY)
    store_input(original)
    url = reverse("task-resubmit-edit", args=[original.id])
    html = logged_in.get(url).content.decode()
    assert "echo hi" in html
    bad = logged_in.post(url, {"parameters": "[1]", "machine_group": group.pk, "metadata": "{}"})
    assert "must be a JSON object" in bad.content.decode()
    logged_in.post(
        url,
        {
            "parameters": '{"commands": ["echo edited"]}',
            "machine_group": group.pk,
            "time_to_live": "10m",
            "metadata": '{"try": "2"}',
        },
    )
    new = Task.objects.get(resubmitted_from=original)
    assert new.parameters["commands"] == ["echo edited"] and new.time_to_live_seconds == 600
    assert new.metadata == {"try": "2"}


def test_a_task_without_stored_input_cannot_be_resubmitted(logged_in, alice, group):
    original = make_task(alice, group, to=[Status.KILLED])
    response = logged_in.post(reverse("task-resubmit", args=[original.id]), follow=True)
    assert "no stored input" in response.content.decode()
    assert not Task.objects.filter(resubmitted_from=original).exists()


# -- machine groups ------------------------------------------------------------------


def test_a_group_is_created_from_the_form_with_the_apis_rules(logged_in, alice):
    response = logged_in.post(
        reverse("group-list"),
        {"name": "Bad Name", "machine_type": "c2-standard-4", "num_machines": 1, "data_disk_gb": 10},
    )
    assert response.status_code == 422 and "lowercase letters" in response.content.decode()
    response = logged_in.post(
        reverse("group-list"),
        {
            "name": "fluids",
            "machine_type": "c2-standard-4",
            "num_machines": 2,
            "data_disk_gb": 10,
            "start": "on",
        },
    )
    group = MachineGroup.objects.get(name="fluids")
    assert response.url == reverse("group-detail", args=["fluids"])
    assert group.state == MachineGroup.State.STARTED and group.num_machines == 2


def test_the_group_page_shows_machines_queue_and_ended_tasks(
    logged_in, alice, group, django_assert_max_num_queries
):
    services.start_group(group)
    machine = Machine.objects.create(
        group=group, name="lab-1", state=Machine.State.ONLINE, last_heartbeat_at=timezone.now()
    )
    running = make_task(alice, group, to=HAPPY[:3])
    Task.objects.filter(pk=running.pk).update(machine=machine)
    queued = [make_task(alice, group) for _ in range(5)]
    done = make_task(alice, group, to=HAPPY)
    # Two of them read its usage: the prices and its machines' hours.
    # One of them is every page's budget banner (tasks_app.context_processors).
    with django_assert_max_num_queries(13):
        html = logged_in.get(reverse("group-detail", args=["lab"])).content.decode()
    assert "lab-1" in html and running.id in html and done.id in html
    assert html.index(queued[0].id) < html.index(queued[4].id)
    partial = logged_in.get(reverse("group-detail", args=["lab"]), HTTP_HX_REQUEST="true").content.decode()
    assert 'id="machines"' in partial and "<html" not in partial


def test_terminating_a_group_confirms_what_happens_then_does_it(logged_in, alice, group):
    services.start_group(group)
    queued = make_task(alice, group)
    running = make_task(alice, group, to=HAPPY[:3])
    html = logged_in.get(reverse("group-terminate", args=["lab"])).content.decode()
    assert "Machine Terminated in Queue" in html and "Machine Terminated by User" in html
    assert "<strong>1</strong> waiting task" in html and "<strong>1</strong> running task" in html
    logged_in.post(reverse("group-terminate", args=["lab"]))
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == Status.ZOMBIE and running.status == Status.EXECUTOR_TERMINATED_BY_USER


def test_nobody_terminates_another_users_group(client, bob, group):
    client.force_login(bob)
    assert client.post(reverse("group-terminate", args=["lab"])).status_code == 404
    assert client.post(reverse("group-start", args=["lab"])).status_code == 404


def test_the_group_list_counts_the_queues_of_groups_that_are_up(logged_in, alice):
    from tasks_app.views.groups import with_counts

    up = services.create_group(alice, machine_type="c2-standard-4", name="up")
    services.start_group(up)
    make_task(alice, up)
    make_task(alice, up, to=(Status.SUBMITTED, Status.PREPARING, Status.STARTED))
    down = services.create_group(alice, machine_type="c2-standard-4", name="down")
    services.terminate_group(down)
    MachineGroup.objects.filter(pk=down.pk).update(state=MachineGroup.State.TERMINATED)
    # Test setup only: a task left on a machine of the terminated group is not looked for.
    make_task(alice, down, to=(Status.SUBMITTED, Status.PREPARING))
    counts = {g.name: (g.queued, g.running) for g in with_counts(MachineGroup.objects.all())}
    assert counts == {"up": (1, 1), "down": (0, 0)}
    shown = logged_in.get(reverse("group-list")).context["groups"]
    assert {g.name: (g.queued, g.running) for g in shown} == counts


def test_the_group_list_keeps_its_queries_constant(logged_in, alice, django_assert_max_num_queries):
    for i in range(8):
        services.create_group(alice, machine_type="c2-standard-4", name=f"g{i}")
    with django_assert_max_num_queries(6):
        logged_in.get(reverse("group-list"))


# -- overview, projects, statuses, account -------------------------------------------


def test_the_overview_counts_links_and_charts(logged_in, alice, group, django_assert_max_num_queries):
    services.start_group(group)
    make_task(alice, group)
    make_task(alice, group, to=HAPPY)
    make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    with django_assert_max_num_queries(10):
        html = logged_in.get(reverse("overview")).content.decode()
    assert f"{reverse('task-list')}?status=submitted" in html
    assert "Recent failures" in html and lifecycle.GUIDANCE[Status.FAILED].what_to_do in html.replace(
        "&#x27;", "'"
    )
    assert "<svg" in html and "2 in all" in html


def test_the_overview_reads_the_tasks_that_ended_from_the_hourly_summary(logged_in, alice, bob, group):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    # Not a task anywhere: the page shows what the summary says, for the user's projects only.
    ProjectHourCount.objects.create(project=group.project, hour=hour, status=Status.KILLED, tasks=1000)
    other = services.create_group(bob, machine_type="c2-standard-4", name="other", project="sweeps")
    ProjectHourCount.objects.create(project=other.project, hour=hour, status=Status.KILLED, tasks=5)
    # Before the chart's first hour: not shown.
    a_day_ago = hour - dt.timedelta(hours=24)
    ProjectHourCount.objects.create(project=group.project, hour=a_day_ago, status=Status.FAILED, tasks=7)
    context = logged_in.get(reverse("overview")).context
    counts = {row["status"]: row["n"] for row in context["by_status"]}
    assert counts[Status.KILLED] == 1000 and Status.FAILED not in counts
    assert context["chart"]["total"] == context["chart"]["bars"][-1]["n"] == 1000


def test_projects_list_counts_and_compute_time(logged_in, alice, group, django_assert_max_num_queries):
    make_task(alice, group, to=HAPPY)
    make_task(alice, group)
    with django_assert_max_num_queries(5):
        response = logged_in.get(reverse("project-list"))
    project = next(p for p in response.context["projects"] if p.name == "dambreak")
    assert (project.total, project.active, project.succeeded) == (2, 1, 1)
    assert project.compute == dt.timedelta(seconds=30)


def test_the_status_reference_draws_every_status(logged_in):
    html = logged_in.get(reverse("status-reference")).content.decode()
    assert html.count('class="node ') == len(Status)


def test_api_keys_are_shown_once_and_revoked(logged_in, alice):
    response = logged_in.post(reverse("account"), {"name": "laptop"})
    secret = response.context["secret"]
    assert secret.startswith("sdk_") and secret in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    assert secret not in logged_in.get(reverse("account")).content.decode()
    key = APIKey.objects.get(user=alice, name="laptop")
    assert APIKey.authenticate(secret) == alice
    logged_in.post(reverse("api-key-revoke", args=[key.pk]))
    assert APIKey.authenticate(secret) is None


def test_the_account_page_and_the_api_show_quotas_with_what_is_in_use(logged_in, api, alice, started_group):
    Quota.objects.create(user=alice, max_machines=3, max_task_ttl_seconds=600)
    Quota.objects.create(project=started_group.project, max_group_ttl_minutes=90)
    html = logged_in.get(reverse("account")).content.decode()
    section = html[html.index('id="quotas-h"') :]
    cells = [re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td>(.*?)</td>", section, re.S)]
    assert [cells[i : i + 4] for i in range(0, len(cells), 4)] == [
        ["You", "Machines running at once", "1", "3 machines"],
        ["You", "Time to live of a machine group", "each group", "no limit"],
        ["You", "Time to live of a task", "each task", "600 seconds"],
        ["You", "Stored files", "0 GB", "no limit"],
        ["alice-default", "Machines running at once", "1", "no limit"],
        ["alice-default", "Time to live of a machine group", "each group", "90 minutes"],
        ["alice-default", "Time to live of a task", "each task", "no limit"],
        ["alice-default", "Stored files", "0 GB", "no limit"],
    ]
    answer = api.get("/api/v1/quotas").json()
    assert answer["username"] == "alice"
    assert answer["quotas"][0] == {
        "id": "max_machines",
        "label": "Machines running at once",
        "max_allowed": 3,
        "in_use": 1,
        "unit": "machines",
        "scope": "global",
    }
    (project,) = answer["projects"]
    assert (project["name"], project["role"]) == ("alice-default", "maintainer")
    assert [(q["id"], q["max_allowed"], q["in_use"]) for q in project["quotas"]] == [
        ("max_machines", None, 1),
        ("max_group_ttl_minutes", 90, None),
        ("max_task_ttl_seconds", None, None),
        ("max_storage_gb", None, 0.0),
    ]


def test_nobody_revokes_another_users_key(client, bob, alice):
    key, _ = APIKey.issue(alice, "laptop")
    client.force_login(bob)
    assert client.post(reverse("api-key-revoke", args=[key.pk])).status_code == 404


@pytest.mark.parametrize("name", ["overview", "project-list", "account", "group-list"])
def test_new_pages_need_a_login(client, name):
    assert client.get(reverse(name)).status_code == 302
