"""The sandbox's own cost: starting a command in it against starting it plainly.

Each figure starts ``true`` (and a short Python) many times, one after
another, and reports the median wall time of a start, taken in turns so a
machine whose speed drifts slows both sides alike:

* plain: ``subprocess.Popen([...]).wait()``, the least a start can cost;
* in the machine's sandbox: the same command started by the first
  process of a machine's lasting sandbox (:class:`tasks_app.sandbox.Resident`),
  as a machine starts each command of its tasks;
* in a sandbox of its own: the same command through
  :func:`tasks_app.sandbox.command` (bubblewrap with every namespace, the
  binds, the system call filter, ``prlimit``, the drop to the sandbox
  user), as a machine does where it cannot keep a sandbox;

both in the machine's cgroups where this host has them and its
loopback-only network namespace. Apart: making the lasting sandbox, once
per machine.
"""

from __future__ import annotations

import dataclasses
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
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if hasattr(proc, "pidfd"):  # a command of a machine's sandbox holds one
            proc.close()
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
        make_resident = functools.partial(
            sandbox.Resident,
            base / "resident",
            identity=box.identity,
            limits=limits,
            read_only=box.read_only,
            network=False,
            cgroups=groups,
            loopback=box.loopback,
            env={"PATH": sandbox.PATH},
        )
        made, plain_start = [], []
        for _ in range(5):
            began = time.perf_counter()
            resident = make_resident()
            made.append(time.perf_counter() - began)
            resident.close()
            plain_start.append(_median_start(functools.partial(subprocess.Popen, ["true"]), 1))
        resident = make_resident()
        in_machine = dataclasses.replace(
            box, workdir=resident.task_dir, tmp=resident.tmp_dir, resident=resident
        )
        figures = []
        note = f"median of {count} starts; cgroups: {', '.join(groups.dirs) or 'none'}"
        for label, argv in (("true", ["true"]), ("python -c pass", [sys.executable, "-c", "pass"])):
            plain, kept, own = [], [], []
            plainly = functools.partial(subprocess.Popen, argv, stdin=subprocess.DEVNULL)
            in_kept = functools.partial(in_machine.start, argv, {})
            in_own = functools.partial(box.start, argv, {}, stdin=subprocess.DEVNULL)
            for _ in range(5):  # in turns
                plain.append(_median_start(plainly, count // 5))
                kept.append(_median_start(in_kept, count // 5))
                own.append(_median_start(in_own, count // 5))
            for where, times in (("in the machine's sandbox", kept), ("in a sandbox of its own", own)):
                figures.append(
                    result(
                        NAME,
                        f"start and end of `{label}`, {where}",
                        "ms",
                        statistics.median(times) * 1000,
                        statistics.median(plain) * 1000,
                        "the same command, not sandboxed",
                        note=note,
                    )
                )
        resident.close()
        figures.append(
            result(
                NAME,
                "making the machine's sandbox (once per machine)",
                "ms",
                statistics.median(made) * 1000,
                statistics.median(plain_start) * 1000,
                "start and end of `true`, not sandboxed",
                note="median of 5",
            )
        )
        groups.close()
        return figures
    finally:
        shutil.rmtree(base, ignore_errors=True)
