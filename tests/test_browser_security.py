"""Hostile text in a real browser: markup in metadata, a comment and a log line is shown as
text and runs nothing, and the content security policy holds on every main page without
a single violation (htmx, its WebSocket extension and our scripts all load from this server).

Debian's Chromium driven by Playwright, against pytest-django's live server; skipped when
/usr/bin/chromium is not installed.
"""

from __future__ import annotations

import re

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from playwright.sync_api import expect

from tasks_app import live, review, storage
from tasks_app.lifecycle import Status
from tasks_app.models import Comment, Task
from tests.test_browser import HAPPY, browser, log_in, make_task  # noqa: F401 - the browser fixture
from tests.test_browser import pytestmark as browser_marks

pytestmark = browser_marks

# Each piece would set window.__xss or open a dialog if it ever ran.
PAYLOAD = (
    '<script>window.__xss="script";alert(1)</script>'
    "<img src=x onerror=\"window.__xss='img';alert(2)\">"
    '"><svg onload="window.__xss=\'svg\'">'
)
MARKDOWN_PAYLOAD = f"[click me](javascript:window.__xss='link') {PAYLOAD}"

# Recorded from the first script on every page, before any of ours.
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.fixture
def watched(browser, live_server, alice, monkeypatch, no_broker):  # noqa: F811 - the browser fixture
    """A logged-in page that records dialogs, console errors and CSP violations."""
    monkeypatch.setattr(live, "task_changed", lambda *args, **kwargs: None)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(WATCH)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.dialogs, page.csp_console, page.sockets = [], [], []
    page.on("websocket", lambda ws: page.sockets.append(ws.url))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on(
        "console",
        lambda m: page.csp_console.append(m.text) if "Content Security Policy" in m.text else None,
    )
    log_in(page, live_server.url)
    page.wait_for_url(re.compile(r".*/tasks/$"))
    yield page
    context.close()


def assert_inert(page) -> None:
    assert page.dialogs == [], f"a dialog opened: {page.dialogs}"
    assert page.evaluate("window.__xss") is None, "injected code ran"
    assert page.locator("img[src=x], svg[onload]").count() == 0, "an injected element was created"


def assert_no_violations(page) -> None:
    assert page.evaluate("window.__violations") == [], page.evaluate("window.__violations")
    assert page.csp_console == [], page.csp_console


def visit(page, url: str):
    response = page.goto(url)
    assert response.status == 200, url
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.wait_for_load_state("networkidle")
    return response


def test_markup_in_metadata_a_comment_and_a_log_line_stays_text(watched, live_server, alice, group):
    page = watched
    task = make_task(alice, group, to=HAPPY, metadata={"note": PAYLOAD})
    Comment.objects.create(task=task, author=alice, body=MARKDOWN_PAYLOAD)
    log = f"step 1\n{PAYLOAD}\nstep 2\n".encode()
    default_storage.save(storage.log_name(task.id, "stdout"), ContentFile(log))

    visit(page, f"{live_server.url}/tasks/{task.id}/")
    page.locator("#logs pre").first.wait_for()
    assert PAYLOAD in page.locator("#metadata").inner_text()
    assert PAYLOAD in page.locator("#comments .comment-body").inner_text()
    assert PAYLOAD in page.locator("#logs").inner_text()
    # The javascript: link was not made a link at all.
    assert page.locator("#comments a[href^='javascript']").count() == 0
    assert_inert(page)
    assert_no_violations(page)

    visit(page, f"{live_server.url}/tasks/{task.id}/logs?stream=stdout")
    assert PAYLOAD in page.locator("main").inner_text()
    visit(page, f"{live_server.url}/tasks/?col=note")
    assert PAYLOAD in page.locator("#task-rows").inner_text()
    assert_inert(page)
    assert_no_violations(page)


def test_a_comment_typed_in_the_browser_is_shown_as_text(watched, live_server, alice, group):
    page = watched
    task = make_task(alice, group)
    visit(page, f"{live_server.url}/tasks/{task.id}/")
    page.get_by_label("New comment").fill(f"**careful** {PAYLOAD}")
    page.get_by_role("button", name="Comment", exact=True).click()
    page.wait_for_selector("#comments .comment-body strong")
    body = page.locator("#comments .comment-body")
    assert body.inner_text().startswith("careful ") and PAYLOAD in body.inner_text()
    page.get_by_role("button", name="Approved").click()
    # expect() polls without eval, which the policy forbids.
    expect(page.locator("#review .review")).to_contain_text("Approved")
    assert Task.objects.get(pk=task.pk).review_state == "approved"
    assert_inert(page)
    assert_no_violations(page)
    # The feed shows the comment's excerpt as text too.
    visit(page, f"{live_server.url}/projects/{task.project_id}/activity/")
    assert "commented" in page.locator("#feed").inner_text()
    assert_inert(page)
    assert_no_violations(page)


def test_the_main_pages_load_without_a_policy_violation(watched, live_server, alice, group):
    page = watched
    alice.is_staff = True
    alice.save()
    running = make_task(alice, group, to=(Status.SUBMITTED, Status.PREPARING, Status.STARTED))
    review.set_review(running, alice, "needs-attention")
    for path in (
        "/overview/",
        "/tasks/",
        f"/tasks/{running.id}/",  # opens the live WebSockets (connect-src 'self' must allow ws:)
        f"/tasks/{running.id}/files",
        "/machine-groups/",
        "/machine-groups/lab/",
        "/projects/",
        f"/projects/{running.project_id}/activity/",
        "/statuses/",
        "/account/",
        "/accounts/password/",
        "/people/",
        "/api/v1/docs",
        "/admin/",
    ):
        visit(page, live_server.url + path)
        assert_no_violations(page)
    # The policy let the live task page open its WebSocket to this host (ws: under 'self').
    assert any(url.endswith(f"/ws/tasks/{running.id}/") for url in page.sockets), page.sockets
    # htmx still works under the policy: a filter change swaps the rows.
    visit(page, f"{live_server.url}/tasks/")
    page.select_option("#f-review", "needs-attention")
    page.wait_for_url(re.compile(r".*review=needs-attention.*"))
    assert running.id in page.locator("#task-rows").inner_text()
    assert_no_violations(page)
    # The watch itself works: an inline script added now is refused, and reported.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__xss = 1'; document.body.append(s); }"
    )
    page.wait_for_timeout(200)
    assert page.evaluate("window.__xss") is None
    assert any(v.startswith("script-src") for v in page.evaluate("window.__violations"))
