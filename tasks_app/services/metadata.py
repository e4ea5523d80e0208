"""A task's metadata: set, merged, unset, each change in the audit trail."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from tasks_app import audit, inputs
from tasks_app.errors import Refused
from tasks_app.models import Task


def set_metadata(task: Task, metadata: dict, *, actor=None, merge: bool, remove: Iterable[str] = ()) -> dict:
    """Replace (or, with ``merge``, update) a task's metadata; returns the result.

    ``remove`` drops keys in the same change (a renamed key is one edit).
    """
    metadata = validate_metadata(metadata)
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        new = {**locked.metadata, **metadata} if merge else metadata
        new = {k: v for k, v in new.items() if k not in set(remove) or k in metadata}
        Task.objects.filter(pk=task.pk).update(metadata=new)
        _audit_metadata(task, actor, locked.metadata, new)
    task.metadata = new
    return new


def _audit_metadata(task: Task, actor, before: dict, after: dict) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if actor is None or not changed:
        return
    audit.record(
        "metadata-edited",
        actor,
        f"Metadata changed: {', '.join(changed)}.",
        task=task,
        before=dict(before),
        after=dict(after),
    )


def validate_metadata(metadata: dict) -> dict:
    if not isinstance(metadata, dict):
        raise Refused("Metadata is a mapping of string keys to string values.", field="metadata")
    inputs.texts("metadata", metadata)
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.strip():
            raise Refused(f"Metadata key {key!r} must be a non-empty string.", field="metadata")
        if not isinstance(value, str) or not value:
            raise Refused(
                f"Metadata value of {key!r} must be a non-empty string (got {value!r}).", field="metadata"
            )
        if len(key) > 200 or len(value) > 10_000:
            raise Refused(
                f"Metadata {key!r} is too long (keys 200, values 10000 characters).", field="metadata"
            )
    return dict(metadata)


def unset_metadata(task: Task, keys: list[str], *, actor=None) -> dict:
    """Remove the given keys from the task's metadata; returns what is left."""
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        new = {k: v for k, v in locked.metadata.items() if k not in set(keys)}
        Task.objects.filter(pk=task.pk).update(metadata=new)
        _audit_metadata(task, actor, locked.metadata, new)
    task.metadata = new
    return new
