"""Team review over the API: a task's comments and its review state."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status as Reply

from tasks_app import access, review
from tasks_app.api.common import ERRORS
from tasks_app.api.schemas import In
from tasks_app.markup import render_markdown
from tasks_app.models import Comment, Task

router = Router(tags=["review"])

REVIEW_STATES = [value for value, _ in Task.Review.choices]


class CommentIn(In):
    body: str = Field(
        description="Markdown; at most 20,000 characters.", examples=["Looks right, see `k=3`."]
    )


class CommentOut(Schema):
    id: int
    author: str
    body: str = Field(description="The Markdown source as written.")
    body_html: str = Field(description="The Markdown rendered and sanitized, as the console shows it.")
    created_at: datetime
    edited_at: datetime | None

    @staticmethod
    def resolve_author(obj: Comment) -> str:
        return obj.author.username

    @staticmethod
    def resolve_body_html(obj: Comment) -> str:
        return str(render_markdown(obj.body))


class ReviewIn(In):
    state: str = Field(description=f"One of: {', '.join(REVIEW_STATES)}.", examples=["approved"])


class ReviewOut(Schema):
    task_id: str
    state: str
    reviewed_by: str | None = Field(description="Who set the state; null if nobody has.")
    reviewed_at: datetime | None


def _review_out(task: Task) -> dict:
    return {
        "task_id": task.id,
        "state": task.review_state,
        "reviewed_by": task.reviewed_by.username if task.reviewed_by else None,
        "reviewed_at": task.reviewed_at,
    }


@router.get("/{task_id}/comments", response={200: list[CommentOut], **ERRORS})
def list_comments(request: HttpRequest, task_id: str):
    """The task's comments, oldest first."""
    task = access.task_for(request.user, task_id)
    return list(review.comments_of(task))


@router.post("/{task_id}/comments", response={201: CommentOut, **ERRORS})
def add_comment(request: HttpRequest, task_id: str, payload: CommentIn):
    """Comment on a task (members of its project)."""
    task = access.task_for(request.user, task_id)
    comment = review.add_comment(task, request.user, payload.body)
    return Reply(201, comment)


@router.post("/{task_id}/review", response={200: ReviewOut, **ERRORS})
def set_review(request: HttpRequest, task_id: str, payload: ReviewIn):
    """Set the review state; the answer says who set it and when."""
    task = access.task_for(request.user, task_id)
    review.set_review(task, request.user, payload.state)
    return _review_out(task)
