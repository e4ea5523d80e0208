"""How far a running simulation got, and when it should end.

The readers and the pace are tested on their own (no clock but the one
given); the console, the API, the CLI's table and the task page's socket on
progress written to the database; the whole path (a machine reading a real
task's output, the bar moving in Chromium) through a running stack. A real
SPlisHSPlasH run is followed in tests/test_simulator_splishsplash.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from django.utils import timezone

from console.asgi import application
from simdeck import render
from tasks_app import live
from tasks_app.executor.progress import MIN_SPAN_SECONDS, Pace, ProgressWatch
from tasks_app.models import Task
from tasks_app.simulators.progress import PROGRESS_FILE, ProgressReader, read_progress_file, reported
from tasks_app.simulators.splishsplash import SplishSplash
from tests.helpers import ROOT
from tests.test_browser import CHROMIUM, browser  # noqa: F401 - the browser fixture
from tests.test_console_pages import HAPPY, make_task

RUNNING = HAPPY[:3]
SCENE = ROOT / "examples" / "splishsplash-dambreak" / "config.json"


def computing(owner, group, progress: float | None, eta: dt.datetime | None = None, to=RUNNING) -> Task:
    task = make_task(owner, group, to=to)
    Task.objects.filter(pk=task.pk).update(progress=progress, progress_eta=eta)
    task.refresh_from_db()
    return task


# -- reading it ----------------------------------------------------------------------


def test_the_last_valid_report_of_a_batch_counts():
    assert reported(b"step 1\nSIMDECK_PROGRESS 0.25\nstep 2\nSIMDECK_PROGRESS .5\n") == 0.5
    assert reported(b"  SIMDECK_PROGRESS 1\r\n") == 1.0
    assert reported(b"SIMDECK_PROGRESS 0.7\nSIMDECK_PROGRESS 1.5\n") == 0.7, "above 1 is no report"
    assert (
        reported(b"echo SIMDECK_PROGRESS 0.3 > log\nSIMDECK_PROGRESS -0.1\nSIMDECK_PROGRESS 0.2 done\n")
        is None
    )
    assert reported(b"nothing to see\n" * 1000) is None


def test_splishsplash_reads_simulated_time_from_the_frames_it_exported(tmp_path):
    scene = json.loads(SCENE.read_text())
    scene["Configuration"].update(stopAt=2.0, dataExportFPS=10, enablePartioExport=True)
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    reader = SplishSplash().progress_reader(tmp_path, {"sim_config_filename": "scene.json"})
    assert reader.look() is None, "nothing exported yet"
    frames = tmp_path / "output" / "partio"
    frames.mkdir(parents=True)
    for n in range(1, 6):  # frame 5 holds simulated time 0.4 s
        (frames / f"ParticleData_Fluid_{n}.bgeo").write_bytes(b"")
    assert reader.look() == pytest.approx(0.2)
    (frames / "ParticleData_Fluid_6.bgeo").write_bytes(b"")
    (frames / "ParticleData_Fluid_21.bgeo").write_bytes(b"")  # not the next one: looked for by name
    assert reader.look() == pytest.approx(0.25)
    # A scene that exports no frames has nothing to show but the generic lines.
    scene["Configuration"].update(enablePartioExport=False, enableVTKExport=False)
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    plain = SplishSplash().progress_reader(tmp_path, {"sim_config_filename": "scene.json"})
    assert type(plain) is ProgressReader
    assert plain.lines(b"SIMDECK_PROGRESS 0.4\n") == 0.4


# -- the estimate ----------------------------------------------------------------------


def test_a_steady_pace_gives_an_estimate_and_an_uneven_or_stalled_one_none():
    steady = Pace()
    for second in range(6):
        steady.add(float(second), second * 0.1)
    assert steady.remaining_seconds(5.0) == pytest.approx(5.0)
    assert steady.remaining_seconds(7.0) == pytest.approx(3.0), "counted from now"
    assert steady.remaining_seconds(5.0 + 11) is None, "no rise for much longer than usual: stalled"

    short = Pace()
    for second in range(3):
        short.add(second * MIN_SPAN_SECONDS / 10, second * 0.1)
    assert short.remaining_seconds(0.5) is None, "too few reports over too short a time"

    uneven = Pace()
    for second, fraction in enumerate([0.0, 0.01, 0.02, 0.03, 0.3, 0.6]):
        uneven.add(float(second), fraction)
    assert uneven.remaining_seconds(5.0) is None

    restarted = Pace()
    for second in range(6):
        restarted.add(float(second), second * 0.1)
    restarted.add(6.0, 0.05)
    assert restarted.remaining_seconds(6.0) is None, "a fraction going back starts a new pace"


def test_the_watch_records_a_change_not_every_second():
    now = [0.0]
    watch = ProgressWatch(ProgressReader(), clock=lambda: now[0])
    assert watch.due() is None, "nothing reported yet"
    watch.lines(b"SIMDECK_PROGRESS 0.1\n")
    assert watch.due() == (0.1, None)
    now[0] = 0.5
    assert watch.due() is None, "the same fraction, still no estimate"
    for second in range(1, 6):
        now[0] = float(second)
        watch.lines(f"SIMDECK_PROGRESS {(second + 1) / 10}\n".encode())
        fraction, eta = watch.due()
    assert fraction == 0.6 and eta is not None
    assert abs((eta - timezone.now()).total_seconds() - 4) <= 1
    assert watch.due(ended=True) == (0.6, None), "an ended run has no estimate"


def test_a_progress_file_in_the_work_folder_counts_after_printed_lines(tmp_path):
    import os

    now = [0.0]
    watch = ProgressWatch(ProgressReader(), clock=lambda: now[0], folder=tmp_path)
    progress_file = tmp_path / PROGRESS_FILE
    assert watch.due() is None, "no file yet"
    progress_file.write_text("0.25\n")
    assert watch.due() == (0.25, None)
    for text in ["", "0.3 done", "1.5", "-0.1", "nan", "0." + "5" * 80]:
        progress_file.write_text(text)
        now[0] += 1
        assert watch.due() is None, f"{text!r} is no fraction: the last one stands"
    progress_file.write_text(" .5 ")
    assert watch.due() == (0.5, None)
    watch.lines(b"SIMDECK_PROGRESS 0.75\n")
    assert watch.due() == (0.75, None), "a printed line comes first"

    # The simulation owns the folder: a link is not followed, a FIFO not opened for reading.
    secret = tmp_path / "elsewhere"
    secret.write_text("0.9")
    progress_file.unlink()
    progress_file.symlink_to(secret)
    assert read_progress_file(tmp_path) is None
    progress_file.unlink()
    os.mkfifo(progress_file)
    assert read_progress_file(tmp_path) is None, "answered at once, not blocked on the pipe"
    progress_file.unlink()
    progress_file.mkdir()
    assert read_progress_file(tmp_path) is None


# -- the console, the API and the CLI ------------------------------------------------------


@pytest.mark.django_db
def test_the_task_page_and_the_table_show_the_bar_and_the_estimate(logged_in, alice, group, no_broker):
    eta = timezone.now() + dt.timedelta(minutes=4, seconds=30)
    task = computing(alice, group, 0.637, eta)
    unsure = computing(alice, group, 0.2)
    done = computing(alice, group, 0.9, to=HAPPY)
    page = logged_in.get(reverse("task-detail", args=[task.id])).content.decode()
    assert '<progress value="63" max="100"' in page and "ends <time" in page and "in about 4" in page
    page = logged_in.get(reverse("task-detail", args=[unsure.id])).content.decode()
    assert '<progress value="20"' in page and "no end estimate while its pace is not steady" in page
    assert "<progress" not in logged_in.get(reverse("task-detail", args=[done.id])).content.decode()
    table = logged_in.get(reverse("task-list")).content.decode()
    cell = re.search(rf'<td id="status-{task.id}">(.*?)</td>', table, re.S).group(1)
    assert '<progress value="63"' in cell and "left" in cell
    assert "<progress" not in re.search(rf'<td id="status-{done.id}">(.*?)</td>', table, re.S).group(1)


@pytest.mark.django_db
def test_the_api_and_the_cli_table_give_the_progress_while_it_computes(api, alice, group, no_broker):
    eta = timezone.now() + dt.timedelta(minutes=2)
    task = computing(alice, group, 0.5, eta)
    done = computing(alice, group, 0.9, eta, to=HAPPY)
    body = api.get(f"/api/v1/tasks/{task.id}").json()
    assert body["progress"] == 0.5 and body["progress_eta"] is not None
    ended = api.get(f"/api/v1/tasks/{done.id}").json()
    assert ended["progress"] is None and ended["progress_eta"] is None
    listed = api.get("/api/v1/tasks").json()["items"]
    assert {t["id"]: t["progress"] for t in listed} == {task.id: 0.5, done.id: None}
    text = _rendered(render.tasks_table(listed))
    assert "Progress" in text and re.search(r"50% ~(1 min \d+|2 min 0) s left", text)
    assert "Progress" not in _rendered(render.tasks_table([ended]))


def _rendered(table) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()


@pytest.mark.django_db(transaction=True)
def test_progress_is_pushed_to_the_task_page_socket_and_as_json(alice, group, alice_key, no_broker):
    task = computing(alice, group, None)

    async def watch(query: str):
        communicator = WebsocketCommunicator(
            application,
            f"/ws/tasks/{task.id}/{query}",
            headers=[
                (b"origin", b"http://localhost"),
                (b"host", b"localhost"),
                (b"authorization", f"Bearer {alice_key}".encode()),
            ],
        )
        connected, _ = await communicator.connect()
        assert connected
        await communicator.receive_from(timeout=10)  # the state, first
        await sync_to_async(Task.objects.filter(pk=task.pk).update)(progress=0.42)
        await sync_to_async(live.progress_changed)(task.id, alice.pk, task.project_id, 0.42, None)
        frame = await communicator.receive_from(timeout=10)
        await communicator.disconnect()
        return frame

    frame = async_to_sync(watch)("")
    assert 'id="task-progress"' in frame and 'hx-swap-oob="true"' in frame and 'value="42"' in frame
    assert json.loads(async_to_sync(watch)("?format=json")) == {
        "type": "progress",
        "progress": 0.42,
        "eta": None,
    }


# -- for real ----------------------------------------------------------------------------

# Waits for a file named "go" (the test opens the page first), then reports ten steps.
STEPS = (
    "while [ ! -f go ]; do sleep 0.1; done; "
    "for i in 1 2 3 4 5 6 7 8 9; do echo step $i; echo SIMDECK_PROGRESS 0.$i; sleep 0.6; done"
)


@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium (/usr/bin/chromium) is not installed")
@pytest.mark.timeout(180)
def test_progress_lines_move_the_bar_of_a_real_task_live(
    browser,  # noqa: F811 - the browser fixture
    stack,
    alice,
    alice_key,
    client_for,
):
    """SIMDECK_PROGRESS lines of a real task move the bar and bring an estimate, live, in Chromium.

    (SPlisHSPlasH's progress from a real run: tests/test_simulator_splishsplash.py.)
    """
    from playwright.sync_api import expect

    from tests.client_fixtures import workdir
    from tests.test_browser import log_in, running_task

    task = running_task(alice, alice_key, client_for, STEPS, 60)
    page = browser.new_page()
    log_in(page, stack.url)
    page.goto(f"{stack.url}/tasks/{task.id}/")
    page.evaluate("window.stillTheSamePage = true")
    bar = page.locator("#task-progress progress")
    expect(bar).to_have_count(0)
    (workdir(stack, task.id) / "go").write_text("")
    expect(bar).to_have_attribute("value", re.compile(r"^[1-4]0$"), timeout=20_000)
    expect(page.locator("#task-progress")).to_contain_text("ends in about", timeout=20_000)
    expect(bar).to_have_attribute("value", re.compile(r"^[6-9]0$"), timeout=20_000)
    on_the_way = client_for(alice_key).get(f"/tasks/{task.id}")
    assert on_the_way["progress"] is not None and on_the_way["progress"] >= 0.6
    page.locator("#task-header .badge", has_text="Success").wait_for(timeout=30_000)
    expect(bar).to_have_count(0)
    assert page.evaluate("window.stillTheSamePage") is True, "the page was reloaded"
    assert Task.objects.get(pk=task.id).progress == 0.9, "the last report stays on the task"
    page.close()
