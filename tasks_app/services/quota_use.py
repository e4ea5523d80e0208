"""What a user may use and uses now: their own quotas and those of each project they belong to."""

from __future__ import annotations

from tasks_app import access, quotas
from tasks_app.models import Project


def overview(user) -> dict:
    """The user's limits with the machines they run, and each of their projects' (by name)."""
    roles = access.roles_of(user)
    projects = Project.objects.filter(pk__in=roles).order_by("name")
    return {
        "username": user.username,
        "quotas": quotas.report(
            quotas.for_user(user),
            quotas.running_machines(owner_id=user.pk),
            quotas.stored_bytes(owner_id=user.pk),
        ),
        "projects": [
            {
                "name": project.name,
                "role": roles[project.pk].value,
                "quotas": quotas.report(
                    quotas.for_project(project),
                    quotas.running_machines(project_id=project.pk),
                    quotas.stored_bytes(project_id=project.pk),
                ),
            }
            for project in projects
        ],
    }
