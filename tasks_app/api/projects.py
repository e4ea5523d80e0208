"""Projects: the teams tasks and machine groups belong to, and their members."""

from __future__ import annotations

from django.db.models import Count, OuterRef, Q, Subquery
from django.http import HttpRequest
from ninja import Router
from ninja.responses import Status as Reply

from tasks_app import access, lifecycle, teams
from tasks_app.api import schemas as s
from tasks_app.api.common import ERRORS, links
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import Membership, Project
from tasks_app.services import budgets
from tasks_app.services.projects import project_to_use

router = Router(tags=["projects"])


def _projects(user):
    role = Membership.objects.filter(project=OuterRef("pk"), user=user).values("role")[:1]
    return access.visible_projects(user).annotate(
        role=Subquery(role),
        num_tasks=Count("tasks", distinct=True),
        active=Count("tasks", filter=Q(tasks__status__in=lifecycle.ACTIVE), distinct=True),
        succeeded=Count("tasks", filter=Q(tasks__status=Status.SUCCESS), distinct=True),
        failed=Count("tasks", filter=Q(tasks__status__in=lifecycle.FAILURES), distinct=True),
    )


@router.get("", response={200: list[s.ProjectOut], **ERRORS})
def list_projects(request: HttpRequest):
    """Projects you are a member of, by name, with your role and their tasks by outcome."""
    return list(_projects(request.user).order_by("name"))


@router.post("", response={200: s.ProjectOut, 201: s.ProjectOut, **ERRORS})
def create_project(request: HttpRequest, payload: s.ProjectIn):
    """Make a project, with you as its maintainer (201); one of yours of that name is answered as it is (200).

    A name another team's project has is refused as not found, as everywhere
    else a project you cannot see is.
    """
    if not payload.name.strip():
        raise Refused(
            "Give the project a name: 1 to 128 letters, digits, spaces, dots, dashes or underscores.",
            field="name",
        )
    existed = Project.objects.filter(name=payload.name.strip()).exists()
    project = project_to_use(request.user, payload.name, action="view")
    return Reply(200 if existed else 201, _projects(request.user).get(pk=project.pk))


@router.get("/{ref}", response={200: s.ProjectOut, **ERRORS})
def get_project(request: HttpRequest, ref: str):
    """A project by name (or id)."""
    return _projects(request.user).get(pk=access.project_for(request.user, ref).pk)


@router.get("/{ref}/members", response={200: list[s.MemberOut], **ERRORS})
def list_members(request: HttpRequest, ref: str):
    """Who is in the project, with which role. Every member may look."""
    return list(teams.members(access.project_for(request.user, ref)))


@router.post(
    "/{ref}/members",
    response={201: s.MemberOut, **ERRORS},
    openapi_extra=links(
        201,
        {"ref": "$request.path.ref", "username": "$response.body#/username"},
        "projects.change_role",
        "projects.remove_member",
    ),
)
def add_member(request: HttpRequest, ref: str, payload: s.MemberIn):
    """Add a user with a role (or change the role of one already in). Maintainers only."""
    project = access.project_for(request.user, ref)
    access.require(request.user, "manage-members", project)
    membership = teams.add_member(project, payload.username, payload.role, actor=request.user)
    return Reply(201, teams.members(project).get(pk=membership.pk))


@router.patch("/{ref}/members/{username}", response={200: s.MemberOut, **ERRORS})
def change_role(request: HttpRequest, ref: str, username: str, payload: s.RoleIn):
    """Give a member another role. Maintainers only; a project keeps at least one maintainer."""
    project = access.project_for(request.user, ref)
    access.require(request.user, "manage-members", project)
    membership = teams.change_role(project, teams.find_user(username), payload.role, actor=request.user)
    return teams.members(project).get(pk=membership.pk)


@router.delete("/{ref}/members/{username}", response={204: None, **ERRORS})
def remove_member(request: HttpRequest, ref: str, username: str):
    """Take a user out of the project. Maintainers only; a project keeps at least one maintainer."""
    project = access.project_for(request.user, ref)
    access.require(request.user, "manage-members", project)
    teams.remove_member(project, teams.find_user(username), actor=request.user)
    return Reply(204, None)


def _budget(project) -> dict | None:
    found = budgets.states([project.pk])
    return found[0].as_dict() if found else None


@router.get("/{ref}/budget", response={200: s.BudgetOut | None, **ERRORS})
def get_budget(request: HttpRequest, ref: str):
    """The project's monthly budget and this month's use of it (null without one). Every member may look."""
    return _budget(access.project_for(request.user, ref))


@router.put("/{ref}/budget", response={200: s.BudgetOut, **ERRORS})
def set_budget(request: HttpRequest, ref: str, payload: s.BudgetIn):
    """Set the monthly budget, in core-hours or money. Maintainers only.

    At 80 % the members are warned; at 100 % new tasks of the project are
    refused until the month ends or the budget is raised.
    """
    project = access.project_for(request.user, ref)
    budgets.set_budget(request.user, project, payload.kind, payload.monthly_limit)
    return _budget(project)


@router.delete("/{ref}/budget", response={204: None, **ERRORS})
def remove_budget(request: HttpRequest, ref: str):
    """Remove the monthly budget. Maintainers only."""
    budgets.remove_budget(request.user, access.project_for(request.user, ref))
    return Reply(204, None)
