"""Projects: the folders your tasks are filed in.

A project is created by ``Project("dam-break")`` or the first time a task
names it (``run(..., project="dam-break")``); without a name tasks go to
your own ``<username>-default`` project.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from simdeck import api, tasks
from simdeck.errors import SimdeckError

NAME = re.compile(r"^[\w.\- ]{1,128}$")


class Project:
    """A project by name, made (with you as its maintainer) when none has that name yet.

    ``create=False`` only names it: asking about a project that is not
    there is then an error that names it.
    """

    def __init__(self, name: str, create: bool = True):
        if not isinstance(name, str) or not NAME.match(name.strip()):
            raise ValueError(
                f"{name!r} is not a project name: 1 to 128 letters, digits, spaces, dots, "
                "dashes or underscores."
            )
        self.name = name.strip()
        if create:
            api.client().post("/projects", json={"name": self.name}, retry=True)  # makes it once

    def __repr__(self) -> str:
        return f"Project({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Project) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def info(self) -> dict:
        """Counts of its tasks: num_tasks, active, succeeded, failed."""
        return api.client().get(f"/projects/{self.name}")

    def get_tasks(self, last_n: int = -1, status: str | list[str] | None = None) -> list[tasks.Task]:
        """Its tasks, newest first: the last ``last_n``, or all of them when ``last_n <= 0``."""
        return tasks.get_tasks(last_n=last_n, status=status, project=self.name)

    def wait(self, polling_period: float = 2.0, silent_mode: bool = False) -> dict[str, str]:
        """Block until every task of the project has ended; returns {task id: final status}."""
        pending = {t.id for t in self.get_tasks(status=sorted(tasks.ACTIVE_STATUSES))}
        last = None
        while pending:
            still = {t.id for t in self.get_tasks(status=sorted(tasks.ACTIVE_STATUSES))}
            pending &= still
            if not silent_mode and len(pending) != last:
                print(f"Project {self.name}: {len(pending)} task(s) still to end.", file=sys.stderr)
                last = len(pending)
            if pending:
                time.sleep(polling_period)
        return {t.id: str(t.status) for t in self.get_tasks()}

    def download_outputs(self, output_dir: str | os.PathLike | None = None) -> Path:
        """Outputs of its successful tasks, each in ``<output_dir>/<task id>/``; returns the folder.

        By default the folder is ``simdeck_output/<project name>``.
        """
        _ = self.info  # a project that is not there (or not yours) is an error that names it, not 0 tasks
        root = Path(output_dir) if output_dir else tasks.output_root() / self.name
        done = self.get_tasks(status="success")
        for task in done:
            task.download_outputs(output_dir=root / task.id)
        print(f"Outputs of {len(done)} task(s) of project {self.name} are in {root}/", file=sys.stderr)
        return root


def get_projects() -> list[Project]:
    """The projects you have tasks or machine groups in."""
    return [Project(p["name"], create=False) for p in api.client().get("/projects")]


__all__ = ["Project", "SimdeckError", "get_projects"]
