"""Stored files for download, under names made safe for the ``Content-Disposition`` header."""

from __future__ import annotations

import mimetypes
import unicodedata

from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.utils.http import content_disposition_header

from tasks_app import storage

MAX_NAME = 200


def safe_filename(name: str, default: str = "download") -> str:
    """The last part of ``name`` without control characters, separators or leading dots.

    File names inside an archive come from users: a newline would break the
    header, a path would suggest where to save, a leading dot would hide it.
    """
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(ch for ch in last if unicodedata.category(ch)[0] != "C")
    kept = kept.strip().lstrip(".").strip()
    return kept[:MAX_NAME] or default


def attachment(name: str) -> str:
    """A ``Content-Disposition`` value offering ``name`` for saving (RFC 6266, non-ASCII as RFC 5987)."""
    return content_disposition_header(True, safe_filename(name))


def stored_file(name: str, filename: str) -> HttpResponse:
    """A stored file offered as ``filename``: the bucket's presigned URL, or streamed from the folder.

    From a bucket the file goes straight to whoever asked, and the web
    server passes on no byte of it.
    """
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if url := storage.download_url(name, safe_filename(filename), content_type):
        response = HttpResponseRedirect(url)
        response["Cache-Control"] = "private, no-store"  # the URL expires, and is the caller's own
        return response
    return FileResponse(storage.open_file(name), as_attachment=True, filename=filename)


CHUNK = 1 << 20


def archive_member(filename: str, member, size: int, archive) -> StreamingHttpResponse:
    """One file of an open zip archive (``member``, ``size`` bytes), unzipped as it is sent.

    The member and its archive are closed when the response ends, however it ends.
    """

    def stream():
        try:
            while chunk := member.read(CHUNK):
                yield chunk
        finally:
            member.close()
            archive.close()

    response = StreamingHttpResponse(stream(), content_type="application/octet-stream")
    response["Content-Length"] = str(size)
    response["Content-Disposition"] = attachment(filename)
    return response
