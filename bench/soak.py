"""Soak: steady submissions for an hour with a fault every few minutes; nothing may be lost.

A private Simdeck (its own embedded PostgreSQL and Redis, as ``bench/chaos.py``
runs them, so restarting them disturbs nobody) with one group of two
machines takes a task every ``SUBMIT_EVERY`` seconds for ``DURATION``
seconds (a couple of minutes with ``--quick``). Every task asks for
resubmission, so every fault must be absorbed: each should end in success.
Every ``FAULT_EVERY`` seconds one of these strikes, in turn:

    machine    SIGKILL a machine's worker (the provider replaces it)
    together   SIGTERM to a machine's worker and its simulation at once, as
               Slurm signals a pilot job it cancels (the task runs again,
               the machine stops and the provider replaces it)
    scheduler  SIGKILL the scheduler (started again, as the launcher does)
    web        SIGKILL a web server process (the web server starts another)
    redis      restart Redis
    postgres   end every PostgreSQL backend of the stack (pg_terminate_backend)

Every ``SAMPLE_EVERY`` seconds each process' RSS, open fds and CPU are
sampled by role. At the end, submissions stop and the tasks are given time
to end; the figures are the tasks lost (ended other than in success), run
twice at once (one attempt's work reported done twice, or an attempt still
working when a later one started) and stuck (not ended), which must all be
0; the tasks done again (an attempt finished its work, its machine died
before the ending was recorded, and the resubmitted task did it again:
recovery, as it should be); and each role's memory and fds at the end
against the first sample. The memory of each role over time is drawn to
``docs/soak-memory.svg`` (a ``--quick`` run draws it in the benchmark home).

The runner's process has Django set up on the benchmark database: the soak
runs in a child process of its own, set up on its private servers.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.harness import result
from bench.idle import ROLES, environ_of, role_processes

TITLE = "Soak with faults"
DURATION, QUICK_DURATION = 3600.0, 150.0
FAULT_EVERY, QUICK_FAULT_EVERY = 300.0, 20.0
SAMPLE_EVERY, QUICK_SAMPLE_EVERY = 60.0, 10.0
SUBMIT_EVERY = 1.0
TASK_SECONDS = 1.0
FAULTS = ("machine", "together", "scheduler", "web", "redis", "postgres")
SVG = harness.ROOT / "docs" / "soak-memory.svg"


# -- the soak itself, in its own process ----------------------------------------------


class Sampler:
    """Each role's RSS, fds and CPU over time; CPU as a percent of one core since the last sample."""

    def __init__(self):
        self.samples: list[dict] = []
        self.cpu: dict[int, float] = {}
        self.last = time.monotonic()
        self.began = self.last

    def sample(self, run) -> None:
        import psutil

        now = time.monotonic()
        elapsed = max(now - self.last, 1e-6)
        row = {"t": now - self.began}
        for role, members in role_processes(run.stack.procs, without_simulations=True).items():
            rss = fds = cpu = 0.0
            for proc in members:
                try:
                    rss += proc.memory_info().rss
                    fds += proc.num_fds()
                    times = proc.cpu_times()
                    total = times.user + times.system
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
                cpu += total - self.cpu.get(proc.pid, total)
                self.cpu[proc.pid] = total
            row[role] = {"rss_mb": rss / 2**20, "fds": fds, "cpu": cpu / elapsed * 100, "n": len(members)}
        self.samples.append(row)
        self.last = now


def strike(run, group: str, fault: str) -> str:
    """Cause ``fault``; says what was done."""
    import psutil
    from django.conf import settings
    from django.db import connection

    from console import embedded
    from tasks_app.models import Machine
    from tasks_app.testing.stack import signal_group

    if fault in ("machine", "together"):
        machine = Machine.objects.filter(group__name=group, state=Machine.State.ONLINE).order_by("?").first()
        if machine is None or not machine.pid:
            return f"{fault}: no machine online"
        if fault == "machine":
            os.kill(machine.pid, signal.SIGKILL)
            return f"machine {machine.name} killed"
        worker = psutil.Process(machine.pid)
        simulation = [p for p in worker.children(recursive=True) if "SIMDECK_TASK_ID" in environ_of(p)]
        for proc in [worker, *simulation]:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass  # a sandbox ends with its first process
        return f"SIGTERM to machine {machine.name} and {len(simulation)} process(es) of its simulation"
    if fault == "scheduler":
        old = next(p for p in run.stack.procs if "--beat" in p.args)
        signal_group(old, signal.SIGKILL)
        old.wait()
        run.stack.procs.remove(old)
        run.stack.spawn("scheduler", list(old.args))  # as the launcher starts a dead process again
        return "scheduler killed and started again"
    if fault == "web":
        web = next(p for p in run.stack.procs if "console.webserver" in p.args)
        children = psutil.Process(web.pid).children()
        children[0].kill()
        return "a web server process killed"
    if fault == "redis":
        embedded.stop_redis(settings.SIMDECK_HOME)
        time.sleep(2)
        embedded.start_redis(settings.SIMDECK_HOME)
        return "Redis restarted"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
        ended = cursor.fetchone()[0]
    return f"{ended} PostgreSQL backends ended"


def submit_one(run, group: str) -> str | None:
    """One task, as a client submits it; None when the stack turned it away meanwhile (a fault)."""
    try:
        return run.submit(group, 1, seconds=TASK_SECONDS, resubmit_every=1)[0]
    except Exception:  # refused, or unreachable during a fault: not accepted
        from django.db import close_old_connections

        close_old_connections()
        return None


def soak(duration: float, fault_every: float, sample_every: float) -> dict:
    from django.db import close_old_connections

    from bench import chaos
    from tasks_app.lifecycle import TERMINAL
    from tasks_app.models import Task

    home = Path(os.environ["SIMDECK_HOME"])
    ids: list[str] = []
    faults: list[tuple[float, str]] = []
    refused = 0
    sampler = Sampler()
    with chaos.Run(home) as run:
        group = run.group(2)
        sampler.sample(run)
        began = time.monotonic()
        next_fault, next_sample, n = began + fault_every, began + sample_every, 0
        while (now := time.monotonic()) < began + duration:
            if now >= next_fault:
                try:
                    faults.append((now - began, strike(run, group, FAULTS[n % len(FAULTS)])))
                except Exception as exc:  # the fault itself failed to land: said, and the soak goes on
                    faults.append((now - began, f"{FAULTS[n % len(FAULTS)]} failed: {exc!r}"))
                close_old_connections()
                n, next_fault = n + 1, next_fault + fault_every
            if now >= next_sample:
                sampler.sample(run)
                next_sample += sample_every
            task = submit_one(run, group)
            if task:
                ids.append(task)
            else:
                refused += 1
            time.sleep(max(0.0, SUBMIT_EVERY - (time.monotonic() - now)))
        sampler.sample(run)

        # Every task is given time to end.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                left = Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).count()
            except Exception:
                close_old_connections()
                left = -1
            if left == 0:
                break
            time.sleep(1)
        final = dict(Task.objects.filter(pk__in=ids).values_list("id", "status"))
        at_once, again = run.ledger.doubled()
        sampler.sample(run)
    return {
        "accepted": len(ids),
        "refused": refused,
        "success": sum(1 for s in final.values() if s == "success"),
        "lost": sum(1 for i in ids if final.get(i) in TERMINAL and final.get(i) != "success")
        + sum(1 for i in ids if i not in final),
        "twice": len(at_once & set(ids)),
        "again": len(again & set(ids)),
        "stuck": sum(1 for i in ids if i in final and final[i] not in TERMINAL),
        "endings": dict(collections.Counter(final.values())),
        "faults": faults,
        "samples": sampler.samples,
    }


def child(out: Path, quick: bool) -> None:
    """The soak's process: Django on private servers under a temporary home, the report to ``out``."""
    from bench import chaos

    home = Path(tempfile.mkdtemp(prefix="simdeck-soak-"))
    chaos.setup(home)
    try:
        if quick:
            report = soak(QUICK_DURATION, QUICK_FAULT_EVERY, QUICK_SAMPLE_EVERY)
        else:
            report = soak(DURATION, FAULT_EVERY, SAMPLE_EVERY)
    finally:
        chaos.teardown(home)
    out.write_text(json.dumps(report))


# -- the plot ---------------------------------------------------------------------------


def svg(samples: list[dict], title: str) -> str:
    """A small line chart of each role's RSS over time."""
    width, height, left, bottom, top, right = 640, 300, 56, 36, 28, 110
    colours = {"web": "#1f77b4", "scheduler": "#ff7f0e", "provider": "#2ca02c", "machines": "#d62728"}
    tmax = max(s["t"] for s in samples) or 1
    ymax = max(s[r]["rss_mb"] for s in samples for r in ROLES) * 1.1 or 1

    def x(t: float) -> float:
        return left + (width - left - right) * t / tmax

    def y(mb: float) -> float:
        return height - bottom - (height - bottom - top) * mb / ymax

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" font-size="12">{title}</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{width - right}" y2="{y(0)}" stroke="#888"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{top}" stroke="#888"/>',
    ]
    for i in range(5):
        mb = ymax * i / 4
        parts.append(f'<text x="{left - 4}" y="{y(mb) + 4:.1f}" text-anchor="end">{mb:.0f}</text>')
        t = tmax * i / 4
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - bottom + 14}" text-anchor="middle">{t / 60:.1f}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">minutes</text>'
    )
    parts.append(f'<text x="12" y="{top - 8}">MB (RSS)</text>')
    for n, role in enumerate(ROLES):
        points = " ".join(f"{x(s['t']):.1f},{y(s[role]['rss_mb']):.1f}" for s in samples)
        parts.append(f'<polyline fill="none" stroke="{colours[role]}" stroke-width="1.5" points="{points}"/>')
        ly = top + 14 * n + 6
        parts.append(
            f'<line x1="{width - right + 8}" y1="{ly}" x2="{width - right + 24}" y2="{ly}" '
            f'stroke="{colours[role]}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{width - right + 28}" y="{ly + 4}">{role}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# -- the benchmark ------------------------------------------------------------------------


def run(quick: bool = False) -> list[dict]:
    out = harness.home() / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    argv = [sys.executable, "-m", "bench.soak", "--child", str(out)] + (["--quick"] if quick else [])
    done = subprocess.run(argv, cwd=harness.ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"The soak failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads(out.read_text())
    samples = report["samples"]
    minutes = (QUICK_DURATION if quick else DURATION) / 60
    plot = harness.home() / "soak-memory.svg" if quick else SVG
    title = f"Memory by role over a {minutes:.0f}-minute soak with a fault every " + (
        f"{(QUICK_FAULT_EVERY if quick else FAULT_EVERY) / 60:.1f} min"
    )
    plot.write_text(svg(samples, title))
    for at, what in report["faults"]:
        print(f"    fault at {at:6.0f} s: {what}")
    note = (
        f"{report['accepted']} tasks accepted ({report['refused']} submissions turned away during faults), "
        f"{len(report['faults'])} faults over {minutes:.0f} min; endings {report['endings']}"
    )
    figures = [
        result("soak", "tasks lost", "tasks", report["lost"], note=note),
        result("soak", "tasks run twice at once", "tasks", report["twice"], note=note),
        result("soak", "tasks stuck", "tasks", report["stuck"], note=note),
        result("soak", "tasks done again after their machine died", "tasks", report["again"], note=note),
    ]
    first, last = samples[0], samples[-1]
    for role in ROLES:
        for metric, unit, key in (("RSS", "MB", "rss_mb"), ("open fds", "fds", "fds")):
            figures.append(
                result(
                    "soak",
                    f"{role} {metric} at the end",
                    unit,
                    last[role][key],
                    first[role][key] or None,
                    "the same at the start",
                    f"{last[role]['n']} processes at the end, {first[role]['n']} at the start",
                )
            )
        peak_cpu = max(s[role]["cpu"] for s in samples[1:]) if len(samples) > 1 else 0.0
        figures.append(
            result(
                "soak", f"{role} CPU, highest sample", "% of a core", peak_cpu, note="per sampling interval"
            )
        )
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), quick="--quick" in sys.argv)
    else:
        from bench.__main__ import main

        raise SystemExit(main(["soak", *sys.argv[1:]]))
