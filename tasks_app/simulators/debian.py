"""Which programs a Debian package installed, read from dpkg's own list of its files."""

from __future__ import annotations

import functools
from pathlib import Path

DPKG_INFO = Path("/var/lib/dpkg/info")
BIN_FOLDERS = ("/usr/bin/", "/bin/")


@functools.cache
def package_programs(package: str) -> frozenset[str]:
    """Names of the programs ``package`` put in /usr/bin (empty where dpkg does not know it)."""
    for name in (f"{package}.list", f"{package}:amd64.list", f"{package}:arm64.list"):
        path = DPKG_INFO / name
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return frozenset(
                Path(line).name for line in lines if line.startswith(BIN_FOLDERS) and line.count("/") == 3
            )
    return frozenset()
