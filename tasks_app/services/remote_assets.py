"""Inputs a task takes from storage instead of from its upload (``run(..., remote_assets=[...])``).

An asset is a path of the project's storage (:mod:`tasks_app.services.project_storage`):
another task's files (``<task id>/outputs/frames/``) or uploaded ones
(``my-data/mesh.msh``). It is placed in the new task's folder under its
last name: the file ``a/b/mesh.msh`` as ``mesh.msh``, the folder
``<id>/outputs/frames`` as ``frames/``, ``<id>/outputs`` as ``outputs/``.

Everything is checked when the task is submitted (that the user may read
each path, that it holds files, that no two land on one name), so a
refused submission makes nothing. The machine fetches the files from
storage when the task starts; nothing passes through the client.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from django.db.models import Q
from django.http import Http404

from tasks_app import access, archives, storage
from tasks_app.errors import Refused
from tasks_app.models import Project, Task, TaskAsset
from tasks_app.services import project_storage

MAX_ASSETS = 100


def _refused(index: int, path: str, why: str, *, code: str = "invalid", status: int = 400) -> Refused:
    return Refused(
        f"remote_assets[{index}] ({path!r}): {why}", code=code, field="remote_assets", status=status
    )


def _placed_name(path: str) -> str:
    return PurePosixPath(path).name


def resolve(user, project: Project, paths: list[str] | None, input_files: list[str]) -> list[TaskAsset]:
    """The assets of a new task of ``project``, checked; not saved (their task does not exist yet).

    Returns them with ``files``: the names each puts in the task's folder,
    for the simulator's checks of its input.
    """
    paths = list(paths or [])
    if len(paths) > MAX_ASSETS:
        raise Refused(f"A task takes at most {MAX_ASSETS} remote assets.", field="remote_assets")
    taken = {str(PurePosixPath(f)) for f in input_files}
    top_inputs = {f.split("/", 1)[0] for f in taken}
    assets = []
    for index, raw in enumerate(paths):
        try:
            path = project_storage.clean_path(raw, field=f"remote_assets[{index}]", root_ok=False)
        except Refused as exc:
            raise Refused(str(exc), field="remote_assets") from None
        source, files = _source_files(user, project, index, path)
        name = _placed_name(path)
        if name in top_inputs:
            raise _refused(
                index,
                raw,
                f"it would be placed as {name!r}, which the input folder has already. "
                "Rename one of the two, or leave that file out of the input folder.",
                code="conflict",
                status=409,
            )
        top_inputs.add(name)
        asset = TaskAsset(position=index, path=path, source_task=source)
        asset.files = files
        assets.append(asset)
    return assets


def _source_files(user, project: Project, index: int, path: str) -> tuple[Task | None, list[str]]:
    """The task the path reads from (None for uploaded files), and the names it places."""
    name = _placed_name(path)
    if project_storage.is_task_path(path):
        task_id = path.split("/", 1)[0]
        try:
            where = project_storage.task_path(user, project, path, any_project=True)
        except Http404:
            raise _refused(
                index,
                path,
                f"no task with id {task_id!r}, or it is not yours to see. A remote asset of another task "
                "needs a role in that task's project ('simdeck tasks list' shows the tasks you can read).",
                code="not_found",
                status=404,
            ) from None
        except Refused as exc:
            raise _refused(index, path, str(exc), code=exc.code, status=exc.status) from None
        if where.part is None:
            raise _refused(
                index, path, f"name {path}/outputs or {path}/input (or a file or folder inside them)."
            )
        try:
            members = where.members()
        except Refused as exc:
            raise _refused(index, path, str(exc), code=exc.code, status=exc.status) from None
        if not members:
            raise _refused(
                index,
                path,
                f"task {task_id} has no such file or folder in its {where.part}; "
                f"'simdeck storage ls {task_id}/{where.part}' lists them.",
                code="not_found",
                status=404,
            )
        prefix = where.member + "/" if where.member else ""
        if len(members) == 1 and members[0].filename == where.member:
            return where.task, [name]
        return where.task, [f"{name}/{m.filename.removeprefix(prefix)}" for m in members]
    files = list(project_storage.uploaded_files(project, path).values_list("path", flat=True))
    if not files:
        raise _refused(
            index,
            path,
            f"nothing is stored there in project {project.name!r}. Upload it first "
            "(simdeck.storage.upload or 'simdeck storage upload'); 'simdeck storage ls' shows "
            "what is stored.",
            code="not_found",
            status=404,
        )
    if files == [path]:
        return None, [name]
    return None, [f"{name}/{f.removeprefix(path + '/')}" for f in files]


def save(tasks: list[Task], assets: list[TaskAsset]) -> None:
    """The same assets for each of ``tasks`` (one task, or a sweep's), in one insert."""
    TaskAsset.objects.bulk_create(
        TaskAsset(task=task, position=a.position, path=a.path, source_task=a.source_task)
        for task in tasks
        for a in assets
    )


class AssetMissing(Exception):
    """A remote asset is gone from storage since the task was submitted; the message says which."""


def plan(task: Task) -> list[dict]:
    """What to fetch for the task's assets, and where each lands in its folder.

    Each step names a stored file: an archive of another task (``member``
    says which of its files or folders; empty for all of it), or a file
    uploaded to the project's storage. It is worked out where the database
    is; a machine elsewhere receives it and fetches each named file through
    its interface (:func:`place` does the rest, wherever it runs).
    """
    steps: list[dict] = []
    for asset in TaskAsset.objects.filter(task=task).select_related("source_task"):
        path = asset.path
        name = _placed_name(path)
        if project_storage.is_task_path(path):
            source = asset.source_task
            if source is None:
                raise AssetMissing(f"Task {path.split('/', 1)[0]}, whose files {path!r} are, was deleted.")
            _, _, rest = path.partition("/")
            part, _, member = rest.partition("/")
            archive = source.input_path if part == "input" else source.output_path
            if not storage.exists(archive):
                raise AssetMissing(f"The {part} of task {source.id} ({path!r}) were removed from storage.")
            steps.append(
                {"archive": archive, "member": member, "name": name, "path": path, "task": source.id}
            )
            continue
        files = list(project_storage.uploaded_files(task.project, path).values_list("path", flat=True))
        if not files:
            raise AssetMissing(f"Nothing is stored at {path!r} in the project's storage any more.")
        for stored in files:
            rel = name if stored == path else f"{name}/{stored.removeprefix(path + '/')}"
            steps.append(
                {"file": storage.project_file_name(task.project_id, stored), "name": rel, "path": stored}
            )
    return steps


def stored_names(steps: list[dict]) -> set[str]:
    """The stored files a plan fetches: all a machine may read for it."""
    return {step.get("archive") or step["file"] for step in steps}


def place(steps: list[dict], workdir: Path, open_stored) -> list[Path]:
    """Fetch what :func:`plan` names (``open_stored(name)`` opens one) into ``workdir``; the files written."""
    written: list[Path] = []
    for step in steps:
        name = step["name"]
        if "archive" in step:
            member = step["member"]
            prefix = member + "/" if member else ""

            def where(entry: PurePosixPath, member=member, prefix=prefix, name=name):
                text = str(entry)
                if text == member:
                    return PurePosixPath(name)
                if not member or text.startswith(prefix):
                    return PurePosixPath(name, text.removeprefix(prefix))
                return None

            with open_stored(step["archive"]) as f:
                found = archives.safe_extract(f, workdir, where)
            if not found:
                raise AssetMissing(f"Task {step['task']} has no file or folder {step['path']!r} any more.")
            written += found
            continue
        if archives.path_problem(name):
            raise AssetMissing(f"{step['path']!r} cannot be placed in the task's folder.")
        target = workdir.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        with open_stored(step["file"]) as src, open(fd, "wb") as out:
            while chunk := src.read(storage.CHUNK):
                out.write(chunk)
        written.append(target)
    return written


def chain(task: Task, user) -> dict:
    """The tasks whose files ``task`` took ("inputs from") and those that took its files ("used by").

    Only tasks ``user`` may see are named. One query for a task outside any
    chain, two for one in a chain.
    """
    rows = list(
        TaskAsset.objects.filter(Q(task=task) | Q(source_task=task))
        .order_by("position", "task_id")
        .values_list("task_id", "path", "source_task_id")
    )
    taken = [(path, source) for owner, path, source in rows if owner == task.pk]
    given = [(owner, path) for owner, path, source in rows if source == task.pk and owner != task.pk]
    linked = {source for _, source in taken if source} | {owner for owner, _ in given}
    visible = set()
    if linked and user is not None:
        visible = set(access.visible_tasks(user).filter(pk__in=linked).values_list("id", flat=True))
    return {
        "assets": [path for path, _ in taken],
        "inputs_from": [{"id": source, "path": path} for path, source in taken if source in visible],
        "used_by": [{"id": owner, "path": path} for owner, path in given if owner in visible],
    }
