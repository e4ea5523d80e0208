"""Refresh the console screenshots in docs/screenshots/ from a running instance.

    .venv/bin/python scripts/screenshots.py [--url http://127.0.0.1:8000] [--password ...]

Logs in as ``admin`` (password from SIMDECK_HOME/admin-password.txt unless
given) and photographs the main pages with Debian's Chromium.
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

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{args.url}/accounts/login/")
        page.screenshot(path=args.out / "login.png")
        page.fill("#id_username", args.user)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url("**/tasks/")
        page.screenshot(path=args.out / "tasks.png", full_page=True)
        first = page.locator("#task-rows a").first
        if first.count():
            first.click()
            page.wait_for_load_state()
            page.screenshot(path=args.out / "task.png", full_page=True)
        page.goto(f"{args.url}/machine-groups/")
        page.screenshot(path=args.out / "machine-groups.png", full_page=True)
        page.goto(f"{args.url}/statuses/")
        page.screenshot(path=args.out / "statuses.png")
        browser.close()
    print(f"Screenshots written to {args.out}")


if __name__ == "__main__":
    main()
