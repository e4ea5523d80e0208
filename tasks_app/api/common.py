"""What every part of the API shares: the error responses and the task queryset."""

from __future__ import annotations

from tasks_app import access, inputs
from tasks_app.api import schemas as s

# Documented on every operation that can refuse; the body is always s.Error.
ERRORS = {400: s.Error, 401: s.Error, 403: s.Error, 404: s.Error, 409: s.Error, 413: s.Error}
MACHINE_ERRORS = {**ERRORS, 502: s.Error, 503: s.Error}


def links(status: int, parameters: dict[str, str], *operations: str) -> dict:
    """OpenAPI links for an operation's ``openapi_extra``: where its ``status`` answer leads.

    ``parameters`` fills the path parameters of each of ``operations``
    (``"tasks.get_task"``: the module under ``tasks_app.api`` and the
    function) with runtime expressions such as ``$response.body#/id``. A
    client, or a stateful fuzzer, follows them from what it made to what
    can be done with it.
    """
    return {
        "responses": {
            status: {
                "links": {
                    operation.split(".")[1]: {
                        "operationId": "tasks_app_api_" + operation.replace(".", "_"),
                        "parameters": parameters,
                    }
                    for operation in operations
                }
            }
        }
    }


def tasks_for(user):
    """The tasks ``user`` may see, with what the task schemas read."""
    return access.visible_tasks(user).select_related("project", "owner", "machine_group", "machine")


def task_for(user, task_id: str):
    """One task for ``user`` (404 otherwise, as in :func:`access.task_for`), in one query."""
    task = None if inputs.text_problem(str(task_id)) else tasks_for(user).filter(pk=task_id).first()
    if task is None:
        raise access.NotVisible("task", task_id)
    task.viewer = user  # the tasks using its files are named only where this user sees them
    return task
