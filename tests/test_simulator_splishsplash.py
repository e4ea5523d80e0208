"""The SPlisHSPlasH adapter: parameter checks, and a real headless run whose progress is followed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tasks_app.executor.progress import ProgressWatch
from tasks_app.simulators.base import InvalidParameters, SimulatorMissing
from tasks_app.simulators.splishsplash import SplishSplash

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "splishsplash-dambreak"
FILES = ["config.json", "tank.obj", "README.md", "extra/other.json"]


def invalid(parameters: object, files: list[str] = FILES) -> InvalidParameters:
    with pytest.raises(InvalidParameters) as caught:
        SplishSplash().validate(parameters, files)  # type: ignore[arg-type]
    return caught.value


def test_identity() -> None:
    assert SplishSplash.name == "splishsplash"
    assert SplishSplash.label == "SPlisHSPlasH"


def test_valid_parameters_are_normalised() -> None:
    sim = SplishSplash()
    assert sim.validate({"sim_config_filename": "config.json"}, FILES) == {
        "sim_config_filename": "config.json"
    }
    assert sim.validate({"sim_config_filename": "./extra/other.json"}, FILES) == {
        "sim_config_filename": "extra/other.json"
    }


def test_missing_scene_lists_json_files() -> None:
    error = invalid({})
    assert error.field == "sim_config_filename"
    assert "required" in str(error)
    assert "config.json" in str(error) and "extra/other.json" in str(error)


def test_scene_not_in_inputs() -> None:
    error = invalid({"sim_config_filename": "scene.json"})
    assert error.field == "sim_config_filename"
    assert "not in the input folder" in str(error)
    assert "config.json" in str(error)


def test_no_json_in_inputs() -> None:
    error = invalid({"sim_config_filename": "scene.json"}, ["tank.obj"])
    assert "no .json file" in str(error)


@pytest.mark.parametrize("value", ["/etc/config.json", "../config.json", "extra/../../config.json"])
def test_paths_outside_the_input_folder(value: str) -> None:
    error = invalid({"sim_config_filename": value})
    assert error.field == "sim_config_filename"
    assert "relative" in str(error)


@pytest.mark.parametrize("value", [3, ["config.json"], None, ""])
def test_scene_must_be_a_non_empty_string(value: object) -> None:
    assert invalid({"sim_config_filename": value}).field == "sim_config_filename"


def test_scene_must_be_json() -> None:
    error = invalid({"sim_config_filename": "tank.obj"})
    assert ".json" in str(error)


def test_backslashes_rejected() -> None:
    assert "forward slashes" in str(invalid({"sim_config_filename": "extra\\other.json"}))


def test_unknown_parameter() -> None:
    error = invalid({"sim_config_filename": "config.json", "stop_at": 1})
    assert error.field == "stop_at"
    assert "sim_config_filename" in str(error)


def test_parameters_must_be_an_object() -> None:
    invalid(["config.json"])


def test_real_run_of_the_dam_break(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(EXAMPLE, workdir)
    # A second of the scene is enough here; the whole example runs through the API end to end.
    scene = json.loads((workdir / "config.json").read_text())
    scene["Configuration"]["stopAt"] = 1.0
    (workdir / "config.json").write_text(json.dumps(scene))
    sim = SplishSplash()
    inputs = [p.relative_to(workdir).as_posix() for p in workdir.rglob("*") if p.is_file()]
    parameters = sim.validate({"sim_config_filename": "config.json"}, inputs)
    try:
        version = sim.version()
        invocations = sim.invocations(workdir, parameters)
    except SimulatorMissing as missing:
        pytest.skip(f"SPlisHSPlasH is not installed here: {missing}")
    assert version

    # How far it got, read from the frames it exports while it runs, as a machine reads it.
    watch = ProgressWatch(sim.progress_reader(workdir, parameters))
    seen = []
    for inv in invocations:
        # Absolute scene path: a relative one makes splash segfault.
        assert Path(inv.argv[-1]).is_absolute()
        with open(tmp_path / "splash.txt", "w+") as out:
            proc = subprocess.Popen(
                inv.argv, env={**os.environ, **inv.env}, cwd=workdir, stdout=out, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if (due := watch.due()) is not None:
                    seen.append(due)
                time.sleep(0.2)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            out.seek(0)
            printed = out.read()
        assert proc.returncode == 0, printed[-3000:]
        assert "Number of fluid particles: 3825" in printed
    fractions = [fraction for fraction, _ in seen]
    assert fractions and fractions == sorted(fractions), fractions
    # Looked at about once a second, the run may end between two looks: a last look sees the end.
    final = sim.progress_reader(workdir, parameters).look()
    assert final >= 0.9 and fractions[0] < final, (fractions, final)
    # A second of simulation is over too soon for an estimated end (tests/test_progress.py has those).

    output = workdir / "output"
    # stopAt 1 s at 10 frames per second: frames 1..11.
    vtk = sorted((output / "vtk").glob("ParticleData_Fluid_*.vtk"))
    bgeo = sorted((output / "partio").glob("ParticleData_Fluid_*.bgeo"))
    assert len(vtk) == 11 and len(bgeo) == 11
    assert (output / "vtk" / "ParticleData_Fluid_11.vtk").read_bytes().startswith(b"# vtk DataFile")
    assert (output / "log" / "SPH_log.txt").stat().st_size > 0
    # --no-cache: nothing written beside the scene.
    assert not (workdir / "Cache").exists()


def test_failed_run_exits_non_zero(tmp_path: Path) -> None:
    # A scene without stopAt cannot run headless: splash says so and exits 1.
    (tmp_path / "config.json").write_text('{"Configuration": {"simulationMethod": 4}}')
    sim = SplishSplash()
    parameters = sim.validate({"sim_config_filename": "config.json"}, ["config.json"])
    try:
        (inv,) = sim.invocations(tmp_path, parameters)
    except SimulatorMissing as missing:
        pytest.skip(f"SPlisHSPlasH is not installed here: {missing}")
    result = subprocess.run(
        inv.argv,
        check=False,
        env={**os.environ, **inv.env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "StopAt" in result.stdout + result.stderr


def test_missing_gl_dispatch_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks_app.simulators import splishsplash

    real_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda p: "GLdispatch" not in p.name and real_is_file(p))
    monkeypatch.setattr(splishsplash.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(SimulatorMissing) as caught:
        splishsplash.find_gl_dispatch()
    assert "libGLdispatch.so.0" in str(caught.value)
    assert "libglvnd0" in str(caught.value)


def test_missing_splash_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks_app.simulators import splishsplash

    monkeypatch.setattr(splishsplash.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(splishsplash.shutil, "which", lambda name: None)
    with pytest.raises(SimulatorMissing) as caught:
        SplishSplash().invocations(tmp_path, {"sim_config_filename": "config.json"})
    assert "pip install pysplishsplash" in str(caught.value)


def test_version_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks_app.simulators import splishsplash

    def not_found(name: str) -> str:
        raise splishsplash.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(splishsplash.importlib.metadata, "version", not_found)
    with pytest.raises(SimulatorMissing) as caught:
        SplishSplash().version()
    assert "pysplishsplash" in str(caught.value)
