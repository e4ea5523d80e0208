"""Where a task's files live in storage, and moving them in and out.

Everything goes through Django's default storage, so the same code serves a
local folder and an S3-compatible bucket shared by machines on many hosts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage

from tasks_app import archives

CHUNK = 1 << 20


def input_name(task_id: str) -> str:
    return f"tasks/{task_id}/input.zip"


def output_name(task_id: str, attempt: int = 1) -> str:
    """Where an attempt's outputs are stored; see :func:`log_name`."""
    if attempt <= 1:
        return f"tasks/{task_id}/outputs.zip"
    return f"tasks/{task_id}/attempt-{attempt}/outputs.zip"


def log_name(task_id: str, stream: str, attempt: int = 1) -> str:
    """Where an attempt's log is stored: each attempt has its own.

    A machine that lost its task (reclaimed, thought dead) may wake up and
    store what it logged after the next attempt has stored its own; with one
    name per attempt it cannot overwrite them. The first attempt keeps the
    plain name, so logs stored before attempts had names of their own read
    as they did.
    """
    if attempt <= 1:
        return f"tasks/{task_id}/logs/{stream}.txt"
    return f"tasks/{task_id}/logs/attempt-{attempt}/{stream}.txt"


class UploadError(ValueError):
    pass


def receive_upload(
    task_id: str, chunks: Iterable[bytes], *, expected_size: int, expected_sha256: str, max_bytes: int
) -> tuple[str, int, str]:
    """Stream an upload to storage, checking its size and checksum on the way.

    Returns (storage name, size, sha256). Nothing is stored when a check fails.
    """
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as spool:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes or size > expected_size:
                raise UploadError(
                    f"The upload is larger than announced ({expected_size} bytes)"
                    if size > expected_size
                    else f"The upload exceeds the limit of {max_bytes} bytes."
                )
            digest.update(chunk)
            spool.write(chunk)
        if size != expected_size:
            raise UploadError(
                f"The upload was cut short: {size} of {expected_size} bytes arrived. Submit the task again."
            )
        if digest.hexdigest() != expected_sha256.lower():
            raise UploadError("The upload is corrupt: its SHA-256 checksum does not match. Submit again.")
        spool.seek(0)
        _check_archive(spool)
        spool.seek(0)
        name = input_name(task_id)
        if default_storage.exists(name):
            default_storage.delete(name)
        stored = default_storage.save(name, File(spool))
    return stored, size, digest.hexdigest()


def check_input(data: bytes) -> str:
    """Check an input archive held in memory as :func:`receive_upload` does; returns its SHA-256."""
    import io

    _check_archive(io.BytesIO(data))
    return hashlib.sha256(data).hexdigest()


def save_input(task_id: str, data: bytes) -> str:
    """Store an input archive already checked (see :func:`check_input`); returns its storage name.

    A sweep stores its input once for each of its tasks: in a local folder
    the file is written straight to its new place, without the storage
    API's checks of the name and search for a free one (a new task's name
    is its own).
    """
    from django.core.files.base import ContentFile

    name = input_name(task_id)
    plain = isinstance(default_storage, FileSystemStorage) and (
        default_storage.file_permissions_mode is None and default_storage.directory_permissions_mode is None
    )
    if plain:
        path = Path(default_storage.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pass  # left by a batch that was rolled back: the storage API picks another name
        else:
            with open(fd, "wb") as out:
                out.write(data)
            return name
    return default_storage.save(name, ContentFile(data))


def _check_archive(spool: BinaryIO) -> None:
    """Refuse at once what a machine would refuse to unpack, before it waits in a queue."""
    try:
        archives.list_files(spool)
    except archives.UnsafeArchive as exc:
        raise UploadError(f"{exc} Zip the input folder's own files, without links.") from None
    except zipfile.BadZipFile:
        raise UploadError("The input is not a zip archive; send the input folder zipped.") from None


def save_file(name: str, path: Path) -> str:
    """Store the file at ``path`` as ``name``, in place of what was stored there; returns the name.

    In a local folder the file is renamed over its place when both are on
    one filesystem (``path`` is then gone), otherwise copied next to it and
    renamed over it: a reader sees the old file or the new one, never a
    part. A machine stores a task's logs and outputs this way: through the
    storage API, checking for the old file, deleting it and saving anew
    cost more than the rest of a tiny task's storing.
    """
    if isinstance(default_storage, FileSystemStorage):
        target = Path(default_storage.path(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
            return name
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            shutil.copyfile(path, partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return name
    if default_storage.exists(name):
        default_storage.delete(name)
    with open(path, "rb") as f:
        return default_storage.save(name, File(f))


def open_file(name: str) -> BinaryIO:
    return default_storage.open(name, "rb")


def open_local(name: str) -> BinaryIO:
    """:func:`open_file`, straight from the folder when storage is local (a machine opens every input)."""
    if isinstance(default_storage, FileSystemStorage):
        return open(default_storage.path(name), "rb")
    return open_file(name)


def exists(name: str) -> bool:
    return bool(name) and default_storage.exists(name)
