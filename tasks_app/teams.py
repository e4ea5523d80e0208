"""Changing who is in a project and with which role; every change is audited.

These functions do not ask whether the caller may make the change: the door
(console view, API endpoint, management command) does that through
:mod:`tasks_app.access` first. They keep the project manageable: its last
maintainer can be neither removed nor demoted.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from tasks_app import audit, inputs
from tasks_app.models import Membership, Project, Role
from tasks_app.services import Refused


def parse_role(text: str) -> Role:
    try:
        return Role(str(text).strip().lower())
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise Refused(f"{text!r} is not a role; choose one of {choices}.", field="role") from None


def find_user(username: str):
    inputs.text("username", username)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise Refused(
            f"There is no active user named {username!r}; an administrator creates users first.",
            field="username",
            code="unknown_user",
            status=404,
        )
    return user


def _actor(actor):
    return actor if actor is not None and actor.is_authenticated else None


def add_member(project: Project, username: str, role: str, *, actor=None) -> Membership:
    """Add a user to the project, or change the role of one already in it."""
    user = find_user(username)
    role = parse_role(role)
    with transaction.atomic():
        existing = Membership.objects.select_for_update().filter(project=project, user=user).first()
        if existing is not None:
            return change_role(project, user, role, actor=actor)
        membership = Membership.objects.create(project=project, user=user, role=role, added_by=_actor(actor))
        audit.record(
            "member-added",
            actor,
            f"{user.username} joined as {role.label.lower()}.",
            project=project,
            before=None,
            after={"user": user.username, "role": role.value},
        )
    return membership


def change_role(project: Project, user, role: str, *, actor=None) -> Membership:
    role = parse_role(role)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
        if membership is None:
            raise Refused(
                f"{user.username} is not a member of project {project.name!r}; add them first.",
                code="not_found",
                status=404,
            )
        before = Role(membership.role)
        if before == role:
            return membership
        if before == Role.MAINTAINER:
            _keep_a_maintainer(project, user)
        membership.role = role
        membership.save(update_fields=["role"])
        audit.record(
            "role-changed",
            actor,
            f"{user.username}: {before.label.lower()} → {role.label.lower()}.",
            project=project,
            before={"user": user.username, "role": before.value},
            after={"user": user.username, "role": role.value},
        )
    return membership


def remove_member(project: Project, user, *, actor=None) -> None:
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
        if membership is None:
            raise Refused(
                f"{user.username} is not a member of project {project.name!r}.", code="not_found", status=404
            )
        if membership.role == Role.MAINTAINER:
            _keep_a_maintainer(project, user)
        membership.delete()
        audit.record(
            "member-removed",
            actor,
            f"{user.username} left the project (was {Role(membership.role).label.lower()}).",
            project=project,
            before={"user": user.username, "role": membership.role},
            after=None,
        )


def _keep_a_maintainer(project: Project, leaving) -> None:
    others = (
        Membership.objects.select_for_update()
        .filter(project=project, role=Role.MAINTAINER)
        .exclude(user=leaving)
    )
    if not others.exists():
        raise Refused(
            f"{leaving.username} is the last maintainer of project {project.name!r}; "
            "make someone else a maintainer first.",
            code="last_maintainer",
            status=409,
        )


def members(project: Project):
    return (
        Membership.objects.filter(project=project)
        .select_related("user", "added_by")
        .order_by("user__username")
    )
