"""Which project a new group or task goes into, made when it does not exist yet."""

from __future__ import annotations

import re

from django.db import IntegrityError

from tasks_app import access, inputs
from tasks_app.errors import Refused
from tasks_app.models import MachineGroup, Project

PROJECT_NAME = re.compile(r"^[\w.\- ]{1,128}$")


def project_to_use(user, name: str | None, action: str = "submit") -> Project:
    """The project a new task or group goes into: the user's personal one by default.

    A name no project has yet makes a new project with the user as its
    maintainer. An existing project needs the role ``action`` asks for
    (see :mod:`tasks_app.access`); one the user cannot see is refused as
    unknown, like any object of another team.
    """
    if not (name or "").strip():
        return access.personal_project(user)
    name = inputs.text("project", name.strip())
    if not PROJECT_NAME.match(name):
        raise Refused(
            "A project name has 1 to 128 letters, digits, spaces, dots, dashes or underscores.",
            field="project",
        )
    project = Project.objects.filter(name=name).first()
    if project is None:
        try:
            return access.new_project(user, name)
        except IntegrityError:  # made by someone else a moment ago
            project = Project.objects.get(name=name)
    if not access.visible_projects(user).filter(pk=project.pk).exists():
        raise Refused(
            f"Project {name!r} is taken by a team you are not in; choose another name, "
            "or ask one of its maintainers to add you.",
            field="project",
            code="not_found",
            status=404,
        )
    if not access.can(user, action, project):
        raise Refused(access.refusal(user, action, project), field="project", code="forbidden", status=403)
    return project


def project_of_task(machine_group: MachineGroup, name: str | None) -> Project:
    """The project a task on ``machine_group`` is filed in: the group's own.

    The team that owns the machines sees, stops and pays for what runs on
    them, so naming another project is refused rather than followed.
    """
    project = machine_group.project
    name = inputs.text("project", (name or "").strip())
    if name and name != project.name:
        raise Refused(
            f"project {name!r} is not the one of machine group {machine_group.name}: the group belongs "
            f"to project {project.name!r}, where its tasks are filed. Leave project out (or give "
            f"{project.name!r}), or submit to a machine group of project {name!r}.",
            field="project",
        )
    return project
