"""A project's storage: files its members upload, and its tasks' inputs and outputs, as one tree.

Paths are relative to the project's storage root and never leave it: no
absolute path, no ``..`` (checked as archive names are, by
:func:`tasks_app.archives.path_problem`). The tree holds

- the files members uploaded, at the paths they chose (``my-data/mesh.msh``);
  their bytes are kept under :func:`tasks_app.storage.project_file_name`,
  and :class:`~tasks_app.models.StoredFile` rows index them, so listings,
  sizes and quotas are database queries whatever the storage backend;
- a read-only folder per task with stored files, named by the task's id,
  holding ``input/`` and ``outputs/``: the files inside the task's input
  and output archives (``<task id>/outputs/result.csv``). A top-level
  uploaded folder cannot take a task id's shape, so the two never meet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import BigIntegerField, Case, Count, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from tasks_app import access, archives, inputs, quotas, storage
from tasks_app.downloads import safe_filename
from tasks_app.errors import Refused
from tasks_app.models import ID_ALPHABET, ID_LENGTH, Project, StoredFile, Task
from tasks_app.services.files import missing_input, missing_outputs, remove_outputs

TASK_ID = re.compile(f"[{ID_ALPHABET}]{{{ID_LENGTH}}}")
TASK_PARTS = {"input": "input", "outputs": "outputs"}
ORDERS = ("size", "creation_time", "name")
MAX_PATH = 1024


# -- paths -----------------------------------------------------------------------------


def clean_path(path: str, *, field: str = "path", root_ok: bool = True) -> str:
    """``path`` checked and normalized ("" for the root); a 400 naming ``field`` otherwise.

    A single "/" names the root, as Inductiva's ``listdir("/")`` does; any
    other path starting with "/" is refused rather than read as relative,
    so nobody believes they reach the server's own files.
    """
    path = inputs.text(field, path or "")
    if path.strip() in ("", "/", "."):
        if not root_ok:
            raise Refused(f"{field}: name a file or folder of the storage, not its root.", field=field)
        return ""
    if len(path) > MAX_PATH:
        raise Refused(f"{field}: a storage path has at most {MAX_PATH} characters.", field=field)
    problem = archives.path_problem(path)
    if problem == "absolute":
        raise Refused(
            f"{field}: {path!r} is absolute. Storage paths are relative to your project's storage: "
            f"write {path.lstrip('/')!r} instead.",
            field=field,
        )
    if problem == "leaves":
        raise Refused(f"{field}: {path!r} climbs out with '..'; storage paths stay inside it.", field=field)
    parts = PurePosixPath(path).parts
    if any(p.strip() != p or not p.strip() for p in parts):
        raise Refused(f"{field}: {path!r} has a name with leading or trailing spaces.", field=field)
    return "/".join(parts)


def is_task_path(path: str) -> bool:
    return bool(path) and TASK_ID.fullmatch(path.split("/", 1)[0]) is not None


def _task_of(user, project: Project, task_id: str, any_project: bool = False) -> Task:
    task = access.task_for(user, task_id)
    if task.project_id != project.pk and not any_project:
        raise Refused(
            f"Task {task_id} is filed in project {task.project.name!r}, not {project.name!r}; "
            f"give project {task.project.name!r}.",
            code="not_found",
            field="path",
            status=404,
        )
    return task


def _nothing_at(project: Project, path: str) -> Refused:
    return Refused(
        f"Nothing is stored at {path!r} in the storage of project {project.name!r}. "
        "List it with 'simdeck storage ls' (or simdeck.storage.listdir()).",
        code="not_found",
        field="path",
        status=404,
    )


@dataclass(frozen=True)
class TaskPath:
    """A path inside a task's folder: which task, which archive (or none), which member prefix."""

    task: Task
    part: str | None  # "input", "outputs" or None for the task's folder itself
    member: str  # inside the archive; "" for all of it

    @property
    def archive(self) -> str:
        return self.task.input_path if self.part == "input" else self.task.output_path

    def require_archive(self) -> str:
        if not storage.exists(self.archive):
            raise (missing_input if self.part == "input" else missing_outputs)(self.task)
        return self.archive

    def members(self) -> list:
        """The archive's files under the member prefix (a file itself, or a folder's files)."""
        with storage.open_file(self.require_archive()) as f:
            entries = archives.file_entries(f)
        if not self.member:
            return entries
        return [i for i in entries if i.filename == self.member or i.filename.startswith(self.member + "/")]


def task_path(user, project: Project, path: str, *, any_project: bool = False) -> TaskPath:
    """Where ``path`` points in a task's folder; with ``any_project`` a task of any project the user sees."""
    task_id, _, rest = path.partition("/")
    task = _task_of(user, project, task_id, any_project)
    part, _, member = rest.partition("/")
    if part and part not in TASK_PARTS:
        raise Refused(
            f"A task's folder holds 'input/' and 'outputs/'; {path!r} names neither. "
            f"Write {task_id}/outputs/<file> for a file of its outputs.",
            code="not_found",
            field="path",
            status=404,
        )
    return TaskPath(task, part or None, member)


def uploaded_files(project: Project, path: str):
    """The uploaded files at ``path``: the file itself, or every file under the folder."""
    files = StoredFile.objects.filter(project=project)
    if not path:
        return files
    return files.filter(Q(path=path) | Q(path__startswith=path + "/"))


# -- listing -------------------------------------------------------------------------------


def _entry(name: str, size: int, created, is_dir: bool, parent: str) -> dict:
    full = f"{parent}/{name}" if parent else name
    return {"name": name, "path": full, "is_dir": is_dir, "size_bytes": size, "created_at": created}


def _children(parent: str, files: Iterable[tuple[str, int, object]]) -> list[dict]:
    """The immediate children of ``parent`` among files given by their paths below it."""
    out: dict[str, dict] = {}
    for rel, size, created in files:
        head, sep, _ = rel.partition("/")
        entry = out.get(head)
        if entry is None:
            out[head] = _entry(head, size, created, bool(sep), parent)
            continue
        entry["size_bytes"] += size
        if created and (entry["created_at"] is None or created > entry["created_at"]):
            entry["created_at"] = created
    return list(out.values())


def _sort(items: list[dict], order_by: str, sort_order: str) -> list[dict]:
    if order_by not in ORDERS:
        raise Refused(f"order_by is one of {', '.join(ORDERS)}, not {order_by!r}.", field="order_by")
    if sort_order not in ("asc", "desc"):
        raise Refused(f"sort_order is 'asc' or 'desc', not {sort_order!r}.", field="sort_order")
    key = {
        "size": lambda e: (e["size_bytes"], e["name"]),
        "creation_time": lambda e: (e["created_at"] or timezone.now(), e["name"]),
        "name": lambda e: e["name"],
    }[order_by]
    return sorted(items, key=key, reverse=sort_order == "desc")


def _task_folders(project: Project):
    """The project's tasks that have stored files, each with the bytes it keeps."""

    def kept_bytes(path: str, size: str) -> Case:
        return Case(
            When(**{path: ""}, then=Value(0)),
            default=Coalesce(F(size), Value(0)),
            output_field=BigIntegerField(),
        )

    kept = kept_bytes("input_path", "input_size") + kept_bytes("output_path", "output_size")
    return Task.objects.filter(project=project).exclude(input_path="", output_path="").annotate(kept=kept)


def _first_task_folders(project: Project, order_by: str, sort_order: str, limit: int | None):
    """The task folders a root listing shows (at most ``limit``, sorted in the database), their count
    and total: a project may have many thousands of tasks, the listing shows a few."""
    folders = _task_folders(project)
    stats = folders.aggregate(n=Count("id"), total=Coalesce(Sum("kept"), Value(0)))
    field = {"size": "kept", "creation_time": "created_at", "name": "id"}[order_by]
    ordered = folders.order_by(("-" if sort_order == "desc" else "") + field, "id")
    rows = ordered.values_list("id", "kept", "created_at")
    entries = [_entry(i, kept, created, True, "") for i, kept, created in (rows[:limit] if limit else rows)]
    return entries, stats["n"], stats["total"]


def listing(
    user,
    project: Project,
    path: str = "",
    *,
    order_by: str = "size",
    sort_order: str = "desc",
    max_results: int | None = 10,
    recursive: bool = False,
) -> dict:
    """What is stored at ``path``: its entries (folders with the size of all they hold), sorted.

    With ``recursive`` the entries are every file below ``path`` by its
    full path, in path order (what a download of the folder fetches).
    """
    path = clean_path(path)
    _sort([], order_by, sort_order)  # the choices are checked before anything is read
    more_count = more_bytes = 0
    if is_task_path(path):
        items = _task_listing(user, project, path, recursive)
    else:
        files = [(f.path, f.size, f.created_at) for f in uploaded_files(project, path)]
        if path and not files:
            raise _nothing_at(project, path)
        if recursive:
            items = [_entry(p, size, created, False, "") for p, size, created in files]
        elif len(files) == 1 and files[0][0] == path:
            items = [_entry(path, files[0][1], files[0][2], False, "")]
        else:
            prefix = path + "/" if path else ""
            items = _children(path, ((p.removeprefix(prefix), s, c) for p, s, c in files))
        if not path and not recursive:
            folders, count, kept = _first_task_folders(project, order_by, sort_order, max_results)
            items += folders
            more_count, more_bytes = count - len(folders), kept - sum(f["size_bytes"] for f in folders)
    total = sum(i["size_bytes"] for i in items) + more_bytes
    if recursive:
        items.sort(key=lambda e: e["path"])
    else:
        items = _sort(items, order_by, sort_order)
    count = len(items) + more_count
    if max_results is not None and not recursive:
        items = items[:max_results]
    return {"project": project.name, "path": path, "items": items, "count": count, "total_bytes": total}


def _task_listing(user, project: Project, path: str, recursive: bool) -> list[dict]:
    where = task_path(user, project, path)
    task = where.task
    if where.part is None:
        parts = [
            ("input", task.input_path, task.input_size),
            ("outputs", task.output_path, task.output_size),
        ]
        kept = [(name, size or 0) for name, stored, size in parts if stored]
        if not kept:
            raise _nothing_at(project, path)
        if not recursive:
            return [_entry(name, size, task.created_at, True, task.id) for name, size in kept]
        return [
            entry
            for name, _ in kept
            for entry in _task_listing(user, project, f"{task.id}/{name}", recursive=True)
        ]
    members = where.members()
    if where.member and not members:
        raise _nothing_at(project, path)
    base = f"{task.id}/{where.part}"
    files = [(i.filename, i.file_size, task.created_at) for i in members]
    if recursive:
        return [_entry(f"{base}/{name}", size, created, False, "") for name, size, created in files]
    if len(files) == 1 and files[0][0] == where.member:
        return [_entry(path, files[0][1], task.created_at, False, "")]
    prefix = where.member + "/" if where.member else ""
    parent = f"{base}/{where.member}" if where.member else base
    return _children(parent, ((n.removeprefix(prefix), s, c) for n, s, c in files))


def usage(project: Project) -> dict:
    """Bytes the project stores: uploaded files, tasks' inputs and outputs, and its limit."""
    uploaded = sum(StoredFile.objects.filter(project=project).values_list("size", flat=True))
    total = quotas.stored_bytes(project_id=project.pk)
    return {
        "project": project.name,
        "total_bytes": total,
        "uploaded_bytes": uploaded,
        "task_bytes": total - uploaded,
        "max_storage_gb": quotas.for_project(project).max_storage_gb,
    }


# -- changing ----------------------------------------------------------------------------------


def _writable_path(project: Project, path: str, field: str = "path") -> str:
    """``path`` as a new file's: not a task's folder, not under a file, not a folder already."""
    path = clean_path(path, field=field, root_ok=False)
    if is_task_path(path):
        raise Refused(
            f"{field}: {path.split('/', 1)[0]!r} has the shape of a task id, which names task folders "
            "(read-only). Choose another folder name.",
            field=field,
        )
    parents = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
    files = StoredFile.objects.filter(project=project)
    if clash := files.filter(path__in=parents).values_list("path", flat=True).first():
        raise Refused(
            f"{field}: {clash!r} is a file, so it cannot hold {path!r}. Remove it or choose another path.",
            code="conflict",
            field=field,
            status=409,
        )
    if files.filter(path__startswith=path + "/").exists():
        raise Refused(
            f"{field}: {path!r} is a folder; give the path of a file inside it.",
            code="conflict",
            field=field,
            status=409,
        )
    return path


def _index(user, project: Project, path: str, size: int) -> None:
    """Record a file stored at ``path`` (replacing the row of a file stored there before)."""
    try:
        with transaction.atomic():
            StoredFile.objects.update_or_create(
                project=project,
                path=path,
                defaults={"size": size, "owner": user, "created_at": timezone.now()},
            )
    except IntegrityError:  # stored at the same moment by another request: its row stands
        pass


def _adding(project: Project, path: str, size: int) -> int:
    """Bytes a file of ``size`` at ``path`` adds (less what it replaces)."""
    old = StoredFile.objects.filter(project=project, path=path).values_list("size", flat=True).first()
    return size - (old or 0)


def upload(user, project: Project, path: str, chunks: Iterable[bytes], *, size: int) -> dict:
    """Store one file at ``path``, in place of a file there; refused past the quota before a byte."""
    access.require(user, "write-storage", project)
    path = _writable_path(project, path)
    limit = settings.SIMDECK_MAX_UPLOAD_BYTES
    if size > limit:
        raise Refused(
            f"The file has {size} bytes; this server accepts at most {limit} in one file.",
            code="too_large",
            field="size",
            status=413,
        )
    quotas.check_storage(user, project, _adding(project, path, size), doing=f"upload {path!r}")
    try:
        stored = storage.receive_file(
            storage.project_file_name(project.pk, path), chunks, expected_size=size, max_bytes=limit
        )
    except storage.UploadError as exc:
        raise Refused(str(exc), code="bad_upload", field="body") from None
    _index(user, project, path, stored)
    return {"project": project.name, "path": path, "size_bytes": stored}


def remove(user, project: Project, path: str) -> dict:
    """Delete a file, or a folder and all it holds; a task's folder removes the task's stored files."""
    path = clean_path(path, root_ok=False)
    if is_task_path(path):
        where = task_path(user, project, path)
        if where.part is not None:
            raise Refused(
                f"A task's input and outputs are removed together: remove {where.task.id!r}, "
                "the task's folder.",
                field="path",
            )
        access.require(user, "remove-files", where.task)
        done = remove_outputs(where.task, actor=user)
        return {"project": project.name, "removed": len(done["removed"]), "freed_bytes": done["freed_bytes"]}
    access.require(user, "write-storage", project)
    files = list(uploaded_files(project, path))
    if not files:
        raise _nothing_at(project, path)
    freed = 0
    for f in files:
        # Row first: a file whose delete fails is then unlisted, never listed and gone.
        StoredFile.objects.filter(pk=f.pk).delete()
        storage.delete(storage.project_file_name(project.pk, f.path))
        freed += f.size
    return {"project": project.name, "removed": len(files), "freed_bytes": freed}


def copy(user, project: Project, source: str, target: str) -> dict:
    """Copy a file or folder (an uploaded one, or of a task's folder) to ``target``.

    A file is copied to the path ``target``; a folder's files keep their
    places below it. Files of a task's archive are unpacked on the way.
    """
    access.require(user, "write-storage", project)
    source = clean_path(source, field="source", root_ok=False)
    target = clean_path(target, field="target", root_ok=False)
    if target == source or target.startswith(source + "/"):
        raise Refused("target: a file or folder cannot be copied into itself.", field="target")
    if is_task_path(source):
        where = task_path(user, project, source)
        if where.part is None:
            raise Refused(
                f"source: copy {source}/outputs or {source}/input, the task's folder itself holds both.",
                field="source",
            )
        members = where.members()
        if not members:
            raise _nothing_at(project, source)
        prefix = where.member + "/" if where.member else ""
        single = len(members) == 1 and members[0].filename == where.member
        plan = [
            (m.filename, target if single else f"{target}/{m.filename.removeprefix(prefix)}", m.file_size)
            for m in members
        ]
    else:
        files = list(uploaded_files(project, source))
        if not files:
            raise _nothing_at(project, source)
        plan = [(f.path, target + f.path.removeprefix(source), f.size) for f in files]
        where = None
    plan = [(src, _writable_path(project, dest, "target"), size) for src, dest, size in plan]
    adding = sum(_adding(project, dest, size) for _, dest, size in plan)
    quotas.check_storage(user, project, adding, doing=f"copy {source!r}")
    if where is None:
        for src, dest, size in plan:
            storage.copy_stored(
                storage.project_file_name(project.pk, src), storage.project_file_name(project.pk, dest)
            )
            _index(user, project, dest, size)
    else:
        with storage.open_file(where.require_archive()) as f:
            for src, dest, size in plan:
                member, _size = archives.open_file(f, src)
                with member:
                    storage.receive_file(
                        storage.project_file_name(project.pk, dest),
                        iter(lambda m=member: m.read(storage.CHUNK), b""),
                        expected_size=size,
                        max_bytes=size,
                    )
                _index(user, project, dest, size)
    return {"project": project.name, "copied": len(plan), "size_bytes": sum(s for _, _, s in plan)}


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """What a download of one path serves: a stored file whole, or one file of a task's archive."""

    stored: str | None = None  # a stored file's name
    filename: str = ""
    task: Task | None = None
    part: str | None = None
    member: str = ""


def download(user, project: Project, path: str) -> Download:
    """The one file at ``path``; a task's ``input``/``outputs`` folder is served as its zip archive."""
    path = clean_path(path, root_ok=False)
    if is_task_path(path):
        where = task_path(user, project, path)
        if where.part is None:
            raise Refused(
                f"{path!r} is a task's folder; download {path}/outputs or {path}/input.",
                field="path",
            )
        if not where.member:
            return Download(stored=where.require_archive(), filename=f"{where.task.id}-{where.part}.zip")
        return Download(task=where.task, part=where.part, member=where.member, filename=where.member)
    row = StoredFile.objects.filter(project=project, path=path).first()
    if row is None:
        if uploaded_files(project, path).exists():
            raise Refused(
                f"{path!r} is a folder: download its files one by one (list them with recursive), or "
                "use simdeck.storage.download() or 'simdeck storage download', which do.",
                field="path",
            )
        raise _nothing_at(project, path)
    return Download(stored=storage.project_file_name(project.pk, path), filename=path)


def signed_url(user, project: Project, path: str, api_path: str) -> str:
    """A URL to fetch ``path`` from: the bucket's presigned one, or ``api_path`` (needs the API key)."""
    what = download(user, project, path)
    if what.stored:
        url = storage.download_url(what.stored, safe_filename(what.filename), "application/octet-stream")
        if url:
            return url
    return api_path


# -- a task's outputs kept in a storage folder (run(..., storage_dir=...)) -------------------------


def check_storage_dir(project: Project, storage_dir: str) -> str:
    """``storage_dir`` checked as a folder new files can go in; "" for none."""
    if not (storage_dir or "").strip():
        return ""
    path = clean_path(storage_dir, field="storage_dir", root_ok=False)
    _writable_path(project, f"{path}/x", field="storage_dir")
    return path


def keep_outputs(task: Task, output_name: str) -> str | None:
    """Copy the task's stored outputs (``output_name``) to ``<storage_dir>/<id>/outputs.zip``.

    Returns the path stored, or None when it could not be (the task's own
    outputs are stored whatever happens here).
    """
    if not task.storage_dir:
        return None
    path = f"{task.storage_dir}/{task.id}/outputs.zip"
    try:
        _writable_path(task.project, path, field="storage_dir")
    except Refused:
        return None
    name = storage.project_file_name(task.project_id, path)
    storage.copy_stored(output_name, name)
    _index(task.owner, task.project, path, storage.size(name))
    return path
