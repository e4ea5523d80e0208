"""A user's notification destinations over the API: list, add, send a test, remove.

Each user reaches only their own (anyone else's answers 404, staff's too):
a destination's URL may hold the user's tokens. The checks are those of the
console's page (services.notifications).
"""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status as Reply

from tasks_app import access
from tasks_app.api.common import ERRORS
from tasks_app.api.schemas import Error, In
from tasks_app.models import NotificationRule
from tasks_app.services import notifications

router = Router(tags=["notifications"])


class NotificationIn(In):
    url: str = Field(
        description=(
            "An Apprise URL (mailtos://, slack://, matrix://, msteams://, json:// for a webhook, …), "
            "or an e-mail address where the server has a mail server (EMAIL_URL)."
        ),
        examples=["json://hooks.example.org/simdeck"],
    )
    label: str = Field("", description="A name to know it by; its scheme and host by default.")
    project: str | None = Field(
        None, description="Hear of this project's tasks, batches, groups and budget; yours when null."
    )
    tasks: str = Field("ended", description="Tasks to hear of: ended (every one), failed, or none.")
    groups_terminated: bool = Field(False, description="Machine groups terminated.")
    batches: bool = Field(
        False, description="A batch (run_many) whose tasks all ended; a machine group with no task left."
    )
    budgets: bool = Field(False, description="A monthly budget reaching 80 % and 100 %.")


class NotificationOut(Schema):
    id: int
    label: str
    url: str = Field(description="Its scheme and host only: the credentials and tokens in it are not shown.")
    project: str | None
    tasks: str
    groups_terminated: bool
    batches: bool
    budgets: bool
    failing: bool = Field(description="Its messages kept failing: it gets nothing until a test gets through.")
    last_error: str
    last_sent_at: datetime | None
    created_at: datetime

    @staticmethod
    def resolve_url(obj: NotificationRule) -> str:
        return notifications.masked(obj.url)

    @staticmethod
    def resolve_project(obj: NotificationRule) -> str | None:
        return obj.project.name if obj.project else None

    @staticmethod
    def resolve_failing(obj: NotificationRule) -> bool:
        return notifications.is_failing(obj)


class TestOut(Schema):
    delivered: bool
    message: str


@router.get("", response={200: list[NotificationOut], **ERRORS})
def list_notifications(request: HttpRequest):
    """Your notification destinations, oldest first, each with its state."""
    return request.user.notification_rules.select_related("project").order_by("created_at")


@router.post("", response={201: NotificationOut, **ERRORS})
def add_notification(request: HttpRequest, payload: NotificationIn):
    """Add a destination. A URL Apprise cannot use, or on this host or a private network, is refused."""
    project = access.project_for(request.user, payload.project) if payload.project else None
    rule = notifications.add_rule(
        request.user,
        label=payload.label,
        url=payload.url,
        project=project,
        tasks=payload.tasks,
        groups_terminated=payload.groups_terminated,
        batches=payload.batches,
        budgets=payload.budgets,
    )
    return Reply(201, rule)


@router.post("/{rule_id}/test", response={200: TestOut, **ERRORS, 429: Error})
def test_notification(request: HttpRequest, rule_id: str):
    """Send a test message now and say whether it arrived; one that arrives clears failing."""
    rule = access.rule_for(request.user, rule_id)
    problem = notifications.send_test(rule)
    if problem:
        return {"delivered": False, "message": f"The test to {rule.label} did not arrive: {problem}."}
    return {"delivered": True, "message": f"A test was delivered to {rule.label}."}


@router.delete("/{rule_id}", response={204: None, **ERRORS})
def remove_notification(request: HttpRequest, rule_id: str):
    """Remove a destination: nothing more is sent to it."""
    access.rule_for(request.user, rule_id).delete()
    return Reply(204, None)
