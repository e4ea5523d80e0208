"""SPlisHSPlasH (SPH fluid simulator) run headless through PyPI's ``pysplishsplash``.

The wheel installs a ``splash`` console script next to the venv's Python. We
run it with ``--no-gui`` so it simulates until the scene's ``stopAt`` time and
exits: 0 on success, 1 on a scene/option error (a scene without ``stopAt``
included: "StopAt parameter must be set when starting without GUI"), 139
(segfault) when it gets a scene file it cannot find.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path, PurePosixPath

from .base import InvalidParameters, Invocation, Simulator, SimulatorMissing
from .progress import ProgressReader

DISTRIBUTION = "pysplishsplash"
PRELOAD_LIBRARY = "libGLdispatch.so.0"
# Outputs go here, inside the work directory (partio/, vtk/, log/).
OUTPUT_DIR = "output"

# Where splash writes particle frames, when the scene asks for them, and
# how it names them: <object>_<fluid id>_<frame>.<extension>, frame 1 at time 0.
FRAME_FOLDERS = {"partio": ".bgeo", "vtk": ".vtk"}
FRAME_NAME = re.compile(r"(.+_)([0-9]+)(\.bgeo|\.vtk)")
# splash's own default when a scene sets no dataExportFPS.
DEFAULT_EXPORT_FPS = 25.0

# No "stop_at": splash's --stopAt only fills in a scene that lacks stopAt; it
# does not override one the scene sets (2.19.0), so the scene must say it.
ALLOWED_PARAMETERS = {"sim_config_filename"}


def find_splash() -> str:
    """Path of the ``splash`` script: ``SIMDECK_SPLASH_BIN`` if set, else beside this Python, else PATH."""
    chosen = os.environ.get("SIMDECK_SPLASH_BIN")
    if chosen:
        if Path(chosen).is_file() and os.access(chosen, os.X_OK):
            return chosen
        raise SimulatorMissing(
            f"SIMDECK_SPLASH_BIN names {chosen}, which is not an executable file on this machine. "
            "Point it at SPlisHSPlasH's 'splash' program or unset it."
        )
    beside = Path(sys.executable).parent / "splash"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("splash")
    if on_path:
        return on_path
    raise SimulatorMissing(
        "The SPlisHSPlasH program 'splash' was not found next to "
        f"{sys.executable} nor on PATH. Install it with "
        f"'{sys.executable} -m pip install {DISTRIBUTION}'."
    )


def find_gl_dispatch() -> str:
    """Where the system's libGLdispatch.so.0 is, for LD_PRELOAD.

    Why: the pysplishsplash wheel bundles its own renamed copy of libglvnd's
    libGLdispatch, and importing the module (so also running ``splash``, even
    ``splash --help``) segfaults unless the system copy is already loaded when
    the process starts. Preloading it is the known workaround.
    """
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    for folder in (
        f"/lib/{multiarch}",
        f"/usr/lib/{multiarch}",
        "/usr/lib64",
        "/lib64",
        "/usr/lib",
    ):
        candidate = Path(folder) / PRELOAD_LIBRARY
        if candidate.is_file():
            return str(candidate)
    # Elsewhere in the loader's cache: the dynamic loader resolves a bare
    # soname in LD_PRELOAD the same way it resolves a dependency.
    found = ctypes.util.find_library("GLdispatch")
    if found:
        return found
    raise SimulatorMissing(
        f"SPlisHSPlasH needs the system library {PRELOAD_LIBRARY} (preloaded "
        "to stop pysplishsplash from crashing), and it is not installed. "
        "Install the Debian package libglvnd0: 'apt-get install libglvnd0'."
    )


class SplishSplash(Simulator):
    name = "splishsplash"
    label = "SPlisHSPlasH"

    def version(self) -> str:
        try:
            return importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            raise SimulatorMissing(
                f"The Python package {DISTRIBUTION} is not installed. Install it "
                f"with '{sys.executable} -m pip install {DISTRIBUTION}'."
            ) from None

    def validate(self, parameters: dict, input_files: list[str]) -> dict:
        if not isinstance(parameters, dict):
            raise InvalidParameters("Parameters must be a JSON object.")
        unknown = sorted(set(parameters) - ALLOWED_PARAMETERS)
        if unknown:
            raise InvalidParameters(
                f"Unknown parameter {unknown[0]!r}. SPlisHSPlasH accepts: "
                + ", ".join(sorted(ALLOWED_PARAMETERS))
                + ".",
                field=unknown[0],
            )
        return {"sim_config_filename": _check_scene(parameters.get("sim_config_filename"), input_files)}

    def progress_reader(self, workdir: Path, parameters: dict) -> ProgressReader:
        """Simulated time against the scene's ``stopAt``, from the particle frames written so far.

        Headless, splash prints nothing while it simulates; the frames it
        exports (partio or VTK, ``dataExportFPS`` a simulated second) are
        the only sign of how far it got. A scene that exports none gets
        the generic reader alone.
        """
        try:
            scene = json.loads((Path(workdir) / parameters["sim_config_filename"]).read_text())
            config = scene["Configuration"]
            stop_at = float(config["stopAt"])
            fps = float(config.get("dataExportFPS", DEFAULT_EXPORT_FPS))
            folders = [
                name
                for name, key in (("partio", "enablePartioExport"), ("vtk", "enableVTKExport"))
                if config.get(key)
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return ProgressReader()
        if stop_at <= 0 or fps <= 0 or not folders:
            return ProgressReader()
        return FrameProgress(Path(workdir) / OUTPUT_DIR / folders[0], stop_at, fps)

    def invocations(self, workdir: Path, parameters: dict, run_dir: Path | None = None) -> list[Invocation]:
        splash = find_splash()
        preload = find_gl_dispatch()
        workdir = Path(workdir).resolve()
        run_dir = Path(run_dir) if run_dir is not None else workdir
        if not (workdir / parameters["sim_config_filename"]).is_file():
            raise InvalidParameters(
                f"The scene file {parameters['sim_config_filename']} is not in the task's work directory.",
                field="sim_config_filename",
            )
        argv = [
            splash,
            "--no-gui",
            # Each task has a fresh work directory, so a boundary cache would
            # never be reused; without this flag splash writes a Cache/ folder
            # beside the scene file.
            "--no-cache",
            "--output-dir",
            str(run_dir / OUTPUT_DIR),
        ]
        # Absolute on purpose: given a relative scene path, splash loads zero
        # particles and then segfaults.
        argv.append(str(run_dir / parameters["sim_config_filename"]))
        # Keep any preload the environment already has, after ours.
        existing = os.environ.get("LD_PRELOAD", "")
        ld_preload = f"{preload}:{existing}" if existing else preload
        return [
            Invocation(
                argv=argv,
                env={"LD_PRELOAD": ld_preload},
                display=f"LD_PRELOAD={preload} {shlex.join(argv)}",
            )
        ]


def _check_scene(value: object, input_files: list[str]) -> str:
    field = "sim_config_filename"
    available = {str(PurePosixPath(name)) for name in input_files}
    scenes = sorted(name for name in available if name.lower().endswith(".json"))
    if scenes:
        listing = ", ".join(scenes[:10]) + (" …" if len(scenes) > 10 else "")
        hint = f"JSON files in the input folder: {listing}."
    else:
        hint = (
            "The input folder has no .json file; upload a SPlisHSPlasH scene "
            "(JSON) together with the meshes it refers to."
        )
    if value is None or value == "":
        raise InvalidParameters(
            "sim_config_filename is required: the scene file (JSON) to run, "
            f"relative to the input folder. {hint}",
            field=field,
        )
    if not isinstance(value, str):
        raise InvalidParameters(
            f"sim_config_filename must be a string (a path relative to the input folder). {hint}",
            field=field,
        )
    if "\\" in value:
        raise InvalidParameters(
            f"sim_config_filename {value!r} contains a backslash; use forward slashes. {hint}",
            field=field,
        )
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidParameters(
            f"sim_config_filename {value!r} must be a path inside the input "
            f"folder: relative, without '..'. {hint}",
            field=field,
        )
    name = str(path)
    if not name.lower().endswith(".json"):
        raise InvalidParameters(
            f"sim_config_filename {value!r} is not a .json file; SPlisHSPlasH scenes are JSON. {hint}",
            field=field,
        )
    if name not in available:
        raise InvalidParameters(
            f"sim_config_filename {value!r} is not in the input folder. {hint}",
            field=field,
        )
    return name


class FrameProgress(ProgressReader):
    """Progress from the numbered particle frames splash exports into ``folder``.

    The folder is listed only until the first frame appears; after that
    each look asks for the next frame's file by name, so a long run with
    thousands of frames costs a look or two a second, not a listing.
    """

    def __init__(self, folder: Path, stop_at: float, fps: float):
        self.folder, self.stop_at, self.fps = folder, stop_at, fps
        self.prefix: str | None = None
        self.suffix = ""
        self.frame = 0

    def look(self) -> float | None:
        try:
            if self.prefix is None and not self.first_frame():
                return None
            while (self.folder / f"{self.prefix}{self.frame + 1}{self.suffix}").exists():
                self.frame += 1
        except OSError:
            return None
        # Frame n holds simulated time (n - 1) / fps.
        return min(1.0, max(0.0, (self.frame - 1) / self.fps / self.stop_at))

    def first_frame(self) -> bool:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return False
        for name in names:
            match = FRAME_NAME.fullmatch(name)
            if match and int(match.group(2)) > self.frame:
                self.prefix, self.frame, self.suffix = match.group(1), int(match.group(2)), match.group(3)
        return self.prefix is not None
