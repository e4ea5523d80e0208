"""The machine side: a Celery worker running one task at a time."""

from __future__ import annotations

from pathlib import Path


class PlaneError(Exception):
    """The platform could not be told something (see :mod:`tasks_app.executor.plane`).

    Here, free of Django, because a machine on another host raises it before
    its settings are loaded (:mod:`tasks_app.executor.remote`).
    """


def os_error_message(exc: OSError, base: Path | None = None) -> str:
    """What went wrong on the machine, for a user: the cause and the file, without the server's paths.

    A file under ``base`` (the task's folder) is named relative to it; any
    other by its own name only, so no message shows how the server is laid out.
    """
    cause = exc.strerror or type(exc).__name__
    names = []
    for filename in (exc.filename, exc.filename2):
        if filename is None:
            continue
        path = Path(filename)
        inside = base is not None and path.is_relative_to(base)
        names.append(path.relative_to(base).as_posix() if inside else path.name)
    return f"{cause} ({', '.join(repr(n) for n in names)})" if names else cause
