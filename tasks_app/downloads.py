"""Names of downloaded files, made safe for the ``Content-Disposition`` header."""

from __future__ import annotations

import unicodedata

from django.utils.http import content_disposition_header

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
