"""Team review: comments (Markdown, sanitized), the review state, the audit trail on the
task page, the review column and filter of the tasks table, the API, and a project's
activity feed.

People: alice is the project's maintainer, bob a member, vera a viewer, otto an outsider.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from tasks_app import access, lifecycle, review, services
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, APIKey, Comment, Membership, Role, Task

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def team(alice, bob, django_user_model):
    project = access.new_project(alice, "team")
    vera = django_user_model.objects.create_user("vera", password="viewer-pass-42")
    otto = django_user_model.objects.create_user("otto", password="outsider-pass-42")
    Membership.objects.create(project=project, user=bob, role=Role.MEMBER, added_by=alice)
    Membership.objects.create(project=project, user=vera, role=Role.VIEWER, added_by=alice)
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab", project="team")
    return {"project": project, "group": group, "alice": alice, "bob": bob, "vera": vera, "otto": otto}


def make_task(team, owner=None, **fields) -> Task:
    task = Task.objects.create(
        owner=owner or team["alice"],
        project=team["project"],
        machine_group=team["group"],
        simulator="commands",
        parameters={"commands": ["echo hi"]},
        **fields,
    )
    lifecycle.transition(task, Status.SUBMITTED, reason="queued")
    return task


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# -- comments in the console ------------------------------------------------------


def test_a_member_comments_and_the_markdown_is_rendered_safely(team):
    task = make_task(team)
    bob = client_of(team["bob"])
    body = f"**Looks off** near step 3, see [the notes](https://example.org/notes).\n\n{XSS}"
    answer = bob.post(reverse("task-comments", args=[task.id]), {"body": body}, HTTP_HX_REQUEST="true")
    assert answer.status_code == 200
    html = answer.content.decode()
    assert "<strong>Looks off</strong>" in html
    assert '<a href="https://example.org/notes" rel="nofollow noopener noreferrer">the notes</a>' in html
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    comment = Comment.objects.get(task=task)
    assert comment.author == team["bob"] and comment.body == body
    event = Activity.objects.get(task=task, kind="commented")
    assert event.actor == team["bob"] and event.project == team["project"]


def test_a_comment_without_text_is_refused_with_the_form_again(team):
    task = make_task(team)
    answer = client_of(team["bob"]).post(
        reverse("task-comments", args=[task.id]), {"body": "   "}, HTTP_HX_REQUEST="true"
    )
    assert answer.status_code == 422
    assert "A comment needs some text." in answer.content.decode()
    assert not Comment.objects.exists()


def test_without_htmx_a_comment_redirects_back_to_the_comments(team):
    task = make_task(team)
    answer = client_of(team["bob"]).post(reverse("task-comments", args=[task.id]), {"body": "plain"})
    assert answer.status_code == 302
    assert answer["Location"] == reverse("task-detail", args=[task.id]) + "#comments"


def test_without_scripts_the_comments_have_pages_of_their_own(team):
    task = make_task(team)
    comment = Comment.objects.create(task=task, author=team["bob"], body="plain *text*")
    bob = client_of(team["bob"])
    listing = bob.get(reverse("task-comments", args=[task.id])).content.decode()
    assert "<title>Comments" in listing and "<em>text</em>" in listing
    editor = bob.get(reverse("comment-edit", args=[task.id, comment.pk])).content.decode()
    assert "<title>Comments" in editor and "Edit comment" in editor and "plain *text*" in editor
    refused = bob.post(reverse("task-comments", args=[task.id]), {"body": ""})
    assert refused.status_code == 422
    assert (
        "<title>Comments" in refused.content.decode()
        and "A comment needs some text." in refused.content.decode()
    )
    wrong = bob.post(reverse("task-review", args=[task.id]), {"state": "nope"}, follow=True)
    assert "Unknown review state" in wrong.content.decode()


def test_authors_edit_and_delete_their_own_comments_only(team):
    task = make_task(team)
    comment = Comment.objects.create(task=task, author=team["bob"], body="first version")
    edit = reverse("comment-edit", args=[task.id, comment.pk])
    delete = reverse("comment-delete", args=[task.id, comment.pk])
    alice = client_of(team["alice"])  # a maintainer, but not the author

    assert alice.post(edit, {f"c{comment.pk}-body": "hijacked"}).status_code == 403
    assert alice.post(delete).status_code == 403

    bob = client_of(team["bob"])
    form = bob.get(edit, HTTP_HX_REQUEST="true")
    assert form.status_code == 200 and "first version" in form.content.decode()
    saved = bob.post(edit, {f"c{comment.pk}-body": "second *version*"}, HTTP_HX_REQUEST="true")
    assert saved.status_code == 200 and "<em>version</em>" in saved.content.decode()
    comment.refresh_from_db()
    assert comment.body == "second *version*" and comment.edited_at is not None
    edited = Activity.objects.get(kind="comment-edited")
    assert edited.data == {"comment": comment.pk, "before": "first version", "after": "second *version*"}

    assert bob.post(delete, HTTP_HX_REQUEST="true").status_code == 200
    assert not Comment.objects.exists()
    assert Activity.objects.filter(kind="comment-deleted", actor=team["bob"]).exists()


def test_a_viewer_reads_comments_but_cannot_write_or_review(team):
    task = make_task(team)
    Comment.objects.create(task=task, author=team["bob"], body="visible to viewers")
    vera = client_of(team["vera"])
    page = vera.get(reverse("task-detail", args=[task.id])).content.decode()
    assert "visible to viewers" in page
    assert 'name="body"' not in page and reverse("task-review", args=[task.id]) not in page
    assert vera.post(reverse("task-comments", args=[task.id]), {"body": "hi"}).status_code == 403
    assert vera.post(reverse("task-review", args=[task.id]), {"state": "approved"}).status_code == 403
    assert not Comment.objects.filter(author=team["vera"]).exists()
    assert Task.objects.get(pk=task.pk).review_state == Task.Review.UNREVIEWED


def test_an_outsider_gets_404_for_comments_review_and_feed(team):
    task = make_task(team)
    comment = Comment.objects.create(task=task, author=team["bob"], body="secret")
    otto = client_of(team["otto"])
    for url in (
        reverse("task-comments", args=[task.id]),
        reverse("comment-edit", args=[task.id, comment.pk]),
        reverse("project-activity", args=[team["project"].pk]),
    ):
        assert otto.get(url).status_code == 404, url
    assert otto.post(reverse("task-comments", args=[task.id]), {"body": "x"}).status_code == 404
    assert otto.post(reverse("task-review", args=[task.id]), {"state": "approved"}).status_code == 404
    assert otto.post(reverse("comment-delete", args=[task.id, comment.pk])).status_code == 404
    assert Comment.objects.count() == 1


def test_a_comment_id_under_another_task_is_not_found(team):
    first, second = make_task(team), make_task(team)
    comment = Comment.objects.create(task=first, author=team["bob"], body="on the first")
    bob = client_of(team["bob"])
    assert bob.post(reverse("comment-delete", args=[second.id, comment.pk])).status_code == 404
    assert Comment.objects.filter(pk=comment.pk).exists()


def test_comments_need_the_csrf_token(team):
    task = make_task(team)
    client = Client(enforce_csrf_checks=True)
    client.force_login(team["bob"])
    assert client.post(reverse("task-comments", args=[task.id]), {"body": "x"}).status_code == 403
    assert not Comment.objects.exists()


# -- review state ----------------------------------------------------------------


def test_setting_the_review_state_records_who_and_when_and_the_audit_trail(team):
    task = make_task(team)
    bob = client_of(team["bob"])
    answer = bob.post(
        reverse("task-review", args=[task.id]), {"state": "needs-attention"}, HTTP_HX_REQUEST="true"
    )
    assert answer.status_code == 200
    html = answer.content.decode()
    assert "Needs attention" in html and "set by <strong>bob</strong>" in html
    task.refresh_from_db()
    assert task.review_state == "needs-attention" and task.reviewed_by == team["bob"]
    assert task.reviewed_at is not None
    event = Activity.objects.get(kind="reviewed", task=task)
    assert event.data == {"before": "unreviewed", "after": "needs-attention"}

    page = bob.get(reverse("task-detail", args=[task.id])).content.decode()
    assert "marked task" in page and "<del>unreviewed</del> → <ins>needs-attention</ins>" in page


def test_an_unknown_review_state_is_refused_with_the_choices(team):
    task = make_task(team)
    answer = client_of(team["bob"]).post(
        reverse("task-review", args=[task.id]), {"state": "great"}, HTTP_HX_REQUEST="true"
    )
    assert answer.status_code == 422
    assert "choose one of: unreviewed, approved, needs-attention" in answer.content.decode()


def test_the_task_page_shows_metadata_edits_with_before_and_after(team):
    task = make_task(team, metadata={"case": "dambreak"})
    alice = client_of(team["alice"])
    alice.post(reverse("task-metadata", args=[task.id]), {"original": "case", "key": "case", "value": "wave"})
    page = alice.get(reverse("task-detail", args=[task.id])).content.decode()
    assert 'id="audit"' in page
    assert "<code>case</code>: <del>dambreak</del> → <ins>wave</ins>" in page


def test_the_task_page_keeps_its_queries_constant_with_many_comments(team, django_assert_max_num_queries):
    task = make_task(team)
    alice = client_of(team["alice"])
    url = reverse("task-detail", args=[task.id])
    Comment.objects.create(task=task, author=team["bob"], body="one")
    alice.get(url)  # warm the session
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        alice.get(url)
    for i in range(15):
        Comment.objects.create(task=task, author=team["vera"] if i % 2 else team["bob"], body=f"c{i}")
        services.set_metadata(task, {f"k{i}": "v"}, actor=team["alice"], merge=True)
    with django_assert_max_num_queries(len(one.captured_queries)):
        page = alice.get(url).content.decode()
    assert "c14" in page


# -- the tasks table ----------------------------------------------------------------


def test_the_table_shows_review_and_comment_count_and_filters_by_review(team, django_assert_max_num_queries):
    approved, flagged, plain = make_task(team), make_task(team), make_task(team)
    review.set_review(approved, team["bob"], "approved")
    review.set_review(flagged, team["bob"], "needs-attention")
    for i in range(3):
        Comment.objects.create(task=flagged, author=team["bob"], body=f"note {i}")
    alice = client_of(team["alice"])
    url = reverse("task-list")

    html = alice.get(url, {"clear": 1}).content.decode()
    assert '<span class="review review-approved">Approved</span>' in html
    assert '<span class="review review-needs-attention">Needs attention</span>' in html
    assert ">3 comments</a>" in html

    html = alice.get(url, {"review": "needs-attention"}).content.decode()
    assert flagged.id in html and approved.id not in html and plain.id not in html
    html = alice.get(url, {"review": "unreviewed"}).content.decode()
    assert plain.id in html and flagged.id not in html
    assert "Select a valid choice" in alice.get(url, {"review": "bogus"}).content.decode()

    alice.get(url, {"clear": 1})
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        alice.get(url, {"clear": 1})
    for _ in range(20):
        task = make_task(team)
        Comment.objects.create(task=task, author=team["bob"], body="more")
    with django_assert_max_num_queries(len(few.captured_queries)):
        alice.get(url, {"clear": 1})


# -- the API -----------------------------------------------------------------------


def api_for(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {APIKey.issue(user, 'tests')[1]}"})


def test_the_api_lists_and_adds_comments(team):
    task = make_task(team)
    bob = api_for(team["bob"])
    url = f"/api/v1/tasks/{task.id}/comments"
    answer = bob.post(url, {"body": f"*ok* {XSS}"}, content_type="application/json")
    assert answer.status_code == 201, answer.content
    created = answer.json()
    assert created["author"] == "bob" and created["body"] == f"*ok* {XSS}"
    assert created["body_html"].startswith("<p><em>ok</em> &lt;script&gt;")
    listed = api_for(team["vera"]).get(url).json()
    assert [c["id"] for c in listed] == [created["id"]]


def test_the_api_refuses_comments_from_viewers_and_hides_tasks_from_outsiders(team):
    task = make_task(team)
    url = f"/api/v1/tasks/{task.id}/comments"
    refused = api_for(team["vera"]).post(url, {"body": "hi"}, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert api_for(team["otto"]).get(url).status_code == 404
    empty = api_for(team["bob"]).post(url, {"body": ""}, content_type="application/json")
    assert empty.status_code == 400 and empty.json()["field"] == "body"


def test_the_api_sets_the_review_state(team):
    task = make_task(team)
    url = f"/api/v1/tasks/{task.id}/review"
    answer = api_for(team["bob"]).post(url, {"state": "approved"}, content_type="application/json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["state"] == "approved" and body["reviewed_by"] == "bob" and body["reviewed_at"]
    wrong = api_for(team["bob"]).post(url, {"state": "fine"}, content_type="application/json")
    assert wrong.status_code == 400 and "needs-attention" in wrong.json()["message"]
    assert (
        api_for(team["vera"]).post(url, {"state": "approved"}, content_type="application/json").status_code
        == 403
    )
    assert (
        api_for(team["otto"]).post(url, {"state": "approved"}, content_type="application/json").status_code
        == 404
    )


def test_the_api_shows_and_filters_tasks_by_review_state(team):
    approved, plain = make_task(team), make_task(team)
    review.set_review(approved, team["bob"], "approved")
    api = api_for(team["vera"])
    rows = api.get("/api/v1/tasks", {"review": "approved"}).json()["items"]
    assert [r["id"] for r in rows] == [approved.id] and rows[0]["review_state"] == "approved"
    rows = api.get("/api/v1/tasks", {"review": "unreviewed"}).json()["items"]
    assert [r["id"] for r in rows] == [plain.id]
    wrong = api.get("/api/v1/tasks", {"review": "done"})
    assert wrong.status_code == 400 and wrong.json()["field"] == "review"


# -- the project's activity feed ----------------------------------------------------


def test_the_feed_lists_what_happened_newest_first_with_who(team):
    task = make_task(team)
    review.add_comment(task, team["bob"], "first look")
    review.set_review(task, team["alice"], "approved")
    services.kill_task(task, actor=team["alice"])
    broken = make_task(team, owner=team["bob"])
    for status in (Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.FAILED):
        lifecycle.transition(broken, status, reason="exit code 1")
    url = reverse("project-activity", args=[team["project"].pk])
    html = client_of(team["vera"]).get(url).content.decode()
    order = [
        html.index(f'Task <a class="mono" href="/tasks/{broken.id}/">{broken.id}</a> failed'),
        html.index(f'<strong>alice</strong> killed <a class="mono" href="/tasks/{task.id}/">'),
        html.index("<strong>alice</strong> reviewed"),
        html.index("<strong>bob</strong> commented"),
    ]
    assert order == sorted(order)


def test_the_feed_pages_without_repeating_and_filters_by_kind(team):
    from tasks_app.views import review as feed

    task = make_task(team)
    for i in range(feed.FEED_PAGE + 5):
        review.add_comment(task, team["bob"], f"comment number {i}")
    review.set_review(task, team["bob"], "approved")
    vera = client_of(team["vera"])
    url = reverse("project-activity", args=[team["project"].pk])
    seen = []
    answer = vera.get(url, {"kind": "commented"})
    while True:
        html = answer.content.decode()
        seen += [int(n) for n in re.findall(r"comment number (\d+)</span>", html)]
        assert "reviewed" not in html.split('id="feed"')[1].split("</ol>")[0]
        if 'rel="next"' not in html:
            break
        cursor = html.split("?before=")[1].split("&amp;")[0]
        answer = vera.get(url, {"kind": "commented", "before": cursor}, HTTP_HX_REQUEST="true")
        assert answer.status_code == 200
    assert sorted(seen) == list(range(feed.FEED_PAGE + 5)) and len(seen) == len(set(seen))
    assert seen[0] == feed.FEED_PAGE + 4  # newest first
