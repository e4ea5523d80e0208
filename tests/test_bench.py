"""Every benchmark runs at its smallest size and reports well-formed figures.

Speed itself is not checked here (the machine may be busy): the figures
belong in docs/benchmarks.md. The quick run of every benchmark takes a
minute or more, so ``make test`` leaves it out; ``make test ARGS="-m bench"``
runs it, and ``make bench`` runs the benchmarks themselves.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from bench import __main__ as runner
from tests.helpers import ROOT

# The issue asks these for a baseline measured in the same run.
WITH_BASELINE = {"dispatch", "throughput", "api_load"}
REQUIRED = {"benchmark", "metric", "unit", "simdeck", "baseline", "baseline_name", "ratio", "note"}


def test_the_runner_finds_every_benchmark_module():
    found = runner.available()
    assert {"dispatch", "throughput", "api_load"} <= set(found)
    for name in ("harness", "bare_celery"):
        assert name not in found
    for path in (ROOT / "bench").glob("*.py"):
        module = path.stem
        if module.startswith("_") or module in runner.NOT_BENCHMARKS:
            continue
        assert module in found, f"bench/{path.name} lacks TITLE or run()"


@pytest.mark.bench
def test_every_benchmark_runs_quickly_and_reports_figures_with_baselines(tmp_path):
    out = tmp_path / "quick.json"
    env = dict(
        os.environ,
        SIMDECK_BENCH_HOME=str(tmp_path / "home"),
        SIMDECK_BENCH_DB="simdeck_bench_smoke",
    )
    env.pop("SIMDECK_HOME", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert report["machine"]["python"] and report["machine"]["postgresql"]
    assert set(report["benchmarks"]) == set(runner.available())
    for name, entry in report["benchmarks"].items():
        assert "error" not in entry, f"{name}: {entry.get('error')}"
        assert entry["figures"], f"{name} reported nothing"
        with_baseline = 0
        for figure in entry["figures"]:
            assert REQUIRED <= set(figure), f"{name}: {figure}"
            assert math.isfinite(figure["simdeck"]) and figure["simdeck"] >= 0, figure
            if figure["baseline"] is not None:
                with_baseline += 1
                assert figure["baseline"] > 0 and figure["baseline_name"], figure
                assert figure["ratio"] == pytest.approx(figure["simdeck"] / figure["baseline"]), figure
        if name in WITH_BASELINE:
            assert with_baseline, f"{name} measured no baseline"
        # The table printed for people carries every figure.
        for figure in entry["figures"]:
            assert figure["metric"] in done.stdout
