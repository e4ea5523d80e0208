"""Every task status and the facts about it, in one table.

What a status is called, what it tells the user (what happened, why, what
to do), how its badge looks, which phase of a task's time it counts
towards, whether it is final and whether a kill applies to it: each is
said once, here. The lifecycle's transition table, the console's diagram,
badges and filters, the API's status list and the services' checks derive
from it. Moving a task between statuses is :mod:`tasks_app.lifecycle`'s.
"""

from __future__ import annotations

import dataclasses

from django.db import models


class Status(models.TextChoices):
    PENDING_INPUT = "pending-input", "Waiting for Input"
    SUBMITTED = "submitted", "In Queue"
    PREPARING = "preparing-to-compute", "Preparing to Compute"
    STARTED = "started", "In Progress"
    FINALIZING = "finalizing", "Finalizing"
    PENDING_KILL = "pending-kill", "Pending Kill"
    SUCCESS = "success", "Success"
    FAILED = "failed", "Failed"
    KILLED = "killed", "Killed"
    ZOMBIE = "zombie", "Machine Terminated in Queue"
    SPOT_PREEMPTED = "spot-instance-preempted", "Spot Reclaimed"
    EXECUTOR_TERMINATED = "executor-terminated", "Task Runner Terminated"
    EXECUTOR_TERMINATED_BY_USER = "executor-terminated-by-user", "Machine Terminated by User"
    EXECUTOR_TERMINATED_TTL = "executor-terminated-TTL-exceeded", "Machine Time Limit Reached"
    EXECUTOR_FAILED = "executor-failed", "Runtime Error"
    TTL_EXCEEDED = "ttl-exceeded", "Task Timed Out"


S = Status


@dataclasses.dataclass(frozen=True)
class Guidance:
    what_happened: str
    why: str
    what_to_do: str


@dataclasses.dataclass(frozen=True)
class Facts:
    tone: str
    glyph: str
    phase: str | None
    final: bool
    killable: bool
    on_machine: bool
    guidance: Guidance


GUIDANCE: dict[Status, Guidance] = {
    S.PENDING_INPUT: Guidance(
        "The task exists but its input files have not all arrived yet.",
        "A task joins the queue only once its input archive is uploaded and checked.",
        "Let the upload finish. If it was interrupted, submit the simulation again; "
        "a task whose input never arrives is cleaned up automatically.",
    ),
    S.SUBMITTED: Guidance(
        "The task is in its machine group's queue, waiting for a free machine.",
        "Each machine runs one task at a time; queued tasks are taken in order "
        "as machines finish their previous work.",
        "Wait, or kill the task if you no longer need it. A group with more machines "
        "empties its queue sooner.",
    ),
    S.PREPARING: Guidance(
        "A machine has taken the task and is fetching its input files.",
        "Before the simulator can start, the machine sets up a fresh work directory with your inputs.",
        "Wait a moment for the simulation to begin, or kill the task if it is no longer needed.",
    ),
    S.STARTED: Guidance(
        "The simulator is running on the machine.",
        "The inputs are in place and the simulation command has been launched.",
        "Follow the live logs while it runs, or kill the task if it is no longer needed.",
    ),
    S.FINALIZING: Guidance(
        "The simulation has finished and its output files are being stored.",
        "After the commands end, the machine uploads outputs and logs before the task gets its final status.",
        "Nothing to do; the task reaches its final status as soon as the upload ends.",
    ),
    S.PENDING_KILL: Guidance(
        "Your request to stop the task was received and the machine is stopping it.",
        "A running simulation is first asked to stop, then forced after a short grace "
        "period; what it wrote so far is kept.",
        "Wait a few seconds for the task to become Killed.",
    ),
    S.SUCCESS: Guidance(
        "The simulation finished and its outputs are stored.",
        "The simulator exited with status 0.",
        "Download the outputs.",
    ),
    S.FAILED: Guidance(
        "The simulator stopped with an error.",
        "The simulation command exited with a non-zero status, usually because of an "
        "input or configuration problem, or a fault inside the simulator.",
        "Read the end of stderr and stdout to find the cause, fix the input and submit again.",
    ),
    S.KILLED: Guidance(
        "The task was stopped on request.",
        "Someone asked for this task to be killed.",
        "Nothing to do. Submit it again if it was stopped by mistake.",
    ),
    S.ZOMBIE: Guidance(
        "The machine group was shut down before this task got to run.",
        "The task was still waiting in the queue when its group was terminated, so it "
        "produced neither outputs nor logs.",
        "Submit it again to a running machine group, and keep that group up until its queue is empty.",
    ),
    S.SPOT_PREEMPTED: Guidance(
        "The spot machine running this task was taken back and the run was interrupted.",
        "Spot machines are cheaper because the provider may reclaim them at any time. "
        "With resubmission on, the task goes back to the queue; otherwise it stops here.",
        "Turn on resubmission on preemption, resubmit the task, or use a group of "
        "regular (non-spot) machines for work that must not be interrupted.",
    ),
    S.EXECUTOR_TERMINATED: Guidance(
        "The machine running this task stopped unexpectedly.",
        "The task runner went away for a reason outside the simulation (the process "
        "died or its host was lost). With resubmission on, the task goes back to the "
        "queue; otherwise it stops here.",
        "Resubmit the task, or turn on resubmission so this happens automatically.",
    ),
    S.EXECUTOR_TERMINATED_BY_USER: Guidance(
        "The machine group was terminated while this task was running.",
        "A user shut the group down before the task finished; logs written up to "
        "that moment are kept, outputs are incomplete.",
        "Resubmit the task and let the group run until the task is done.",
    ),
    S.EXECUTOR_TERMINATED_TTL: Guidance(
        "The machine was shut down because its group reached its time limit.",
        "Machine groups stop themselves after their time to live (or too long idle) "
        "so that nothing runs longer than intended.",
        "Start a group with a longer time to live and resubmit the task.",
    ),
    S.EXECUTOR_FAILED: Guidance(
        "The task stopped because of a problem on the machine, not in the simulator.",
        "Something outside the simulation failed: most often the disk filled up, the "
        "simulation reached one of its machine's limits (memory, processes, file size), "
        "the input could not be fetched or the simulator is not installed on the machine.",
        "Read the error detail: it names the limit or the problem. For a full disk, use a "
        "larger disk or turn on disk auto-resize; at a memory or process limit, pick a bigger "
        "machine type or run fewer threads; for a missing simulator, install it on the "
        "machines or pick another group.",
    ),
    S.TTL_EXCEEDED: Guidance(
        "The task ran past its time to live and was stopped.",
        "Every task may carry a time limit; when computing takes longer, it is ended "
        "to keep shared machines free.",
        "Resubmit with a longer time to live if the simulation needs more time.",
    ),
}

# Each status' badge (a tone and a glyph, so status never relies on colour
# alone), the phase of a task's time it counts towards (None for an ending),
# whether it is final (nothing follows, unless resubmission revives a task
# that lost its machine), whether a kill applies to it (ending the task, or
# asking its machine to stop it) and whether a machine holds it.
# fmt: off
_ROWS: dict[Status, tuple[str, str, str | None, bool, bool, bool]] = {
    #                               tone        glyph phase                final  killable on_machine
    S.PENDING_INPUT:               ("waiting",  "…",  "waiting_for_input", False, True,    False),
    S.SUBMITTED:                   ("waiting",  "◷",  "in_queue",          False, True,    False),
    S.PREPARING:                   ("running",  "▸",  "preparing",         False, True,    True),
    S.STARTED:                     ("running",  "▶",  "computing",         False, True,    True),
    S.FINALIZING:                  ("running",  "⇪",  "finalizing",        False, False,   True),
    S.PENDING_KILL:                ("stopping", "■",  "computing",         False, False,   True),
    S.SUCCESS:                     ("success",  "✓",  None,                True,  False,   False),
    S.FAILED:                      ("failure",  "✗",  None,                True,  False,   False),
    S.KILLED:                      ("ended",    "⊘",  None,                True,  False,   False),
    S.ZOMBIE:                      ("ended",    "⊘",  None,                True,  False,   False),
    S.SPOT_PREEMPTED:              ("ended",    "⊘",  None,                True,  False,   False),
    S.EXECUTOR_TERMINATED:         ("ended",    "⊘",  None,                True,  False,   False),
    S.EXECUTOR_TERMINATED_BY_USER: ("ended",    "⊘",  None,                True,  False,   False),
    S.EXECUTOR_TERMINATED_TTL:     ("ended",    "⊘",  None,                True,  False,   False),
    S.EXECUTOR_FAILED:             ("ended",    "⊘",  None,                True,  False,   False),
    S.TTL_EXCEEDED:                ("ended",    "⊘",  None,                True,  False,   False),
}
# fmt: on

FACTS: dict[Status, Facts] = {status: Facts(*row, guidance=GUIDANCE[status]) for status, row in _ROWS.items()}

# The phases of a task's time, in order, as the time breakdown names them.
# A kill keeps the simulator running until the machine stops it, so
# pending-kill counts as computing.
PHASE_LABELS: dict[str, str] = {
    "waiting_for_input": "Waiting for input",
    "in_queue": "In queue",
    "preparing": "Preparing",
    "computing": "Computing",
    "finalizing": "Finalizing",
}
PHASES = tuple(PHASE_LABELS)

PHASE_OF: dict[Status, str] = {s: f.phase for s, f in FACTS.items() if f.phase}
TONES: dict[str, tuple[str, str]] = {s.value: (f.tone, f.glyph) for s, f in FACTS.items()}

TERMINAL = frozenset(s for s, f in FACTS.items() if f.final)
ACTIVE = frozenset(Status) - TERMINAL
QUEUED = frozenset(s for s, f in FACTS.items() if f.phase == "in_queue")
ON_MACHINE = frozenset(s for s, f in FACTS.items() if f.on_machine)
KILLABLE = frozenset(s for s, f in FACTS.items() if f.killable)
# While its simulation computes, a task shows how far it got (its progress bar and end estimate).
COMPUTING = frozenset(s for s, phase in PHASE_OF.items() if phase == "computing")
# What the client's ``is_failed()`` answers true for: every ending but success.
FAILURES = TERMINAL - {S.SUCCESS}

# Groups of statuses a filter may name besides single statuses: name -> (label, statuses).
STATUS_GROUPS: dict[str, tuple[str, frozenset[Status]]] = {
    "active": ("Active (not ended)", ACTIVE),
    "ended": ("Ended", TERMINAL),
    "failed-any": ("Failed (any ending but success)", FAILURES),
}

# Other spellings users bring along: the seeds' words and the service's own
# status codes. Keys are lowercase; lookups are case-insensitive.
ALIASES: dict[str, Status] = {
    "completed": S.SUCCESS,
    "in-queue": S.SUBMITTED,
    "computation-started": S.STARTED,
    "computation-ended": S.FINALIZING,
    "executer-terminated": S.EXECUTOR_TERMINATED,
    "executer-terminated-by-user": S.EXECUTOR_TERMINATED_BY_USER,
    "executer-terminated-ttl-exceeded": S.EXECUTOR_TERMINATED_TTL,
    "executer-failed": S.EXECUTOR_FAILED,
}
_BY_LOWER = {s.value.lower(): s for s in Status} | ALIASES


def parse_status(text: str) -> Status:
    """The status a user means by ``text``, accepting every known spelling."""
    try:
        return _BY_LOWER[text.strip().lower()]
    except KeyError:
        known = ", ".join(s.value for s in Status)
        raise ValueError(f"Unknown status {text!r}. Known statuses: {known}.") from None
