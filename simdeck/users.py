"""You as a user of the server: who you are, your projects, your quotas and what you use.

simdeck.users.get_quotas()["max_machines"].in_use
simdeck.users.get_info().projects
"""

from __future__ import annotations

import dataclasses

from simdeck import api


@dataclasses.dataclass(frozen=True)
class Quota:
    """One limit, with Inductiva's field names.

    ``max_allowed`` is None where there is no limit; ``in_use`` is None for a
    limit that bounds each machine group or task on its own (``scope``
    ``"instance"``) rather than what is spent across them (``"global"``).
    """

    id: str
    label: str
    max_allowed: float | None
    in_use: float | None
    unit: str
    scope: str


@dataclasses.dataclass(frozen=True)
class ProjectQuotas:
    name: str
    role: str
    quotas: dict[str, Quota]


@dataclasses.dataclass(frozen=True)
class User:
    username: str
    name: str
    email: str
    is_staff: bool
    quotas: dict[str, Quota]
    projects: list[ProjectQuotas]
    # This month's use of your projects (UTC): tasks, core-hours, memory GB-hours, estimated cost.
    usage: dict


def _quotas(items: list[dict]) -> dict[str, Quota]:
    return {q["id"]: Quota(**q) for q in items}


def get_quotas() -> dict[str, Quota]:
    """Your own quotas by id (``max_machines``, ``max_group_ttl_minutes``, ``max_task_ttl_seconds``,
    ``max_storage_gb``).

    Each project has quotas too, and a machine group needs room under both:
    :func:`get_info` gives those of your projects.
    """
    return _quotas(api.client().get("/quotas")["quotas"])


def get_info() -> User:
    """Who the API key belongs to, with your quotas, your projects' and this month's use."""
    client = api.client()
    who = client.get("/whoami")
    quotas = client.get("/quotas")
    usage = client.get("/usage")
    return User(
        username=who["username"],
        name=who.get("name", ""),
        email=who.get("email", ""),
        is_staff=who["is_staff"],
        quotas=_quotas(quotas["quotas"]),
        projects=[
            ProjectQuotas(name=p["name"], role=p["role"], quotas=_quotas(p["quotas"]))
            for p in quotas["projects"]
        ],
        usage={"month": usage["month"], "currency": usage["currency"], **usage["total"]},
    )


__all__ = ["ProjectQuotas", "Quota", "User", "get_info", "get_quotas"]
