"""Team review of tasks: comments and the review state, shared by the console and the API.

Each function checks the person's right through :mod:`tasks_app.access`
(members comment and review; a comment is edited or deleted by its author,
or by staff) and records what happened in the audit trail.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from django.utils.text import Truncator

from tasks_app import access, audit, inputs
from tasks_app.models import Comment, Task
from tasks_app.services import Refused

MAX_COMMENT_CHARS = Comment._meta.get_field("body").max_length
REVIEW_STATES = dict(Task.Review.choices)


def _checked_body(body: str) -> str:
    body = inputs.text("body", (body or "").strip())
    if not body:
        raise Refused("A comment needs some text.", field="body")
    if len(body) > MAX_COMMENT_CHARS:
        raise Refused(
            f"A comment may have at most {MAX_COMMENT_CHARS} characters; this one has {len(body)}. "
            "Shorten it, or put long text in a file of the task.",
            field="body",
        )
    return body


def _excerpt(body: str) -> str:
    return Truncator(" ".join(body.split())).chars(120)


def add_comment(task: Task, user, body: str) -> Comment:
    access.require(user, "comment", task)
    body = _checked_body(body)
    with transaction.atomic():
        comment = Comment.objects.create(task=task, author=user, body=body)
        audit.record(
            "commented",
            user,
            f"{user.username} commented on task {task.id}: {_excerpt(body)}",
            task=task,
            comment=comment.pk,
        )
    return comment


def require_author(comment: Comment, user, doing: str) -> None:
    access.require(user, "comment", comment.task)
    if comment.author_id != user.pk and not user.is_staff:
        raise PermissionDenied(f"Only its author can {doing} this comment.")


def edit_comment(comment: Comment, user, body: str) -> Comment:
    require_author(comment, user, "edit")
    body = _checked_body(body)
    if body == comment.body:
        return comment
    before = comment.body
    with transaction.atomic():
        comment.body, comment.edited_at = body, timezone.now()
        comment.save(update_fields=["body", "edited_at"])
        audit.record(
            "comment-edited",
            user,
            f"{user.username} edited a comment on task {comment.task_id}.",
            task=comment.task,
            comment=comment.pk,
            before=before,
            after=body,
        )
    return comment


def delete_comment(comment: Comment, user) -> None:
    require_author(comment, user, "delete")
    with transaction.atomic():
        audit.record(
            "comment-deleted",
            user,
            f"{user.username} deleted a comment on task {comment.task_id}.",
            task=comment.task,
            comment=comment.pk,
            before=comment.body,
            after=None,
        )
        comment.delete()


def set_review(task: Task, user, state: str) -> Task:
    """Set the review state; records who set it and when, and the change in the audit trail."""
    access.require(user, "review", task)
    if state not in REVIEW_STATES:
        choices = ", ".join(REVIEW_STATES)
        raise Refused(f"Unknown review state {state!r}; choose one of: {choices}.", field="state")
    with transaction.atomic():
        locked = Task.objects.select_for_update().only("review_state").get(pk=task.pk)
        before = locked.review_state
        now = timezone.now()
        Task.objects.filter(pk=task.pk).update(review_state=state, reviewed_by=user, reviewed_at=now)
        task.review_state, task.reviewed_by, task.reviewed_at = state, user, now
        if before != state:
            audit.record(
                "reviewed",
                user,
                f"{user.username} marked task {task.id} as {REVIEW_STATES[state].lower()}.",
                task=task,
                before=before,
                after=state,
            )
    return task


def comments_of(task: Task):
    return task.comments.select_related("author").order_by("created_at", "id")
