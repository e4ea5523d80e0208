"""The sandbox's own cost: starting a command in it against starting it plainly.

Each figure starts ``true`` (and a short Python) many times, one after
another, and reports the median wall time of a start, taken in turns so a
machine whose speed drifts slows both sides alike:

* plain: ``subprocess.Popen([...]).wait()``, the least a start can cost;
* sandboxed: the same command through :func:`tasks_app.sandbox.command`,
  exactly as a machine starts a simulation (bubblewrap with every
  namespace, the binds, the system call filter, ``prlimit``, the drop to the
  sandbox user), in the machine's cgroups where this host has them and its
  loopback-only network namespace.
"""

from __future__ import annotations

import functools
import shutil
import statistics
import subprocess
import sys
import time

from bench import harness
from bench.harness import result

TITLE = "Sandbox"
NAME = "sandbox"


def _median_start(start, count: int) -> float:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        proc = start()
        if proc.wait() != 0:
            raise RuntimeError(f"{proc.args[-1]} failed in the benchmark")
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    from django.conf import settings

    from tasks_app import sandbox

    sandbox.check()
    count = 20 if quick else 300
    base = harness.home() / "sandbox"
    shutil.rmtree(base, ignore_errors=True)
    work = base / "work"
    work.mkdir(parents=True)
    try:
        sandbox.hand_over(work)
        limits = sandbox.Limits.for_machine_type(settings.SIMDECK_DEFAULT_MACHINE_TYPE)
        groups = sandbox.Cgroups(f"bench-{time.time_ns()}", limits)
        (base / "tmp").mkdir()
        sandbox.hand_over(base / "tmp")
        box = sandbox.Box(
            workdir=work,
            tmp=base / "tmp",
            identity=sandbox.write_identity(base / "identity"),
            env=sandbox.environment(limits, {}),
            limits=limits,
            read_only=sandbox.install_folders(),
            cgroups=groups,
            loopback=sandbox.loopback(),
        )
        figures = []
        for label, argv in (("true", ["true"]), ("python -c pass", [sys.executable, "-c", "pass"])):
            plain, boxed = [], []
            plainly = functools.partial(subprocess.Popen, argv, stdin=subprocess.DEVNULL)
            boxed_in = functools.partial(box.start, argv, {}, stdin=subprocess.DEVNULL)
            for _ in range(5):  # in turns
                plain.append(_median_start(plainly, count // 5))
                boxed.append(_median_start(boxed_in, count // 5))
            figures.append(
                result(
                    NAME,
                    f"start and end of `{label}`",
                    "ms",
                    statistics.median(boxed) * 1000,
                    statistics.median(plain) * 1000,
                    "the same command, not sandboxed",
                    note=f"median of {count} starts; cgroups: {', '.join(groups.dirs) or 'none'}",
                )
            )
        groups.close()
        return figures
    finally:
        shutil.rmtree(base, ignore_errors=True)
