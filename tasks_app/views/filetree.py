"""The files of an archive as a folder tree, flattened into rows a template can loop over.

A template cannot recurse cheaply, so the tree comes out as a sequence of
rows: ``folder`` opens a folder (its name, its files and bytes summed over
everything below it), ``file`` is one file, ``end`` closes the folder last
opened. Folders come before files, each sorted by name. A chain of folders
holding nothing but one folder is shown as one (``output/vtk``), and a folder
with many files below it starts closed so a large output stays readable.
"""

from __future__ import annotations

import dataclasses

# A folder with more files than this below it starts closed.
OPEN_UP_TO = 50


@dataclasses.dataclass
class Folder:
    name: str
    path: str
    folders: dict[str, Folder] = dataclasses.field(default_factory=dict)
    files: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)  # name, path, size
    size: int = 0
    count: int = 0


def build(files: list[tuple[str, int]]) -> Folder:
    """The tree of ``(path, size)`` pairs, with each folder's size and file count summed."""
    root = Folder("", "")
    for path, size in files:
        *parents, name = path.split("/")
        folder = root
        for part in parents:
            if part not in folder.folders:
                folder.folders[part] = Folder(part, f"{folder.path}{part}/")
            folder = folder.folders[part]
        folder.files.append((name, path, size))
    _sum(root)
    return root


def _sum(folder: Folder) -> None:
    for sub in folder.folders.values():
        _sum(sub)
    folder.size = sum(s for _, _, s in folder.files) + sum(f.size for f in folder.folders.values())
    folder.count = len(folder.files) + sum(f.count for f in folder.folders.values())


def rows(files: list[tuple[str, int]]) -> list[dict]:
    """The tree of ``files`` as rows (see the module's docstring)."""
    out: list[dict] = []
    _emit(build(files), out)
    return out


def _emit(folder: Folder, out: list[dict]) -> None:
    for name in sorted(folder.folders):
        sub = folder.folders[name]
        label = sub.name
        while len(sub.folders) == 1 and not sub.files:
            sub = next(iter(sub.folders.values()))
            label = f"{label}/{sub.name}"
        out.append(
            {
                "kind": "folder",
                "name": label,
                "path": sub.path,
                "size": sub.size,
                "files": sub.count,
                "open": sub.count <= OPEN_UP_TO,
            }
        )
        _emit(sub, out)
        out.append({"kind": "end"})
    for name, path, size in sorted(folder.files):
        out.append({"kind": "file", "name": name, "path": path, "size": size})
