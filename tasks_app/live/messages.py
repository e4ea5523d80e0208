"""The live messages, each a type with its payload: what a sender puts on the Channels layer.

The layer carries plain dictionaries; a message's ``type`` names the
consumer method that receives it (``task.changed`` calls ``task_changed``).
:mod:`tasks_app.live.events` is the one sender of each kind, and consumers
read what they receive back into its type with :meth:`of`, so a payload's
fields are named once, here.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Self


@dataclasses.dataclass(frozen=True)
class _Message:
    type: ClassVar[str]

    def message(self) -> dict:
        """As the Channels layer carries it."""
        # Shallow, unlike dataclasses.asdict: a queue's order is not copied once more.
        return {"type": self.type} | {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of(cls, message: dict) -> Self:
        return cls(**{f.name: message[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class TaskChanged(_Message):
    """A task moved to ``status``; viewers re-read it through the access layer."""

    type: ClassVar[str] = "task.changed"
    task: str
    status: str
    group: int


@dataclasses.dataclass(frozen=True)
class QueueMoved(_Message):
    """The queue of a machine group, head first; each viewer finds its own task's place in it."""

    type: ClassVar[str] = "queue.moved"
    order: list[str]


@dataclasses.dataclass(frozen=True)
class TaskProgress(_Message):
    """How far a running task got (``eta``: ISO 8601, or None when no honest estimate)."""

    type: ClassVar[str] = "task.progress"
    task: str
    progress: float | None
    eta: str | None


@dataclasses.dataclass(frozen=True)
class ResourcesSampled(_Message):
    """A resource sample of the task was written; viewers read it from the database."""

    type: ClassVar[str] = "resources.sampled"
    task: str
