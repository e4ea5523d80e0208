"""Zip archives of task inputs and outputs, unpacked without escaping.

Archives come from users, so every entry is checked before anything is
written: no absolute paths, no ``..``, no links, no file named ``.``,
nothing outside ``dest``.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO


class UnsafeArchive(ValueError):
    pass


def _checked_name(info: zipfile.ZipInfo) -> PurePosixPath:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchive(f"The archive holds a link ({info.filename}); links are not accepted.")
    problem = path_problem(info.filename)
    if problem == "absolute":
        raise UnsafeArchive(f"The archive holds an absolute path ({info.filename}).")
    if problem == "leaves":
        raise UnsafeArchive(f"The archive holds a path leaving its folder ({info.filename}).")
    name = PurePosixPath(info.filename)
    if not name.parts and not info.is_dir():
        # "." or "": a file in the place of the folder itself.
        raise UnsafeArchive(f"The archive holds a file without a name ({info.filename!r}).")
    return name


def path_problem(path: str) -> str | None:
    """What keeps a relative POSIX path from staying inside its folder: "absolute", "leaves" or None.

    An archive's names and the paths of a project's storage are checked
    alike: no absolute path (nor a drive or a backslash, which another
    system reads as one), no ``..``.
    """
    name = PurePosixPath(path)
    if name.is_absolute() or "\\" in path or (name.parts and ":" in name.parts[0]):
        return "absolute"
    if ".." in name.parts:
        return "leaves"
    return None


def file_entries(archive: BinaryIO) -> list[zipfile.ZipInfo]:
    """The regular files of a zip archive, read from its index: names as stored, sizes."""
    with zipfile.ZipFile(archive) as zf:
        return [i for i in zf.infolist() if not i.is_dir()]


def list_files(archive: BinaryIO) -> list[str]:
    """The regular files of a zip archive, as relative POSIX paths, checked."""
    return [str(_checked_name(i)) for i in file_entries(archive)]


def open_file(archive: BinaryIO, path: str) -> tuple[BinaryIO, int]:
    """A stream of the file ``path`` of ``archive``, unpacked as it is read, and its size.

    KeyError when the archive holds no such file, or is no zip archive.
    """
    try:
        zf = zipfile.ZipFile(archive)
        info = zf.getinfo(path)
    except zipfile.BadZipFile:
        raise KeyError(path) from None
    return zf.open(info), info.file_size


def safe_extract(
    archive: BinaryIO, dest: Path, place: Callable[[PurePosixPath], PurePosixPath | None] | None = None
) -> list[Path]:
    """Unpack ``archive`` into ``dest``, a directory just made for it; returns the files written.

    ``place`` chooses which entries to unpack and where: it maps an entry's
    checked name to the name to write (relative, checked again), or None to
    leave it out.

    Every name is checked before anything is written. A name that is
    relative, without ``..``, stays inside ``dest`` by its letters alone:
    the archive cannot make links (links are refused), and a new directory
    holds none. Resolving each path on disk, which costs a look at every
    directory above it, would add nothing; files are still opened without
    following a link, should one be there anyway.
    """
    written = []
    made = {dest}
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        # Check everything first, so a bad entry leaves nothing half-written.
        names = [_checked_name(i) for i in infos]
        if place is not None:
            placed = [(i, place(n)) for i, n in zip(infos, names, strict=True)]
            infos = [i for i, n in placed if n is not None]
            names = [n for _, n in placed if n is not None]
            for name in names:
                if path_problem(str(name)) or not name.parts:
                    raise UnsafeArchive(f"A file would be unpacked outside its folder ({name}).")
        for info, name in zip(infos, names, strict=True):
            target = dest.joinpath(*name.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                made.add(target)
                continue
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
            with zf.open(info) as src, open(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written.append(target)
    return written


def write_zip(out: BinaryIO, files: Iterable[tuple[Path, str]]) -> int:
    """Write ``(path on disk, name in archive)`` pairs; returns the file count."""
    count = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for path, arcname in files:
            zf.write(path, arcname)
            count += 1
    return count
