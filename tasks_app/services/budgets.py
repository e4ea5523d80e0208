"""Monthly budgets of projects: set by maintainers, warned about at 80 %, enforced at 100 %.

A budget counts one of two figures of the current UTC month
(:mod:`tasks_app.services.accounting`):

- **core-hours**: the core-hours of the project's tasks (the team's
  computing, whoever's machines ran it);
- **money**: the cost of the project's machines, idle time included (what a
  provider would bill).

From :data:`WARN_FRACTION` of it on, the project's members see a warning;
from all of it, new tasks of the project are refused with a message naming
the budget, the use and who may raise it. Tasks already submitted run on: a
budget stops new work, it never throws away work paid for.

The level each budget reached is kept on it (:func:`record_levels`, run by
the scheduler about once a minute and whenever a budget is set or a task
refused): the banner on every console page reads it in one query
(:func:`banner`), and a level newly reached is what notifications tell.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from tasks_app import access, audit
from tasks_app.errors import Refused
from tasks_app.models import Budget, Membership, Project, Role
from tasks_app.services.accounting import currency, month_bounds, report

WARN_FRACTION = 0.8
# A limit above this is a typing mistake rather than a budget.
LIMIT_MAX = Decimal("1000000000")


@dataclasses.dataclass
class BudgetState:
    budget: Budget
    project: Project
    used: float
    month: str

    @property
    def limit(self) -> float:
        return float(self.budget.monthly_limit)

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else 1.0

    @property
    def percent(self) -> int:
        return int(self.fraction * 100)

    @property
    def level(self) -> str:
        if self.fraction >= 1:
            return "exhausted"
        return "warning" if self.fraction >= WARN_FRACTION else "ok"

    def amount(self, value: float) -> str:
        if self.budget.kind == Budget.Kind.MONEY:
            return f"{value:,.2f} {currency()}"
        return f"{value:,.2f} core-hours"

    @property
    def summary(self) -> str:
        what = "its tasks' core-hours" if self.budget.kind == Budget.Kind.CORE_HOURS else "its machines' cost"
        return (
            f"Project {self.project.name} has used {self.amount(self.used)} of its monthly budget of "
            f"{self.amount(self.limit)} ({self.percent} %) in {self.month}, counting {what}."
        )

    def as_dict(self) -> dict:
        return {
            "kind": self.budget.kind,
            "monthly_limit": self.limit,
            "used": round(self.used, 4),
            "percent": self.percent,
            "level": self.level,
            "month": self.month,
            "currency": currency(),
            "set_by": self.budget.set_by.username if self.budget.set_by else None,
            "set_at": self.budget.set_at,
        }


def states(project_ids) -> list[BudgetState]:
    """The budgets of these projects with this month's use: one query, three more when any budget is set."""
    budgets = list(Budget.objects.filter(project_id__in=project_ids).select_related("project", "set_by"))
    if not budgets:
        return []
    start, end = month_bounds("")
    used = report([b.project_id for b in budgets], start, end)
    found = []
    for budget in budgets:
        if budget.kind == Budget.Kind.CORE_HOURS:
            usage = used.projects.get(budget.project_id)
            value = usage.core_seconds / 3600 if usage else 0.0
        else:
            value = used.machine_cost.get(budget.project_id, 0.0)
        found.append(BudgetState(budget, budget.project, value, f"{start:%B %Y}"))
    return found


LEVELS = ("ok", "warning", "exhausted")


def record_levels(project_ids=None, now=None) -> int:
    """Keep on each budget (of these projects, or all) the level its use reached this month.

    A level higher than the one kept is stamped ``alert_at``: notifications
    tell it once. A lower one (the budget was raised, a new month began) is
    kept without a stamp, so reaching the higher level again is told again.
    Returns how many budgets reached a higher level.
    """
    now = now or timezone.now()
    month = now.date().replace(day=1)
    found = states(Budget.objects.values("project_id") if project_ids is None else project_ids)
    raised = 0
    for state in found:
        budget = state.budget
        kept = budget.alert_level if budget.alert_month == month else "ok"
        changes = {"alert_month": month, "alert_level": state.level, "alert_summary": state.summary}
        if LEVELS.index(state.level) > LEVELS.index(kept):
            changes["alert_at"] = now
            raised += 1
        elif all(getattr(budget, field) == value for field, value in changes.items()):
            continue
        # Guarded by what was read, so a budget changed meanwhile is measured again next time.
        Budget.objects.filter(pk=budget.pk, monthly_limit=budget.monthly_limit, kind=budget.kind).update(
            **changes
        )
    return raised


def banner(user) -> list[Budget]:
    """Budgets of the user's projects at 80 % or more this month, as last measured: one query."""
    if not user.is_authenticated:
        return []
    month = timezone.now().date().replace(day=1)
    return list(
        Budget.objects.filter(project__memberships__user=user, alert_month=month, alert_level__in=LEVELS[1:])
        .select_related("project")
        .order_by("project__name")
    )


def check_submission(project_id: int) -> None:
    """Refuse new tasks of a project whose monthly budget is used up (one query without a budget)."""
    for state in states([project_id]):
        if state.level == "exhausted":
            project = state.project
            if state.budget.alert_level != "exhausted":
                record_levels([project_id])
            maintainers = sorted(
                Membership.objects.filter(project=project, role=Role.MAINTAINER).values_list(
                    "user__username", flat=True
                )
            )
            who = ", ".join(maintainers) or "an administrator"
            raise Refused(
                f"{state.summary} New tasks are refused until the month ends or the budget is raised; "
                f"who may raise it: {who} (maintainers of {project.name}), or an administrator.",
                code="budget_exhausted",
                field="project",
                status=403,
            )


def parse_limit(value) -> Decimal:
    try:
        limit = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise Refused(
            f"The monthly limit {value!r} is not a number; give one such as 250 or 99.5.",
            field="monthly_limit",
        ) from None
    if not limit.is_finite() or limit <= 0 or limit > LIMIT_MAX:
        raise Refused(
            f"The monthly limit must be more than 0 and at most {LIMIT_MAX:,}; {value!r} is not.",
            field="monthly_limit",
        )
    return limit.quantize(Decimal("0.0001"))


@transaction.atomic
def set_budget(user, project: Project, kind: str, monthly_limit) -> Budget:
    """Set (or change) a project's monthly budget; maintainers only, audited."""
    access.require(user, "manage-budget", project)
    if kind not in Budget.Kind.values:
        raise Refused(
            f"A budget is counted in {' or '.join(repr(k) for k in Budget.Kind.values)}, not {kind!r}.",
            field="kind",
        )
    limit = parse_limit(monthly_limit)
    before = Budget.objects.select_for_update().filter(project=project).first()
    old = f"{before.monthly_limit.normalize()} {before.kind}" if before else None
    budget, _ = Budget.objects.update_or_create(
        project=project,
        defaults={"kind": kind, "monthly_limit": limit, "set_by": user, "set_at": timezone.now()},
    )
    record_levels([project.pk])
    audit.record(
        "budget-set",
        user,
        f"Monthly budget of {project.name}: {limit.normalize()} {kind}.",
        project=project,
        before=old,
        after=f"{limit.normalize()} {kind}",
    )
    return budget


@transaction.atomic
def remove_budget(user, project: Project) -> None:
    access.require(user, "manage-budget", project)
    budget = Budget.objects.select_for_update().filter(project=project).first()
    if budget is None:
        return
    budget.delete()
    audit.record(
        "budget-removed",
        user,
        f"{project.name} no longer has a monthly budget.",
        project=project,
        before=f"{budget.monthly_limit.normalize()} {budget.kind}",
        after=None,
    )
