"""A project's storage: list, measure, upload, download, copy and remove its files.

Paths are relative to the root of the project's storage (see
:mod:`tasks_app.services.project_storage`); ``project`` names the project,
the caller's personal one by default. Reading needs a role in the project,
changing it a member's. From a bucket, a download is a redirect to a
presigned URL of the bucket (302), as for a task's outputs.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from django.http import HttpRequest
from ninja import Query, Router

from tasks_app import access, downloads, inputs, services
from tasks_app.api import schemas as s
from tasks_app.api.common import ERRORS
from tasks_app.models import Project
from tasks_app.services import project_storage

router = Router(tags=["storage"])

CHUNK = 1 << 20
PROJECT = Query(None, description="The project whose storage; your personal project by default.")


def _project(request: HttpRequest, name: str | None) -> Project:
    """The project named, if the caller has a role in it (404 otherwise), or their personal one."""
    if not (name or "").strip():
        return access.personal_project(request.user)
    return access.project_for(request.user, inputs.text("project", name.strip()))


@router.get("", response={200: s.StorageListOut, **ERRORS})
def list_storage(
    request: HttpRequest,
    path: str = Query("", description="The folder to list; the root by default."),
    project: str | None = PROJECT,
    max_results: int = Query(100, ge=1, le=10_000, description="At most this many entries."),
    order_by: str = Query("size", description="size, creation_time or name."),
    sort_order: str = Query("desc", description="asc or desc."),
    recursive: bool = Query(False, description="Every file below the folder, by full path, instead."),
):
    """The entries of a folder of the project's storage, with their sizes; folders hold a task's files too."""
    return project_storage.listing(
        request.user,
        _project(request, project),
        path,
        order_by=order_by,
        sort_order=sort_order,
        max_results=max_results,
        recursive=recursive,
    )


@router.get("/size", response={200: s.StorageSizeOut, **ERRORS})
def storage_size(request: HttpRequest, project: str | None = PROJECT):
    """The bytes the project stores: uploaded files and its tasks' inputs and outputs."""
    return project_storage.usage(_project(request, project))


@router.put("/files/{path:path}", response={200: s.StoredFileOut, **ERRORS})
def upload_file(request: HttpRequest, path: str, project: str | None = PROJECT):
    """Store the raw request body as the file at ``path``, in place of a file there.

    Send its size in ``X-File-Size``; nothing is stored unless exactly that
    many bytes arrive, nor when it would take the project past its quota.
    """
    target = _project(request, project)
    access.require(request.user, "write-storage", target)
    try:
        size = int(request.headers.get("X-File-Size", ""))
    except ValueError:
        raise services.Refused("Send the file's size in X-File-Size.", field="X-File-Size") from None
    if size < 0:
        raise services.Refused("X-File-Size is a number of bytes, 0 or more.", field="X-File-Size")
    chunks = iter(lambda: request.read(CHUNK), b"")
    return project_storage.upload(request.user, target, path, chunks, size=size)


@router.get("/files/{path:path}", response={200: None, **ERRORS})
def download_file(request: HttpRequest, path: str, project: str | None = PROJECT):
    """One stored file; a task's ``<id>/outputs`` or ``<id>/input`` as its zip archive."""
    what = project_storage.download(request.user, _project(request, project), path)
    if what.stored:
        return downloads.stored_file(what.stored, what.filename)
    opener = services.open_input_file if what.part == "input" else services.open_output_file
    return downloads.archive_member(what.member, *opener(what.task, what.member))


@router.delete("/files/{path:path}", response={200: s.StorageRemovedOut, **ERRORS})
def remove_file(request: HttpRequest, path: str, project: str | None = PROJECT):
    """Remove a file, or a folder with all it holds; a task's folder removes its stored input and outputs."""
    return project_storage.remove(request.user, _project(request, project), path)


@router.post("/copy", response={200: s.StorageCopiedOut, **ERRORS})
def copy(request: HttpRequest, payload: s.StorageCopyIn):
    """Copy a file or folder to ``target`` within the project's storage; a task's files are unpacked."""
    target = _project(request, payload.project)
    return project_storage.copy(request.user, target, payload.source, payload.target)


@router.post("/signed-urls", response={200: s.SignedUrlsOut, **ERRORS})
def signed_urls(request: HttpRequest, payload: s.SignedUrlsIn):
    """A URL to download each path from: presigned by the bucket where files are in one."""
    project = _project(request, payload.project)
    query = "?" + urlencode({"project": project.name})
    urls = [
        project_storage.signed_url(
            request.user,
            project,
            path,
            request.build_absolute_uri(f"/api/v1/storage/files/{quote(path.strip('/'))}{query}"),
        )
        for path in payload.paths
    ]
    return {"urls": urls}
