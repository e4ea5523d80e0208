"""``simdeck storage …``: files of your projects' storage, and your tasks' files in it."""

from __future__ import annotations

from typing import Annotated

import typer

from simdeck import api, render, storage
from simdeck.cli_common import confirm, note, out, print_json

app = typer.Typer(
    help="Files you upload for tasks to use, and your tasks' inputs and outputs.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", help="Whose storage: a project's name (yours by default).")
]


@app.command("ls")
def ls(
    path: Annotated[str, typer.Argument(help="The folder to list; the root by default.")] = "/",
    max_results: Annotated[int, typer.Option("--max-results", "-m", help="At most this many entries.")] = 10,
    order_by: Annotated[str, typer.Option("--order-by", "-o", help="size, creation_time or name.")] = "size",
    sort_order: Annotated[str, typer.Option("--sort-order", "-s", help="desc or asc.")] = "desc",
    project: ProjectOption = None,
    as_json: JsonOption = False,
):
    """List a folder of the storage with sizes and a total, biggest first."""
    if order_by not in ("size", "creation_time", "name"):
        raise typer.BadParameter("choose size, creation_time or name.", param_hint="--order-by")
    if sort_order not in ("asc", "desc"):
        raise typer.BadParameter("choose asc or desc.", param_hint="--sort-order")
    if max_results < 1:
        raise typer.BadParameter("give 1 or more.", param_hint="--max-results")
    params = {"path": path, "max_results": max_results, "order_by": order_by, "sort_order": sort_order}
    if project:
        params["project"] = project
    data = api.client().get("/storage", params=params)
    if as_json:
        print_json(data)
        return
    out.print(storage.table(data))


@app.command("size")
def size(project: ProjectOption = None, as_json: JsonOption = False):
    """How much the project stores: uploaded files and its tasks' inputs and outputs."""
    data = api.client().get("/storage/size", params={"project": project} if project else {})
    if as_json:
        print_json(data)
        return
    limit = data["max_storage_gb"]
    of = f" of {limit:g} GB allowed" if limit is not None else ""
    out.print(
        f"Project {data['project']} stores {render.size(data['total_bytes'])}{of}: "
        f"{render.size(data['uploaded_bytes'])} uploaded, {render.size(data['task_bytes'])} of tasks."
    )


@app.command("upload")
def upload(
    local_path: Annotated[str, typer.Argument(help="A file, or a folder whose files are uploaded.")],
    remote_dir: Annotated[str, typer.Argument(help="The storage folder to upload into.")],
    project: ProjectOption = None,
):
    """Upload a file or a folder's files into a storage folder (a file there is replaced)."""
    storage.upload(local_path, remote_dir, project=project)


@app.command("download")
def download(
    remote_path: Annotated[str, typer.Argument(help="A file or folder of the storage.")],
    local_dir: Annotated[
        str, typer.Option("--local-dir", "--dir", "-d", help="Where to download into (keeping the path).")
    ] = ".",
    decompress: Annotated[
        bool, typer.Option("--decompress/--no-decompress", help="Unpack zip archives downloaded.")
    ] = True,
    project: ProjectOption = None,
):
    """Download a file or folder; a task's outputs come as their archive, unpacked."""
    storage.download(remote_path, local_dir, decompress, project=project)


@app.command("remove")
def remove(
    paths: Annotated[list[str], typer.Argument(help="Files or folders; a task id removes its stored files.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOption = None,
):
    """Remove files or folders of the storage with all they hold. This cannot be undone."""
    names = ", ".join(paths)
    confirm(f"Remove {names} and all they hold? This cannot be undone.", yes)
    for path in paths:
        storage.remove(path, confirm=False, project=project)
    note(f"Removed {len(paths)} path(s).")
