"""Run the benchmarks: ``python -m bench [NAMES...] [--quick]``.

Prints every figure with its baseline and ratio. A full run merges its
figures into ``bench/results/latest.json`` and rewrites the results table of
``docs/benchmarks.md`` from it; a ``--quick`` run (smaller sizes, for a smoke
check) writes ``bench/results/quick.json`` and leaves the docs alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path

import bench
from bench import harness

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = harness.ROOT / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# The order of the report; modules not named here follow alphabetically.
ORDER = ["dispatch", "throughput", "console_pages", "live_logs", "api_load"]
# Helpers, and the fault tests, which have a command of their own.
NOT_BENCHMARKS = {"harness", "bare_celery", "chaos"}


def available() -> dict[str, object]:
    """Every module of the package that has the shape of a benchmark, in report order."""
    found = {}
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_") or info.name in NOT_BENCHMARKS or info.ispkg:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if isinstance(getattr(module, "TITLE", None), str) and callable(getattr(module, "run", None)):
            found[info.name] = module
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def machine() -> dict:
    """What the figures were measured on."""
    from django.conf import settings
    from django.db import connection

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": None,
        "redis": None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        info["postgresql"] = cursor.fetchone()[0]
    try:
        import redis

        info["redis"] = redis.Redis.from_url(settings.REDIS_URL).info("server")["redis_version"]
    except Exception as exc:  # the figures still stand without it
        info["redis"] = f"unknown ({exc.__class__.__name__})"
    return info


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(figures: list[dict]) -> list[list[str]]:
    rows = [["Benchmark", "Metric", "Simdeck", "Baseline", "Ratio", "Unit", "Baseline is"]]
    for f in figures:
        ratio = f"{f['ratio']:.2f}×" if f.get("ratio") is not None else "–"
        rows.append(
            [
                f["benchmark"],
                f["metric"],
                fmt(f["simdeck"]),
                fmt(f.get("baseline")),
                ratio,
                f["unit"] + ("" if f.get("lower_is_better", True) else " (higher is better)"),
                f.get("baseline_name") or "",
            ]
        )
    return rows


def print_table(figures: list[dict]) -> None:
    rows = table(figures)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Measured {report['ran_at']} with `python -m bench`, "
        f"on {m['cpu']}, {m['usable_cores']} of {m['cores']} cores usable, {m['memory_gb']} GB memory, "
        f"{m['os']}, Python {m['python']}, PostgreSQL {m['postgresql']}, Redis {m['redis']}; "
        f"load average {', '.join(map(str, m['load_average']))} when the run began.",
        "",
    ]
    figures = [f for entry in report["benchmarks"].values() for f in entry.get("figures", [])]
    rows = table(figures)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "|".join("---" for _ in rows[0]) + "|")
    for row in rows[1:]:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    notes = [(name, e) for name, e in report["benchmarks"].items() if e.get("error") or e.get("notes")]
    if notes:
        lines.append("")
    for name, entry in notes:
        if entry.get("error"):
            first = entry["error"].splitlines()[0][:300]
            lines.append(
                f"- {name}: failed in this run ({first}); its log is in `bench/results/latest.json`."
            )
    durations = ", ".join(f"{n} {e['seconds']:.0f} s" for n, e in report["benchmarks"].items())
    lines += ["", f"Time per benchmark: {durations}."]
    return "\n".join(lines)


def write_docs(report: dict) -> None:
    text = DOCS.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOCS} has no {START} … {END} section to fill in.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{START}\n{markdown(report)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="write the figures here instead of bench/results/")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    args = parser.parse_args(argv)

    modules = available()
    if args.list:
        for name, module in modules.items():
            print(f"{name:16} {module.TITLE}")
        return 0
    unknown = [n for n in args.names if n not in modules]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(modules)}")
    chosen = {n: modules[n] for n in (args.names or modules)}

    harness.stop_on_sigterm()
    harness.setup_django()
    report = {
        "ran_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine(),
        "benchmarks": {},
    }
    failed = False
    for name, module in chosen.items():
        print(f"\n== {module.TITLE} ({name}){' — quick' if args.quick else ''}", flush=True)
        began = time.monotonic()
        entry: dict = {"title": module.TITLE, "figures": []}
        try:
            entry["figures"] = module.run(quick=args.quick)
            print_table(entry["figures"])
        except Exception as exc:
            failed = True
            traceback.print_exc()
            entry["error"] = f"{exc.__class__.__name__}: {exc}"
        entry["seconds"] = round(time.monotonic() - began, 1)
        print(f"({entry['seconds']:.0f} s)", flush=True)
        report["benchmarks"][name] = entry

    figures = [f for e in report["benchmarks"].values() for f in e["figures"]]
    if len(chosen) > 1 and figures:
        print("\n== All figures")
        print_table(figures)

    RESULTS.mkdir(exist_ok=True)
    path = args.json or RESULTS / ("quick.json" if args.quick else "latest.json")
    if not args.quick and not args.json and path.exists():
        # A run of some benchmarks keeps the last figures of the others.
        previous = json.loads(path.read_text())
        merged = previous.get("benchmarks", {}) | report["benchmarks"]
        report["benchmarks"] = {n: merged[n] for n in sorted(merged, key=_rank)}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nFigures written to {path}")
    if not args.quick and not args.json and not args.no_docs:
        write_docs(report)
        print(f"Results table rewritten in {DOCS.relative_to(harness.ROOT)}")
    return 1 if failed else 0


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


if __name__ == "__main__":
    sys.exit(main())
