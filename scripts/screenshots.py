"""Refresh the console screenshots in docs/screenshots/ from a running instance.

    .venv/bin/python scripts/screenshots.py [--url http://127.0.0.1:8000] [--password ...]

Logs in as ``admin`` (password from SIMDECK_HOME/admin-password.txt unless
given) and photographs the main pages with Debian's Chromium. The task page
shown is the most recent failed task if there is one (it shows the most:
guidance, error detail, logs), else the most recent task.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    home = Path(os.environ.get("SIMDECK_HOME", ROOT / ".simdeck"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    password = args.password or (home / "admin-password.txt").read_text().strip()
    args.out.mkdir(parents=True, exist_ok=True)
    url = args.url.rstrip("/")

    def shot(page, name: str, full: bool = True) -> None:
        page.wait_for_load_state("networkidle")
        page.screenshot(path=args.out / f"{name}.png", full_page=full)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/accounts/login/")
        shot(page, "login", full=False)
        page.fill("#id_username", args.user)
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
    print(f"Screenshots written to {args.out}")


if __name__ == "__main__":
    main()
