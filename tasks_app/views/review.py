"""Team review on the task page (comments, review state, audit trail) and a project's activity feed."""

from __future__ import annotations

import base64
import datetime as dt

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tasks_app import access, review
from tasks_app.models import Activity, Comment, Task
from tasks_app.services import Refused
from tasks_app.views.common import page_or_partial, wants_partial

FEED_PAGE = 50
AUDIT_SHOWN = 20
# How each kind of event reads in the feed; kinds not named here show their message only.
KIND_LABELS = {
    "submitted": "submitted",
    "failed": "failed",
    "killed": "killed",
    "metadata-edited": "edited metadata",
    "reviewed": "reviewed",
    "commented": "commented",
    "comment-edited": "edited a comment",
    "comment-deleted": "deleted a comment",
    "group-terminated": "terminated a machine group",
    "role-changed": "changed a role",
    "member-added": "added a member",
    "member-removed": "removed a member",
    "resubmitted": "resubmitted",
    "budget-set": "set the monthly budget",
    "budget-removed": "removed the monthly budget",
}


class CommentForm(forms.Form):
    body = forms.CharField(
        label="Comment",
        max_length=review.MAX_COMMENT_CHARS,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Markdown: **bold**, _italic_, `code`, lists, [links](https://…).",
        error_messages={"required": "A comment needs some text."},
    )


# -- what the task page shows ------------------------------------------------------


def review_context(
    user, task: Task, *, form: CommentForm | None = None, allowed: set[str] | None = None
) -> dict:
    """The review card, the comments and the audit trail of ``task``, in a fixed number of queries."""
    if allowed is None:
        allowed = access.allowed(user, task)
    audit_trail = list(
        Activity.objects.filter(task=task, actor__isnull=False)
        .select_related("actor")
        .order_by("-at", "-id")[:AUDIT_SHOWN]
    )
    return {
        "task": task,
        "can_review": "review" in allowed,
        "can_comment": "comment" in allowed,
        "review_states": Task.Review.choices,
        "comments": list(review.comments_of(task)),
        "comment_form": form or CommentForm(),
        "editing": None,
        "audit_trail": audit_trail,
        "project_feed_url": reverse("project-activity", args=[task.project_id]),
    }


def _task_page(task: Task, anchor: str) -> HttpResponse:
    return redirect(reverse("task-detail", args=[task.id]) + f"#{anchor}")


def _comments_answer(request: HttpRequest, context: dict, *, status: int = 200) -> HttpResponse:
    """The comments partial for htmx; without scripts, a page of their own holding it."""
    template = "tasks/task_review.html#comments" if wants_partial(request) else "tasks/task_comments.html"
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


# -- comments --------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def task_comments(request: HttpRequest, task_id: str) -> HttpResponse:
    """The comments (GET), or a new one (POST)."""
    task = access.task_for(request.user, task_id)
    if request.method == "GET":
        return _comments_answer(request, review_context(request.user, task))
    form = CommentForm(request.POST)
    if form.is_valid():
        try:
            review.add_comment(task, request.user, form.cleaned_data["body"])
        except Refused as exc:
            form.add_error("body", str(exc))
    if form.errors:
        return _comments_answer(request, review_context(request.user, task, form=form), status=422)
    if not request.htmx:
        return _task_page(task, "comments")
    return _comments_answer(request, review_context(request.user, task))


def _comment(request: HttpRequest, task_id: str, comment_id: int) -> Comment:
    task = access.task_for(request.user, task_id)
    comment = get_object_or_404(Comment.objects.select_related("author"), pk=comment_id, task=task)
    comment.task = task
    return comment


@login_required
@require_http_methods(["GET", "POST"])
def comment_edit(request: HttpRequest, task_id: str, comment_id: int) -> HttpResponse:
    """The comment in an editor (GET), or its new text (POST)."""
    comment = _comment(request, task_id, comment_id)
    task = comment.task
    if request.method == "GET":
        review.require_author(comment, request.user, "edit")
        form = CommentForm(initial={"body": comment.body}, prefix=f"c{comment.pk}")
        context = review_context(request.user, task) | {"edit_form": form, "editing": comment.pk}
        return _comments_answer(request, context)
    form = CommentForm(request.POST, prefix=f"c{comment.pk}")
    if form.is_valid():
        try:
            review.edit_comment(comment, request.user, form.cleaned_data["body"])
        except Refused as exc:
            form.add_error("body", str(exc))
    if form.errors:
        context = review_context(request.user, task) | {"edit_form": form, "editing": comment.pk}
        return _comments_answer(request, context, status=422)
    if not request.htmx:
        return _task_page(task, f"comment-{comment.pk}")
    return _comments_answer(request, review_context(request.user, task))


@login_required
@require_POST
def comment_delete(request: HttpRequest, task_id: str, comment_id: int) -> HttpResponse:
    comment = _comment(request, task_id, comment_id)
    task = comment.task
    review.delete_comment(comment, request.user)
    if not request.htmx:
        return _task_page(task, "comments")
    return _comments_answer(request, review_context(request.user, task))


# -- review state ------------------------------------------------------------------


@login_required
@require_POST
def task_review(request: HttpRequest, task_id: str) -> HttpResponse:
    """Set the review state; answers the review card."""
    task = access.task_for(request.user, task_id)
    status = 200
    error = ""
    try:
        review.set_review(task, request.user, request.POST.get("state", ""))
    except Refused as exc:
        status, error = 422, str(exc)
    if not request.htmx:
        if error:
            messages.error(request, error)
        return _task_page(task, "review")
    task.refresh_from_db()
    context = review_context(request.user, task) | {"review_error": error}
    return page_or_partial(request, "tasks/task_review.html", "review", context, status=status)


# -- a project's activity ------------------------------------------------------------


def _encode(entry: Activity) -> str:
    return base64.urlsafe_b64encode(f"{entry.at.isoformat()}|{entry.pk}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[dt.datetime, int] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, pk = raw.split("|", 1)
        moment = parse_datetime(at)
        return (moment, int(pk)) if moment else None
    except (ValueError, UnicodeDecodeError):
        return None


@login_required
@require_GET
def project_activity(request: HttpRequest, ref: str) -> HttpResponse:
    """What happened in a project, newest first, in pages (keyset on time and id, no OFFSET)."""
    project = access.project_for(request.user, ref)
    access.require(request.user, "view", project)
    entries = (
        Activity.objects.filter(project=project)
        .select_related("actor", "task", "group")
        .order_by("-at", "-id")
    )
    kind = request.GET.get("kind", "")
    if kind in KIND_LABELS:
        entries = entries.filter(kind=kind)
    else:
        kind = ""
    before = _decode(request.GET.get("before", ""))
    if before:
        at, pk = before
        entries = entries.filter(Q(at__lt=at) | Q(at=at, id__lt=pk))
    rows = list(entries[: FEED_PAGE + 1])
    more = len(rows) > FEED_PAGE
    rows = rows[:FEED_PAGE]
    context = {
        "project": project,
        "entries": rows,
        "labels": KIND_LABELS,
        "kind": kind,
        "kinds": sorted(KIND_LABELS.items(), key=lambda kv: kv[1]),
        "next_cursor": _encode(rows[-1]) if more else None,
        "is_first": before is None,
    }
    return page_or_partial(request, "projects/project_activity.html", "feed", context)
