"""Who may see and change what: the one layer every door goes through.

A project is a team. Each member has a role in it (:class:`~tasks_app.models.Role`):

- **viewer** sees the project's tasks, machine groups, members and activity;
- **member** also submits tasks, edits metadata, comments, reviews,
  kills (or removes the files of) the tasks they own, and uploads, copies
  and removes files in the project's storage;
- **maintainer** also kills any task of the project, creates, starts and
  terminates its machine groups, and manages its members.

Only a task's owner uploads its input: the task runs under the owner's name,
so nobody else (a maintainer, staff) chooses what it runs. Staff may do
everything else everywhere. Querysets are scoped to the projects the user
belongs to; an object outside that scope answers 404 (so an id from another
team reveals nothing), an object in scope that the role does not allow
acting on answers 403 (:class:`PermissionDenied`).
"""

from __future__ import annotations

import re

from django.contrib.postgres.expressions import ArraySubquery
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import BooleanField, F, Func, OuterRef, Subquery, Value
from django.http import Http404

from tasks_app import inputs
from tasks_app.models import ROLE_RANK, MachineGroup, Membership, NotificationRule, Project, Role, Task

VIEWER, MEMBER, MAINTAINER = Role.VIEWER, Role.MEMBER, Role.MAINTAINER

# The least role each action needs, by the kind of object it is done to.
# "own" actions need MEMBER on one's own task and MAINTAINER on anyone else's;
# "owner" actions are the owner's alone (MEMBER still), whoever else asks.
TASK_ACTIONS: dict[str, Role | str] = {
    "view": VIEWER,
    "edit": MEMBER,  # metadata
    "comment": MEMBER,
    "review": MEMBER,
    "resubmit": MEMBER,
    "kill": "own",
    "remove-files": "own",
    "upload": "owner",
}
PROJECT_ACTIONS: dict[str, Role] = {
    "view": VIEWER,
    "submit": MEMBER,
    "comment": MEMBER,
    "review": MEMBER,
    "write-storage": MEMBER,  # upload, copy, remove files of the project's storage
    "manage-groups": MAINTAINER,
    "manage-members": MAINTAINER,
    "manage-budget": MAINTAINER,
}
GROUP_ACTIONS: dict[str, Role] = {
    "view": VIEWER,
    "submit": MEMBER,
    "manage": MAINTAINER,  # start, terminate, reclaim machines
}

# What a refusal says the user would need, in words.
NEEDS = {VIEWER: "a viewer", MEMBER: "a member", MAINTAINER: "a maintainer"}


# -- scopes ----------------------------------------------------------------------


def _member_projects(user) -> Subquery:
    return Subquery(Membership.objects.filter(user=user).values("project_id"))


def visible_projects(user):
    """Projects the user is a member of, in any role (all of them for staff)."""
    if not user.is_authenticated:
        return Project.objects.none()
    qs = Project.objects.all()
    return qs if user.is_staff else qs.filter(pk__in=_member_projects(user))


def visible_tasks(user):
    """Tasks of the user's projects (all tasks for staff)."""
    if not user.is_authenticated:
        return Task.objects.none()
    qs = Task.objects.all()
    if user.is_staff:
        return qs
    # ``= ANY(ARRAY(subquery))``: PostgreSQL reads the user's projects once
    # and checks each task against that list. ``IN (subquery)`` let it look
    # up the membership again for every task it walked past, which made a
    # member's newest tasks slow to find behind many newer ones of others.
    projects = ArraySubquery(Membership.objects.filter(user=user).values("project_id"))
    return qs.filter(
        Func(
            F("project_id"),
            projects,
            arg_joiner=" = ANY(",
            template="(%(expressions)s))",
            output_field=BooleanField(),
        )
    )


def visible_groups(user):
    """Machine groups of the user's projects (all groups for staff)."""
    if not user.is_authenticated:
        return MachineGroup.objects.none()
    qs = MachineGroup.objects.all()
    return qs if user.is_staff else qs.filter(project_id__in=_member_projects(user))


def task_for(user, task_id: str) -> Task:
    task = None
    if not inputs.text_problem(str(task_id)):  # a text PostgreSQL cannot store: no object has such an id
        qs = visible_tasks(user).select_related("machine_group", "project", "owner").filter(pk=task_id)
        task = _with_role(qs, user).first()
    if task is None:
        raise NotVisible("task", task_id)
    return task


def looks_like_id(ref: str | int) -> bool:
    """Whether ``ref`` can be a row's id: ASCII digits a database integer holds.

    (``str.isdigit`` also says yes to "¹" and other digits ``int`` refuses, and
    a long enough number overflows the column: both were server errors.)
    """
    return isinstance(ref, int) or re.fullmatch(r"[0-9]{1,18}", str(ref)) is not None


def group_for(user, ref: str | int) -> MachineGroup:
    """A machine group by id or by name."""
    qs = _with_role(visible_groups(user).select_related("project"), user)
    group = None
    if not inputs.text_problem(str(ref)):
        group = qs.filter(pk=int(ref)).first() if looks_like_id(ref) else qs.filter(name=ref).first()
    if group is None:
        raise NotVisible("machine group", ref)
    return group


def _with_role(qs, user):
    """``qs`` with the user's role in each row's project read along (``asker_role``, for ``asker_id``).

    What a request looks up, it usually acts on next: :func:`can` then
    needs no query of its own (see :func:`_roles_seen`).
    """
    if user.is_staff or not user.is_authenticated:
        return qs
    mine = Membership.objects.filter(user=user, project_id=OuterRef("project_id"))
    return qs.annotate(asker_id=Value(user.pk), asker_role=Subquery(mine.values("role")[:1]))


def project_for(user, ref: str | int) -> Project:
    """A project by name, or by id when no project has that name."""
    qs = visible_projects(user)
    found = None
    if not inputs.text_problem(str(ref)):
        found = qs.filter(name=str(ref)).first()
        if found is None and looks_like_id(ref):
            found = qs.filter(pk=int(ref)).first()
    if found is None:
        raise NotVisible("project", ref)
    return found


class NotVisible(Http404):
    """No such object, or one the user may not see: the two answer alike, naming what was asked for."""

    def __init__(self, kind: str | None = None, ref: object = None):
        self.kind = kind
        self.ref = ref
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.kind is None:
            return "No such object, or it is not yours to see."
        ref = str(self.ref)
        if inputs.text_problem(ref) or len(ref) > 200:
            return f"No such {self.kind}, or it is not yours to see."
        # A name is not an id: say which of the two was looked up.
        what = f"with id {ref!r}" if self.kind == "task" or looks_like_id(ref) else f"named {ref!r}"
        return f"No {self.kind} {what}, or it is not yours to see ({_LISTS[self.kind]} shows yours)."


# Where a user finds what exists.
_LISTS = {
    "task": "'simdeck tasks list'",
    "machine group": "'simdeck resources list'",
    "project": "'simdeck projects list'",
    "notification destination": "'simdeck notifications list'",
}


def rule_for(user, ref: str | int):
    """One of the user's own notification destinations, by id: no one else's, staff included."""
    found = None
    if looks_like_id(ref) and user.is_authenticated:
        found = NotificationRule.objects.filter(pk=int(ref), user=user).select_related("project").first()
    if found is None:
        raise NotVisible("notification destination", ref)
    return found


def raise_not_found():
    raise NotVisible()


# -- roles and actions -------------------------------------------------------------


def role_in(user, project: Project | int) -> Role | None:
    """The user's role in ``project``, or None when not a member."""
    if not user.is_authenticated:
        return None
    project_id = project if isinstance(project, int) else project.pk
    role = Membership.objects.filter(user=user, project_id=project_id).values_list("role", flat=True).first()
    return Role(role) if role else None


def roles_of(user) -> dict[int, Role]:
    """Every project id the user belongs to, with the role: one query, for lists."""
    if not user.is_authenticated:
        return {}
    return {p: Role(r) for p, r in Membership.objects.filter(user=user).values_list("project_id", "role")}


def _project_id(obj) -> int:
    return obj.pk if isinstance(obj, Project) else obj.project_id


def _actions(obj) -> dict[str, Role | str]:
    """The rule table for the kind of ``obj``; empty for a kind with no rules."""
    for kind, table in ((Task, TASK_ACTIONS), (Project, PROJECT_ACTIONS), (MachineGroup, GROUP_ACTIONS)):
        if isinstance(obj, kind):
            return table
    return {}


def _needed(action: str, obj) -> Role | str:
    table = _actions(obj)
    if action not in table:
        raise ValueError(f"No rule for {action!r} on {type(obj).__name__}; add one to tasks_app.access.")
    return table[action]


def can(user, action: str, obj, *, roles: dict[int, Role] | None = None) -> bool:
    """May ``user`` do ``action`` to ``obj`` (a task, project or machine group)?

    Give ``roles`` (from :func:`roles_of`) when asking about many objects,
    to ask the database once.
    """
    needed = _needed(action, obj)
    if not user.is_authenticated or not user.is_active:
        return False
    if needed == "owner":
        if obj.owner_id != user.pk:
            return False
        needed = MEMBER
    if user.is_staff:
        return True
    project_id = _project_id(obj)
    if roles is None:
        roles = _roles_seen(obj, user)
    role = roles.get(project_id) if roles is not None else role_in(user, project_id)
    if role is None:
        return False
    if needed == "own":
        needed = MEMBER if obj.owner_id == user.pk else MAINTAINER
    return ROLE_RANK[role] >= ROLE_RANK[needed]


def _roles_seen(obj, user) -> dict[int, Role] | None:
    """The role :func:`_with_role` read with ``obj``, if it was read for this user."""
    if getattr(obj, "asker_id", None) != user.pk:
        return None
    return {obj.project_id: Role(obj.asker_role)} if obj.asker_role else {}


def allowed(user, obj, *, roles: dict[int, Role] | None = None) -> set[str]:
    """Every action ``user`` may do to ``obj``: for pages that show or hide buttons."""
    if roles is None:
        roles = _roles_seen(obj, user)
    if roles is None and not user.is_staff:
        role = role_in(user, _project_id(obj))  # one query, for every action below
        roles = {_project_id(obj): role} if role else {}
    return {action for action in _actions(obj) if can(user, action, obj, roles=roles)}


def actionable(user, action: str, tasks):
    """The tasks of ``tasks`` the user may do ``action`` to, as a queryset (for bulk actions)."""
    if action not in TASK_ACTIONS:
        raise ValueError(f"No rule for {action!r} on Task; add one to tasks_app.access.")
    needed = TASK_ACTIONS[action]
    if not user.is_authenticated:
        return tasks.none()
    if needed == "owner" and user.is_staff:
        return tasks.filter(owner=user)
    if user.is_staff:
        return tasks
    ranks = {r: ROLE_RANK[r] for r in Role}

    def projects(least: Role) -> Subquery:
        roles = [r for r, rank in ranks.items() if rank >= ROLE_RANK[least]]
        return Subquery(Membership.objects.filter(user=user, role__in=roles).values("project_id"))

    if needed == "owner":
        return tasks.filter(owner=user, project_id__in=projects(MEMBER))
    if needed == "own":
        from django.db.models import Q

        return tasks.filter(
            Q(project_id__in=projects(MAINTAINER)) | Q(owner=user, project_id__in=projects(MEMBER))
        )
    return tasks.filter(project_id__in=projects(needed))


def require(user, action: str, obj) -> None:
    """Raise PermissionDenied (403) unless ``user`` may do ``action`` to ``obj``.

    Call it on an object found through the scoped lookups above, so an object
    the user may not even see has already answered 404.
    """
    if can(user, action, obj):
        return
    raise PermissionDenied(refusal(user, action, obj))


def refusal(user, action: str, obj) -> str:
    """Why ``user`` may not do ``action``, and who could."""
    needed = _needed(action, obj)
    project = obj if isinstance(obj, Project) else obj.project
    role = role_in(user, project)
    if needed == "owner":
        return (
            f"Only the owner of task {obj.id} ({obj.owner.username}) can upload its input: "
            "the task runs under their name. Ask them to upload it."
        )
    if needed == "own":
        what = {"kill": "kill", "remove-files": "remove the files of"}[action]
        return (
            f"Members can {what} their own tasks only; task {obj.id} belongs to "
            f"{obj.owner.username}. Ask a maintainer of project {project.name!r}."
        )
    doing = {
        "edit": "edit metadata",
        "submit": "submit tasks",
        "write-storage": "change its storage",
        "manage": "start or terminate machine groups",
        "manage-groups": "create or change machine groups",
        "manage-members": "manage members",
    }.get(action, action)
    you = f"you are {NEEDS[role]}" if role else "you are not a member"
    return f"To {doing} in project {project.name!r} you need to be {NEEDS[needed]} ({you})."


# -- personal projects and membership changes ----------------------------------------


def personal_project(user) -> Project:
    """The user's own project, made (with the user as maintainer) the first time it is needed."""
    found = Project.objects.filter(personal_owner=user).first()
    if found is not None:
        return found
    base = f"{user.username}-default"
    for attempt in range(20):
        name = base if attempt == 0 else f"{base}-{attempt + 1}"
        try:
            with transaction.atomic():
                project = Project.objects.create(name=name, created_by=user, personal_owner=user)
                Membership.objects.create(project=project, user=user, role=MAINTAINER, added_by=user)
                return project
        except IntegrityError:
            # Someone made it at the same moment, or the name is taken by another project.
            found = Project.objects.filter(personal_owner=user).first()
            if found is not None:
                return found
    raise RuntimeError(f"Could not find a free name for the personal project of {user.username}.")


def new_project(user, name: str) -> Project:
    """A new team project with ``user`` as its first maintainer."""
    with transaction.atomic():
        project = Project.objects.create(name=name, created_by=user)
        Membership.objects.create(project=project, user=user, role=MAINTAINER, added_by=user)
    return project
