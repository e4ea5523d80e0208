"""The console in a real browser: Debian's Chromium, driven by Playwright,
against pytest-django's live server (a real server on the test database).

Tasks are made through the services and moved with ``lifecycle.transition``;
no machine runs. Skipped when /usr/bin/chromium is not installed.
"""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from tasks_app import lifecycle, live, services
from tasks_app.lifecycle import Status
from tasks_app.models import MachineGroup, Task
from tasks_app.testing.browser import CHROMIUM, launch
from tests.client_fixtures import stop

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's Chromium (/usr/bin/chromium) is not installed"
    ),
]

HAPPY = [Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread for as
    # long as the browser lives; the ORM calls the tests (and the database
    # flush between them) make meanwhile are ordinary blocking ones.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = launch(p)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server, alice, monkeypatch, no_broker):
    # Live pushes go through async_to_sync, which refuses to run beside Playwright's loop.
    monkeypatch.setattr(live, "task_changed", lambda *args, **kwargs: None)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    log_in(page, live_server.url)
    page.wait_for_url(re.compile(r".*/tasks/$"))
    yield page
    context.close()


def make_task(owner, group, to=(Status.SUBMITTED,), metadata=None):
    task = Task.objects.create(
        owner=owner, project=group.project, machine_group=group, simulator="commands", metadata=metadata or {}
    )
    for status in to:
        lifecycle.transition(task, status, reason=f"to {status.value}")
    return task


def test_filtering_the_table_updates_rows_and_the_address(page, live_server, alice, group):
    queued = make_task(alice, group)
    done = make_task(alice, group, to=HAPPY)
    page.goto(f"{live_server.url}/tasks/")
    rows = page.locator("#task-rows")
    assert queued.id in rows.inner_text() and done.id in rows.inner_text()
    page.select_option("#f-status", "success")
    page.wait_for_url(re.compile(r".*status=success.*"))
    # expect() polls without eval, which the content security policy forbids.
    expect(page.locator("#task-rows")).not_to_contain_text(queued.id)
    assert done.id in rows.inner_text()
    page.go_back()
    expect(page.locator("#task-rows")).to_contain_text(queued.id)
    assert "status=success" not in page.url


def test_opening_a_task_shows_its_guidance(page, live_server, alice, group):
    task = make_task(alice, group)
    page.goto(f"{live_server.url}/tasks/")
    page.click(f"text={task.id}")
    page.wait_for_url(re.compile(rf".*/tasks/{task.id}/$"))
    header = page.locator("#task-header")
    assert lifecycle.GUIDANCE[Status.SUBMITTED].what_happened in header.inner_text()
    assert "has not been started" in header.inner_text()


def test_editing_metadata_inline(page, live_server, alice, group):
    task = make_task(alice, group, metadata={"case": "dam"})
    page.goto(f"{live_server.url}/tasks/{task.id}/")
    editor = page.locator("#metadata")
    editor.get_by_label("Key").fill("note")
    editor.get_by_label("Value").fill("<script>alert(1)</script>")
    editor.get_by_role("button", name="Add").click()
    expect(page.locator("#metadata")).to_contain_text("<script>alert(1)</script>")
    editor.get_by_role("link", name="Edit case").click()
    page.locator("#metadata tr.editing input[name=value]").fill("")
    page.locator("#metadata tr.editing").get_by_role("button", name="Save").click()
    page.wait_for_selector("#metadata .field-error")
    assert "cannot be blank" in page.locator("#metadata").inner_text()
    task.refresh_from_db()
    assert task.metadata == {"case": "dam", "note": "<script>alert(1)</script>"}


def test_killing_a_queued_task_changes_its_badge(page, live_server, alice, group):
    task = make_task(alice, group)
    page.goto(f"{live_server.url}/tasks/{task.id}/")
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill task").click()
    expect(page.locator("#task-header .badge")).to_contain_text("Killed")
    assert "killed before it ran" in page.locator("#task-header").inner_text()
    task.refresh_from_db()
    assert task.status == Status.KILLED


def test_terminating_a_group_after_confirming(page, live_server, alice, group):
    services.start_group(group)
    queued = make_task(alice, group)
    page.goto(f"{live_server.url}/machine-groups/lab/")
    page.get_by_role("link", name="Terminate…").click()
    assert "Machine Terminated in Queue" in page.content()
    page.get_by_role("button", name="Terminate lab").click()
    page.wait_for_url(re.compile(r".*/machine-groups/lab/$"))
    assert "Terminating" in page.locator("main").inner_text()
    group.refresh_from_db()
    queued.refresh_from_db()
    assert group.state == MachineGroup.State.TERMINATING and queued.status == Status.ZOMBIE


def test_the_table_is_usable_on_a_phone(browser, live_server, page, alice, group):
    make_task(alice, group)
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"{live_server.url}/tasks/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, "the page scrolls sideways on a phone"


def test_a_bulk_kill_previews_then_kills_the_selected_rows(page, live_server, alice, group):
    a, b, c = (make_task(alice, group) for _ in range(3))
    page.goto(f"{live_server.url}/tasks/")
    page.get_by_label(f"Select {a.id}").check()
    page.get_by_label(f"Select {b.id}").check()
    page.get_by_role("button", name="Preview…").click()
    page.wait_for_selector("#bulk-preview .bulk-preview")
    assert "2 tasks selected" in page.locator("#bulk-preview").inner_text()
    page.get_by_role("button", name="Kill 2 tasks").click()
    page.wait_for_selector(".notice-success")
    statuses = [Task.objects.get(pk=t.pk).status for t in (a, b, c)]
    assert statuses == [Status.KILLED, Status.KILLED, Status.SUBMITTED]


def log_in(page, base_url: str) -> None:
    """Log alice in through the console's login form."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "wonderland-42")
    page.click("button[type=submit]")


def running_task(alice, alice_key, client_for, command: str, timeout: float):
    """A task of ``command`` on a new group of the stack, once it has started."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    import simdeck
    from tests.helpers import ROOT, wait_for

    # The web server checks with the production hashers, not the tests' fast one.
    hasher = PBKDF2PasswordHasher()
    alice.password = hasher.encode("wonderland-42", hasher.salt())
    alice.save(update_fields=["password"])
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=ROOT / "examples" / "commands-mesh-solve", commands=[command], on=mg
    )
    wait_for(
        lambda: Task.objects.get(pk=task.id).status == Status.STARTED, timeout, message="the task to start"
    )
    return task


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_running_tasks_page_follows_its_log_and_status_without_reloading(
    browser, stack, alice, alice_key, client_for
):
    task = running_task(
        alice, alice_key, client_for, "sleep 2; for i in $(seq 1 40); do echo tick-$i; sleep 0.1; done", 30
    )
    page = browser.new_page()
    log_in(page, stack.url)
    page.goto(f"{stack.url}/tasks/{task.id}/")
    page.evaluate("window.stillTheSamePage = true")
    expect(page.locator("#log-lines")).to_contain_text("tick-20", timeout=30_000)
    page.locator("#task-header .badge", has_text="Success").wait_for(timeout=30_000)
    # The timeline and the path on the diagram follow the status too.
    expect(page.locator("#task-timeline tbody")).to_contain_text("Finalizing")
    expect(page.locator("#task-timeline tbody tr").last).to_contain_text("Success")
    expect(page.locator("#task-timeline .phase-legend")).to_contain_text("Computing")
    assert page.evaluate("window.stillTheSamePage") is True, "the page was reloaded"
    text = page.locator("#log-lines").text_content()
    ticks = re.findall(r"tick-(\d+)", text)
    assert ticks == [str(i) for i in range(1, len(ticks) + 1)], "lines arrive in order, none twice"
    page.close()


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_flood_of_log_lines_keeps_the_page_to_its_last_lines_and_the_table_follows(
    browser, stack, alice, alice_key, client_for
):
    from tasks_app.sockets.consumers import PAGE_LINES

    until_stopped = "while [ ! -f stop ]; do sleep 0.2; done"
    task = running_task(
        alice, alice_key, client_for, f"sleep 4; seq -f 'flood-%g' 1 12000; {until_stopped}", 60
    )
    context = browser.new_context()
    log_page = context.new_page()
    log_in(log_page, stack.url)
    table = context.new_page()
    table.goto(f"{stack.url}/tasks/")
    expect(table.locator(f"#status-{task.id}")).to_contain_text("In Progress")
    log_page.goto(f"{stack.url}/tasks/{task.id}/")

    expect(log_page.locator("#log-lines")).to_contain_text("flood-12000", timeout=60_000)
    expect(log_page.locator("#log-hidden")).to_contain_text("Earlier lines are hidden")
    shown = [int(n) for n in re.findall(r"flood-(\d+)", log_page.locator("#log-lines").text_content())]
    assert len(shown) <= PAGE_LINES
    assert shown == list(range(12001 - len(shown), 12001)), "the last lines, in order, none twice"
    # All of it can be downloaded while the task runs: read from its machine.
    link = log_page.locator("#logs a[download]", has_text="stdout")
    download = log_page.request.get(stack.url + link.get_attribute("href"))
    assert download.ok and "-stdout-so-far.txt" in download.headers["content-disposition"]
    assert download.text().splitlines() == [f"flood-{i}" for i in range(1, 12001)]
    filtered = log_page.request.get(stack.url + link.get_attribute("href") + "?q=flood-1199")
    assert filtered.text().splitlines() == ["flood-1199", *(f"flood-1199{i}" for i in range(10))]
    stop(stack, task.id)
    # The table's row follows the task to its end without a reload.
    expect(table.locator(f"#status-{task.id}")).to_contain_text("Success", timeout=60_000)
    context.close()
