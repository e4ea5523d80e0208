"""Where a task's files live in storage, and moving them in and out.

Everything goes through Django's default storage, so the same code serves a
local folder and an S3-compatible bucket shared by machines on many hosts
(:mod:`tasks_app.bucket`). Shortcuts only a local folder allows, such as
renaming a file into place, fall back to the storage API for a bucket.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from botocore.exceptions import BotoCoreError, ClientError
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


def upload_name(task_id: str) -> str:
    """Where a client sends an input straight to the bucket, before it is checked."""
    return f"tasks/{task_id}/upload/input.zip"


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


def project_file_name(project_id: int, path: str) -> str:
    """Where a file of a project's storage is kept (``path`` checked by the caller)."""
    return f"storage/{project_id}/{path}"


class UploadError(ValueError):
    pass


class StorageUnavailable(OSError):
    """The bucket refused or could not be reached; the message says what to change."""

    def __init__(self, message: str):
        super().__init__(0, message)

    def __str__(self) -> str:
        return self.strerror


def explain(exc: Exception) -> str:
    describe = getattr(default_storage, "explain", None)
    return describe(exc) if describe else str(exc)


@contextmanager
def refusals() -> Iterator[None]:
    """Turn what the bucket answers into :class:`StorageUnavailable`, with its explanation."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(explain(exc)) from exc


def check() -> str:
    """One line on where files are stored; raises :class:`StorageUnavailable` if the bucket refuses."""
    probe = getattr(default_storage, "check", None)
    if probe is None:
        return f"in the folder {default_storage.location}"
    with refusals():
        probe()
    where = f" at {default_storage.endpoint_url}" if default_storage.endpoint_url else ""
    return f"in bucket {default_storage.bucket_name!r}{where}"


def download_url(name: str, filename: str, content_type: str = "application/octet-stream") -> str | None:
    """A short-lived URL that serves the stored file itself, or None where files are served by us."""
    presign = getattr(default_storage, "download_url", None)
    if presign is None:
        return None
    with refusals():
        return presign(name, filename, content_type)


def receive_upload(
    task_id: str, chunks: Iterable[bytes], *, expected_size: int, expected_sha256: str, max_bytes: int
) -> tuple[str, int, str]:
    """Stream an upload to storage, checking its size and checksum on the way.

    Returns (storage name, size, sha256). Nothing is stored when a check fails.
    """
    digest = hashlib.sha256()
    with _spooled(chunks, expected_size, max_bytes, "Submit the task again.", digest) as spool:
        if digest.hexdigest() != expected_sha256.lower():
            raise UploadError("The upload is corrupt: its SHA-256 checksum does not match. Submit again.")
        _check_archive(spool)
        spool.seek(0)
        with refusals():
            stored = _replace(input_name(task_id), File(spool))
    return stored, expected_size, digest.hexdigest()


@contextmanager
def _spooled(chunks: Iterable[bytes], expected_size: int, max_bytes: int, again: str, digest=None):
    """The chunks in a temporary file, rewound, once exactly ``expected_size`` bytes came.

    Read as they arrive, so nothing is stored from an upload that turns out
    too long or cut short; ``digest`` (a hashlib object) sees every byte.
    """
    size = 0
    with tempfile.TemporaryFile() as spool:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes or size > expected_size:
                raise UploadError(
                    f"The upload is larger than announced ({expected_size} bytes)."
                    if size > expected_size
                    else f"The upload exceeds the limit of {max_bytes} bytes."
                )
            if digest is not None:
                digest.update(chunk)
            spool.write(chunk)
        if size != expected_size:
            raise UploadError(f"The upload was cut short: {size} of {expected_size} bytes arrived. {again}")
        spool.seek(0)
        yield spool


# Inputs up to this size go to a bucket in one presigned PUT; larger ones in parts of PART_BYTES.
SINGLE_PUT_BYTES = 100 * 1024 * 1024
PART_BYTES = 64 * 1024 * 1024


def direct_uploads() -> bool:
    """Whether clients can send inputs straight to storage (a bucket), sparing the web server."""
    return hasattr(default_storage, "start_upload")


def start_direct_upload(task_id: str, size: int) -> dict:
    """Presigned PUTs for sending a task's input straight to the bucket (to :func:`upload_name`)."""
    with refusals():
        return default_storage.start_upload(upload_name(task_id), size, PART_BYTES, SINGLE_PUT_BYTES)


def discard_direct_upload(task_id: str) -> None:
    """Remove what a client sent straight to the bucket for a task that will never have it."""
    if direct_uploads():
        with refusals():
            default_storage.discard_uploads(upload_name(task_id))


def finish_direct_upload(
    task_id: str, upload_id: str | None, etags: dict[int, str], *, expected_size: int, expected_sha256: str
) -> tuple[str, int, str]:
    """Check an input sent straight to the bucket as :func:`receive_upload` checks one sent to us.

    The archive is read back from the bucket to check its checksum, a
    piece at a time; what fails a check is deleted. What passes is copied
    (inside the bucket) to the input's own name, where the presigned URLs
    cannot change it any more. Returns (storage name, size, sha256).
    """
    name = upload_name(task_id)
    try:
        with refusals():
            default_storage.finish_upload(name, upload_id, etags)
    except StorageUnavailable as exc:
        with refusals():
            default_storage.abort_upload(name, upload_id)
        raise UploadError(f"The upload could not be completed: {exc} Submit the task again.") from None
    try:
        with refusals():
            size = default_storage.size(name) if default_storage.exists(name) else 0
        if size != expected_size:
            raise UploadError(
                f"The upload was cut short: {size} of {expected_size} bytes arrived. Submit the task again."
            )
        digest = hashlib.sha256()
        with open_file(name) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != expected_sha256.lower():
            raise UploadError("The upload is corrupt: its SHA-256 checksum does not match. Submit again.")
        with open_file(name) as f:
            _check_archive(f)
    except UploadError:
        with refusals():
            default_storage.delete(name)
        raise
    with refusals():
        default_storage.move_object(name, input_name(task_id))
    return input_name(task_id), size, digest.hexdigest()


def start_direct_put(name: str, size: int) -> dict:
    """Presigned PUTs for a machine elsewhere to store ``size`` bytes as ``name`` in the bucket itself."""
    with refusals():
        return default_storage.start_upload(name, size, PART_BYTES, SINGLE_PUT_BYTES)


def finish_direct_put(name: str, upload_id: str | None, etags: dict[int, str], expected_size: int) -> None:
    """Complete what :func:`start_direct_put` began, once the bucket holds exactly ``expected_size`` bytes."""
    try:
        with refusals():
            default_storage.finish_upload(name, upload_id, etags)
            size = default_storage.size(name) if default_storage.exists(name) else 0
    except StorageUnavailable as exc:
        with refusals():
            default_storage.abort_upload(name, upload_id)
        raise UploadError(f"The upload could not be completed: {exc} Send it again.") from None
    if size != expected_size:
        raise UploadError(
            f"The upload was cut short: {size} of {expected_size} bytes arrived. Send it again."
        )


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
    with refusals():
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
    with open(path, "rb") as f, refusals():
        return _replace(name, File(f))


def _replace(name: str, content: File) -> str:
    """Save ``content`` as ``name``, in place of what was stored there."""
    if not getattr(default_storage, "file_overwrite", False) and default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, content)


def open_file(name: str) -> BinaryIO:
    with refusals():
        return default_storage.open(name, "rb")


def open_local(name: str) -> BinaryIO:
    """:func:`open_file`, straight from the folder when storage is local (a machine opens every input)."""
    if isinstance(default_storage, FileSystemStorage):
        return open(default_storage.path(name), "rb")
    return open_file(name)


def exists(name: str) -> bool:
    if not name:
        return False
    with refusals():
        return default_storage.exists(name)


def receive_file(name: str, chunks: Iterable[bytes], *, expected_size: int, max_bytes: int) -> int:
    """Stream a file to storage as ``name``, in place of what was there; returns its size.

    Nothing is stored when more or fewer bytes arrive than announced.
    """
    with _spooled(chunks, expected_size, max_bytes, "Send it again.") as spool, refusals():
        _replace(name, File(spool))
    return expected_size


def copy_stored(source: str, target: str) -> None:
    """Copy a stored file to another name, in place of what was there (inside the bucket for a bucket)."""
    copy = getattr(default_storage, "copy_object", None)
    with refusals():
        if copy is not None and not getattr(default_storage, "_in_local_folder", lambda n: False)(source):
            copy(source, target)
            return
        with default_storage.open(source, "rb") as f:
            _replace(target, File(f))


def delete(name: str) -> None:
    with refusals():
        default_storage.delete(name)


def size(name: str) -> int:
    with refusals():
        return default_storage.size(name)
