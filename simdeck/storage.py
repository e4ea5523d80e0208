"""Your projects' storage: files you upload for tasks to use, and your tasks' inputs and outputs.

    import simdeck

    simdeck.storage.upload("meshes", "my-data/meshes")   # a folder's files, or one file
    simdeck.storage.listdir()                             # a table with sizes and a total
    simdeck.storage.download("my-data/meshes", "here")    # into here/my-data/meshes/
    simdeck.storage.remove("my-data", confirm=False)

Paths are relative to the root of a project's storage ("/" names the root);
each call takes ``project``, your personal project by default. Each task
with stored files is a folder named by its id, holding ``input/`` and
``outputs/`` (read-only): ``<task id>/outputs/result.csv`` is a file of its
outputs, and a path a new task can take with ``run(..., remote_assets=[...])``.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from simdeck import api, render
from simdeck.errors import InvalidInput, SimdeckError

GB = 1000**3
TASK_ID = re.compile(r"[a-z0-9]{25}")


def _client() -> api.Client:
    return api.client()


def _params(project: str | None, **more: Any) -> dict:
    return {k: v for k, v in ({"project": project} | more).items() if v is not None}


def _remote(path: str | os.PathLike) -> str:
    """A storage path as the server reads it: POSIX separators, no leading "./"; "/" for the root.

    What the server would refuse is refused here, with its words: an HTTP
    client would otherwise resolve a ".." in the URL before sending it.
    """
    text = str(path).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    if text.strip() in ("", "/", "."):
        return ""
    if text.startswith("/") or (text.split("/")[0].endswith(":")):
        raise InvalidInput(
            f"{text!r} is absolute. Storage paths are relative to your project's storage: "
            f"write {text.lstrip('/')!r} instead.",
            field="path",
        )
    if ".." in text.split("/"):
        raise InvalidInput(f"{text!r} climbs out with '..'; storage paths stay inside it.", field="path")
    return text


def _file_url(path: str) -> str:
    return "/storage/files/" + quote(_remote(path).strip("/"))


# -- looking ---------------------------------------------------------------------------------


def listdir(
    path: str = "/",
    max_results: int | None = 10,
    order_by: str = "size",
    sort_order: str = "desc",
    *,
    project: str | None = None,
    print_results: bool = True,
) -> builtins.list[dict]:
    """List a folder of the storage, biggest first; print a table with sizes and a total.

    ``order_by`` is "size", "creation_time" or "name"; ``sort_order`` "desc"
    or "asc"; ``max_results`` None lists everything. Returns the rows as
    dicts (``name``, ``path``, ``is_dir``, ``size`` in bytes, ``creation_time``),
    ready for a DataFrame.
    """
    if order_by not in ("size", "creation_time", "name"):
        raise ValueError(f"order_by is 'size', 'creation_time' or 'name', not {order_by!r}.")
    if sort_order not in ("asc", "desc"):
        raise ValueError(f"sort_order is 'asc' or 'desc', not {sort_order!r}.")
    limit = 10_000 if max_results is None else max_results
    if limit < 1:
        raise ValueError("max_results is at least 1 (or None for everything).")
    data = _client().get(
        "/storage",
        params=_params(
            project, path=_remote(path), max_results=limit, order_by=order_by, sort_order=sort_order
        ),
    )
    rows = [
        {
            "name": item["name"] + ("/" if item["is_dir"] else ""),
            "path": item["path"],
            "is_dir": item["is_dir"],
            "size": item["size_bytes"],
            "creation_time": render.parse_time(item["created_at"]),
        }
        for item in data["items"]
    ]
    if print_results:
        from simdeck.cli_common import out

        out.print(table(data))
    return rows


def table(data: dict):
    """The listing the server answered, as the table ``listdir`` prints, with its total below."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    where = f"{data['project']}:/{data['path']}"
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title=where, title_justify="left")
    grid.add_column("Name", overflow="fold")
    grid.add_column("Size", justify="right", no_wrap=True)
    grid.add_column("Created", no_wrap=True)
    for item in data["items"]:
        name = item["name"] + ("/" if item["is_dir"] else "")
        created = render.when(render.parse_time(item["created_at"])) if item["created_at"] else ""
        grid.add_row(name, render.size(item["size_bytes"]), created)
    shown, count = len(data["items"]), data["count"]
    more = f"; {count - shown} more not shown (raise max_results, or --max-results)" if count > shown else ""
    total = Text(
        f"Total: {render.size(data['total_bytes'])} in {count} entr{'y' if count == 1 else 'ies'}{more}."
    )
    return Group(grid, total) if data["items"] else Text(f"Nothing is stored in {where}.")


def get_space_used(*, project: str | None = None) -> float:
    """The storage the project uses, in GB: uploaded files and its tasks' inputs and outputs."""
    return _client().get("/storage/size", params=_params(project))["total_bytes"] / GB


def get_signed_urls(
    paths: builtins.list[str] | str, operation: str = "download", *, project: str | None = None
) -> builtins.list[str]:
    """A URL to download each path from, in order.

    Where the server keeps files in a bucket they are presigned (anyone
    holding one may fetch the file until it expires); otherwise they are
    the API's, and need your API key. Uploads go through :func:`upload`.
    """
    if operation != "download":
        raise ValueError(
            f"operation {operation!r} is not offered: URLs are for downloads. Upload with "
            "simdeck.storage.upload(), which checks the path and the quota."
        )
    paths = [paths] if isinstance(paths, str) else builtins.list(paths)
    body = {"project": project, "paths": [_remote(p) for p in paths]}
    return _client().post("/storage/signed-urls", json=body, retry=True)["urls"]


# -- uploading -----------------------------------------------------------------------------------


def _local_files(local_path: Path) -> builtins.list[tuple[Path, str]]:
    """(file, path below the uploaded folder) pairs; a link anywhere is refused, not followed."""
    if local_path.is_symlink():
        raise ValueError(f"{local_path} is a link; links are not uploaded. Upload what it points to.")
    if not local_path.exists():
        raise FileNotFoundError(f"{local_path} does not exist; check the path.")
    if local_path.is_file():
        return [(local_path, local_path.name)]
    found = []
    for folder, dirs, files in os.walk(local_path):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            if path.is_symlink():
                raise ValueError(
                    f"{path} is a link; links are not uploaded. Replace it with the file it points to."
                )
            if name in files:
                found.append((path, path.relative_to(local_path).as_posix()))
        dirs.sort()
    if not found:
        raise ValueError(f"The folder {local_path} is empty; there is nothing to upload.")
    return sorted(found, key=lambda pair: pair[1])


def upload(
    local_path: str | os.PathLike, remote_dir: str, *, project: str | None = None
) -> builtins.list[str]:
    """Upload a file into ``remote_dir``, or a folder's files (keeping their places) into it.

    A file already at a path is replaced. Returns the storage paths written.
    """
    files = _local_files(Path(local_path))
    remote_dir = _remote(remote_dir).strip("/")
    total = sum(path.stat().st_size for path, _ in files)
    written = []
    client = _client()
    with _bar(f"Uploading {Path(local_path).name}", total) as advance:
        for path, rel in files:
            target = f"{remote_dir}/{rel}" if remote_dir else rel
            size = path.stat().st_size
            client.request(
                "PUT",
                _file_url(target),
                params=_params(project),
                content=_read(path, advance),
                headers={"Content-Length": str(size), "X-File-Size": str(size)},
                retry=False,
            )
            written.append(target)
    where = f"{remote_dir}/" if remote_dir else "the root"
    print(f"Uploaded {len(written)} file(s), {render.size(total)}, to {where}.", file=sys.stderr)
    return written


def _read(path: Path, advance) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(api.CHUNK):
            advance(len(chunk))
            yield chunk


class _bar:
    """One progress bar over many files, shown on a terminal (stderr) only."""

    def __init__(self, description: str, total: int | None):
        self.progress = render.transfer_bar()
        self.description, self.total = description, total

    def __enter__(self):
        self.progress.__enter__()
        job = self.progress.add_task(self.description, total=self.total)
        return lambda n: self.progress.advance(job, n)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


# -- downloading -------------------------------------------------------------------------------


def _files_below(path: str, project: str | None) -> builtins.list[dict]:
    data = _client().get("/storage", params=_params(project, path=path, recursive="true", max_results=10_000))
    return [item for item in data["items"] if not item["is_dir"]]


def download(
    remote_path: str,
    local_dir: str | os.PathLike = "",
    decompress: bool = True,
    *,
    project: str | None = None,
) -> Path:
    """Download a file or folder of the storage into ``local_dir``, keeping its path there.

    A task's ``<id>/outputs`` (or ``<id>/input``, or ``<id>`` for both) comes
    as its zip archive, unpacked into ``<id>/outputs/`` with ``decompress``
    and kept as ``<id>/outputs.zip`` without. With ``decompress`` any other
    zip archive downloaded is unpacked where it lies, and removed. Returns
    the local path of what was downloaded.
    """
    remote = _remote(remote_path).strip("/")
    if not remote:
        raise ValueError("Name a file or folder to download, not the whole storage.")
    base = Path(local_dir or ".")
    items = _files_below(remote, project)
    parts = remote.split("/")
    whole_archives = TASK_ID.fullmatch(parts[0]) is not None and (
        len(parts) == 1 or parts[1:] in (["input"], ["outputs"])
    )
    if whole_archives:
        names = sorted({item["path"].split("/")[1] for item in items})
        plan = [(f"{parts[0]}/{name}", f"{parts[0]}/{name}.zip", None) for name in names]
    else:
        plan = [(item["path"], item["path"], item["size_bytes"]) for item in items]
    total = None if whole_archives else sum(size for _, _, size in plan)
    client = _client()
    fetched = []
    with _bar(f"Downloading {remote}", total) as advance:
        for source, local, _size in plan:
            dest = _inside(base, local)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _fetch_into(client, _file_url(source) + _query(project), dest, advance)
            fetched.append(dest)
    if decompress:
        for dest in fetched:
            if dest.suffix == ".zip":
                _unpack(dest, dest.with_suffix("") if whole_archives else dest.parent)
    target = base / remote
    print(f"Downloaded {remote} into {target}.", file=sys.stderr)
    return target


def _query(project: str | None) -> str:
    return f"?project={quote(project)}" if project else ""


def _inside(base: Path, name: str) -> Path:
    dest = (base / name).resolve()
    if not dest.is_relative_to(base.resolve()):
        raise SimdeckError(f"Refusing to write {name!r} outside {base}.")
    return dest


def _fetch_into(client: api.Client, url: str, dest: Path, advance) -> None:
    """Download to ``dest`` through a temporary file next to it: a broken download leaves nothing."""
    fd, tmp_name = tempfile.mkstemp(prefix=".simdeck-", dir=dest.parent)
    tmp = Path(tmp_name)
    seen = [0]

    def progress(done: int, _total: int | None) -> None:
        advance(done - seen[0])
        seen[0] = done

    try:
        with os.fdopen(fd, "wb") as sink:
            client.download(url, sink, progress)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            dest = _inside(into, info.filename)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(api.CHUNK):
                    out.write(chunk)
    archive.unlink()


# -- changing ------------------------------------------------------------------------------------


def remove(remote_path: str, confirm: bool = True, *, project: str | None = None) -> dict:
    """Remove a file, or a folder and all it holds; ``<task id>`` removes that task's stored files.

    With ``confirm`` (the default) it asks first on a terminal; elsewhere
    give ``confirm=False``.
    """
    remote = _remote(remote_path).strip("/")
    if not remote:
        raise ValueError("Name a file or folder to remove; the whole storage is not removed at once.")
    if confirm:
        if not sys.stdin.isatty():
            raise InvalidInput(
                f"Removing {remote!r} cannot be undone, and there is no terminal to ask on: "
                "call remove(..., confirm=False) to remove it without asking."
            )
        answer = input(f"Remove {remote!r} and all it holds? This cannot be undone. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing was removed.", file=sys.stderr)
            return {"removed": 0, "freed_bytes": 0}
    done = _client().delete(_file_url(remote), params=_params(project))
    print(
        f"Removed {remote} ({done['removed']} file(s), {render.size(done['freed_bytes'])}).", file=sys.stderr
    )
    return done


def copy(source: str, target: str, *, project: str | None = None) -> dict:
    """Copy a file or folder to ``target`` within the storage (a task's files are unpacked on the way)."""
    body = {"project": project, "source": _remote(source), "target": _remote(target)}
    done = _client().post("/storage/copy", json=body)
    print(f"Copied {source} to {target} ({done['copied']} file(s)).", file=sys.stderr)
    return done
