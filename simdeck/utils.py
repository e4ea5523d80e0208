"""Small helpers for scripts."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import httpx

from simdeck.errors import SimdeckError


def download_from_url(url: str, unzip: bool = True, output_dir: str | os.PathLike = ".") -> str:
    """Download ``url`` into ``output_dir`` and return the path of what arrived.

    With ``unzip``, a zip archive is unpacked and removed: the path returned
    is the folder it holds when it holds exactly one, otherwise a folder
    named after the archive. ``file://`` URLs work too.
    """
    target = Path(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(url)
    name = Path(unquote(parsed.path)).name or "download"
    path = target / name
    if parsed.scheme == "file":
        shutil.copyfile(unquote(parsed.path), path)
    elif parsed.scheme in ("http", "https"):
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
                if not response.is_success:
                    raise SimdeckError(
                        f"Downloading {url} failed: {response.status_code} {response.reason_phrase}."
                    )
                with open(path, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.TransportError as exc:
            raise SimdeckError(f"Downloading {url} failed: {exc}.") from None
    else:
        raise ValueError(f"Cannot download {url!r}: only http, https and file URLs are supported.")
    if not (unzip and zipfile.is_zipfile(path)):
        return str(path)
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.strip("/")]
        tops = {PurePosixPath(n).parts[0] for n in names}
        single = len(tops) == 1 and any(n.endswith("/") or "/" in n for n in names)
        dest = target if single else target / Path(name).stem
        root = dest.resolve()
        for info in zf.infolist():
            out = (dest / info.filename).resolve()
            if not out.is_relative_to(root):
                raise SimdeckError(f"The archive {name} holds {info.filename!r}, which leaves its folder.")
        zf.extractall(dest)
    path.unlink()
    return str(target / tops.pop()) if single else str(dest)
