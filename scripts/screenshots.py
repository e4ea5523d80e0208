"""Refresh the console screenshots in docs/screenshots/.

    .venv/bin/python scripts/screenshots.py --demo         # make screenshots
    .venv/bin/python scripts/screenshots.py [--url http://127.0.0.1:8000] [--password ...]

``--demo`` starts a private instance the way the benchmarks do (a database
of its own, never an instance's data), runs a small lab's day on it (real
tasks of the commands example that succeed, fail, run and wait, metadata,
a review and a comment), photographs it and stops it. Otherwise it logs in
to a running instance as ``admin`` (password from
SIMDECK_HOME/admin-password.txt unless given).

The task page shown is the most recent failed task if there is one (it
shows the most: guidance, error detail, logs), else the most recent task.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent


DEMO_USER = "ada"
DEMO_PROJECT = "heat-transfer"
EXAMPLE = ROOT / "examples" / "commands-mesh-solve"
SOLVE = ["python make_mesh.py", "python solve.py"]
# Solves the same plate again and again: real CPU and memory for the resource charts.
LONG_RUN = ["python make_mesh.py", "for i in $(seq 1 300); do echo run $i; python solve.py; done"]


@contextlib.contextmanager
def demo_instance() -> Iterator[tuple[str, str, str]]:
    """A private running instance with a lab's tasks on it: yields its URL, a user and a password."""
    os.environ.setdefault("SIMDECK_BENCH_DB", "simdeck_screenshots")
    os.environ.setdefault("SIMDECK_BENCH_HOME", str(ROOT / ".simdeck-screenshots"))
    from bench.harness import Stack, setup_django

    setup_django()
    from django.core.management import call_command

    call_command("flush", interactive=False, verbosity=0)  # the same pictures on every run

    sampling = {"SIMDECK_RESOURCE_SAMPLE_SECONDS": "1"}  # a chart with points after seconds, not minutes
    with (
        Stack(machines=1, username=DEMO_USER, group_name="lab-cpu", env=sampling) as stack,
        tempfile.TemporaryDirectory() as tmp,
    ):
        password = "demo-" + os.urandom(6).hex()
        stack.user.set_password(password)
        stack.user.save(update_fields=["password"])
        os.environ |= {
            "SIMDECK_API_URL": stack.url,
            "SIMDECK_API_KEY": stack.api_key,
            "SIMDECK_CONFIG": str(Path(tmp) / "client.json"),
        }
        os.chdir(tmp)
        run_a_lab_day(stack.group_name)
        yield stack.url, DEMO_USER, password


def run_a_lab_day(group: str) -> None:
    """Real tasks through the client: some succeed, one fails, one runs, two wait; a review."""
    import simdeck
    from tasks_app import review
    from tasks_app.models import Task

    sim = simdeck.simulators.Commands()

    def run(commands: list[str], **metadata: str):
        return sim.run(EXAMPLE, commands=commands, on=group, project=DEMO_PROJECT, metadata=metadata)

    done = [run(SOLVE, mesh="41x41", sweeps="2000", case=f"plate-{i}") for i in range(1, 4)]
    failed = run(["python solve.py"], mesh="none", case="forgot-the-mesh")
    for task in [*done, failed]:
        task.wait(polling_period=0.3, silent_mode=True, download_std_on_completion=False)
    first = Task.objects.select_related("owner").get(pk=done[0].id)
    review.add_comment(first, first.owner, "Centre temperature within **0.4%** of the series solution.")
    review.set_review(first, first.owner, "approved")
    running = run(LONG_RUN, mesh="41x41", case="long-run")
    for i in (1, 2):
        run(LONG_RUN, mesh="81x81", case=f"refined-{i}")
    running.wait_for_status("started", polling_period=0.3, timeout=60)
    time.sleep(10)  # resource samples and log lines to show


def main() -> None:
    home = Path(os.environ.get("SIMDECK_HOME", ROOT / ".simdeck"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="photograph a private demo instance")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))  # the project's packages, from a script in scripts/
    if args.demo:
        with demo_instance() as (url, user, password):
            photograph(url, user, password, args.out)
    else:
        password = args.password or (home / "admin-password.txt").read_text().strip()
        photograph(args.url.rstrip("/"), args.user, password, args.out)
    print(f"Screenshots written to {args.out}")


def photograph(url: str, user: str, password: str, out: Path) -> None:
    """The main pages, logged in as ``user``, on a laptop's screen and the tasks table on a phone's."""

    from tasks_app.testing.browser import launch

    def shot(page, name: str, full: bool = True) -> None:
        page.wait_for_load_state("networkidle")
        page.screenshot(path=out / f"{name}.png", full_page=full)

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/accounts/login/")
        shot(page, "login", full=False)
        page.fill("#id_username", user)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url("**/tasks/")
        shot(page, "tasks")
        page.goto(f"{url}/overview/")
        shot(page, "overview")
        page.goto(f"{url}/tasks/?status=failed-any")
        first = page.locator("#task-rows a.mono").first
        if not first.count():
            page.goto(f"{url}/tasks/")
            first = page.locator("#task-rows a.mono").first
        if first.count():
            first.click()
            page.wait_for_url("**/tasks/*/")
            shot(page, "task")
        page.goto(f"{url}/tasks/?status=started")
        running = page.locator("#task-rows a.mono").first
        if running.count():
            running.click()
            page.wait_for_url("**/tasks/*/")
            page.locator("#log-lines pre").first.wait_for(timeout=20_000)
            shot(page, "task-running")
        page.goto(f"{url}/tasks/?status=submitted")
        queued = page.locator("#task-rows a.mono").first
        if queued.count():
            queued.click()
            page.wait_for_url("**/tasks/*/")
            shot(page, "task-waiting", full=False)
        page.goto(f"{url}/machine-groups/")
        shot(page, "machine-groups")
        group = page.locator("table a").first
        if group.count():
            group.click()
            shot(page, "machine-group")
        page.goto(f"{url}/projects/")
        shot(page, "projects", full=False)
        page.goto(f"{url}/statuses/")
        shot(page, "statuses", full=False)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.context.add_cookies(page.context.cookies())
        phone.goto(f"{url}/tasks/")
        shot(phone, "tasks-phone", full=False)
        browser.close()


if __name__ == "__main__":
    main()
