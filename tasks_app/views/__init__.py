"""The web console: server-rendered pages, htmx for partial updates.

Views stay thin: find the objects through :mod:`tasks_app.access` (one
"get it for this user or 404" helper per object), check, render. Each page
is one template with named partials; an htmx request gets the partial, a
normal one the page. Modules by page: :mod:`.tasks`, :mod:`.groups`,
:mod:`.pages`, :mod:`.bulk` (bulk actions, CSV export, saved views),
:mod:`.health` (staff only: processes and services), :mod:`.hosts` (staff
only: join tokens and the machines of joined hosts);
helpers they share: :mod:`.table` (filters and keyset pagination),
:mod:`.logs` (paged log reading), :mod:`.waiting` (why a task waits),
:mod:`.diagram` (the lifecycle drawing).
"""

from tasks_app.views.bulk import saved_view_create, saved_view_delete, task_bulk, task_export
from tasks_app.views.groups import group_detail, group_list, group_start, group_terminate
from tasks_app.views.health import health
from tasks_app.views.hosts import host_list, host_machine_revoke, join_token_revoke
from tasks_app.views.pages import account, api_key_revoke, home, overview, project_list, status_reference
from tasks_app.views.projects import project_budget, project_member, project_members, project_usage
from tasks_app.views.resources import task_resources
from tasks_app.views.tasks import (
    task_archive_download,
    task_detail,
    task_file_download,
    task_file_preview,
    task_files,
    task_kill,
    task_latest_file,
    task_list,
    task_log_download,
    task_logs,
    task_metadata,
    task_metadata_delete,
    task_resubmit,
    task_resubmit_edit,
)

__all__ = [
    "account",
    "api_key_revoke",
    "group_detail",
    "group_list",
    "group_start",
    "group_terminate",
    "health",
    "host_list",
    "host_machine_revoke",
    "join_token_revoke",
    "home",
    "overview",
    "project_list",
    "project_member",
    "project_budget",
    "project_members",
    "project_usage",
    "saved_view_create",
    "saved_view_delete",
    "status_reference",
    "task_archive_download",
    "task_bulk",
    "task_detail",
    "task_export",
    "task_file_download",
    "task_file_preview",
    "task_files",
    "task_kill",
    "task_latest_file",
    "task_list",
    "task_log_download",
    "task_logs",
    "task_metadata",
    "task_metadata_delete",
    "task_resources",
    "task_resubmit",
    "task_resubmit_edit",
]
