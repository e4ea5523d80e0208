"""Simulators: each ``run()`` uploads an input folder and creates a new task.

    sim = simdeck.simulators.SplishSplash()
    task = sim.run(input_dir="scene/", sim_config_filename="config.json", on=machine_group)

``SplishSplash``, ``Commands``, ``GROMACS``, ``LAMMPS``, ``OpenFOAM`` and
``QuantumEspresso`` are always here; any other simulator the server offers
(see :func:`list`) is reachable by its name, e.g.
``simdeck.simulators.Simulator("name")``.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import functools
import hashlib
import math
import os
import shlex
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from simdeck import api, durations, render
from simdeck.errors import SimdeckError
from simdeck.resources import MachineGroup
from simdeck.tasks import Task

CHUNK = 1 << 20
# Zipped inputs up to this size travel inside the request that creates the task.
INLINE_INPUT_MAX_BYTES = 1 << 20
# The most tasks the server creates in one batch request.
BATCH_MAX_TASKS = 1000
# A sweep's first request holds this many tasks, each next one twice as many
# (up to BATCH_MAX_TASKS): the group's machines start on the first tasks
# while the rest are still being created.
FIRST_BATCH_TASKS = 50


def _batches(count: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each request of a sweep of ``count`` tasks: 50, 100, 200, ... 1000 each."""
    start, size = 0, FIRST_BATCH_TASKS
    while start < count:
        yield start, min(start + size, count)
        start, size = start + size, min(size * 2, BATCH_MAX_TASKS)


def _refused_after(exc: SimdeckError, start: int, created: builtins.list[Task]) -> None:
    """Tell of the tasks the requests before the refused one created: they exist and run."""
    exc.created = created
    if not created:
        return
    if exc.field and exc.field.startswith("tasks."):
        # The server counts within its request; the caller counts in the sweep.
        index, _, rest = exc.field.removeprefix("tasks.").partition(".")
        if index.isdecimal() and index.isascii():
            exc.field = f"tasks.{int(index) + start}" + (f".{rest}" if rest else "")
            exc.args = (
                str(exc).replace(f"Task {index} of the batch", f"Task {int(index) + start} of the sweep", 1),
            )
    exc.add_note(
        f"The {len(created)} tasks before it were created and go on ({created[0].id} ... "
        f"{created[-1].id}); the error's `created` lists them."
    )


def _input_files(input_dir: Path) -> builtins.list[Path]:
    if not input_dir.exists():
        raise FileNotFoundError(f"The input folder {input_dir} does not exist; check the path.")
    if not input_dir.is_dir():
        raise NotADirectoryError(
            f"{input_dir} is not a folder; input_dir names the folder holding the inputs."
        )
    files = sorted(p for p in input_dir.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"The input folder {input_dir} is empty; put the simulation's files in it.")
    return files


def _zip(input_dir: Path | None, files: builtins.list[Path]) -> tuple[Path, int, str]:
    fd, name = tempfile.mkstemp(prefix="simdeck-input-", suffix=".zip")
    os.close(fd)
    path = Path(name)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for file in files:
            zf.write(file, file.relative_to(input_dir).as_posix())  # type: ignore[arg-type]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return path, path.stat().st_size, digest.hexdigest()


def _group_name(on: MachineGroup | str | None) -> str:
    """The group to run on, by name: a MachineGroup is started first; none means ``default``."""
    if isinstance(on, MachineGroup):
        on.ensure_started()
        return on.name
    if on is None:
        _tell_default_group()
    return on or "default"


_told_default_group = False


def _tell_default_group() -> None:
    """Say once per script that tasks given no ``on`` run on the server's default group."""
    global _told_default_group
    if not _told_default_group:
        _told_default_group = True
        print(
            "No machine group given (on=...): tasks run on the server's group 'default'.",
            file=sys.stderr,
        )


def _input_of(
    input_dir, remote_assets, storage_dir, on_finish_cleanup
) -> tuple[Path | None, builtins.list[Path], builtins.list[str], dict]:
    """The input folder and its files, the remote assets, and what a request says of them all, checked."""
    assets = [remote_assets] if isinstance(remote_assets, str) else builtins.list(remote_assets or [])
    if input_dir is None and not assets:
        raise ValueError("Give input_dir, the folder of the simulation's files, or remote_assets, or both.")
    input_dir = None if input_dir is None else Path(input_dir)
    files = [] if input_dir is None else _input_files(input_dir)
    sent: dict = {"input_files": [f.relative_to(input_dir).as_posix() for f in files]}
    if assets:
        sent["remote_assets"] = [str(a).replace("\\", "/") for a in assets]
    if storage_dir:
        sent["storage_dir"] = str(storage_dir)
    if cleanup := _cleanup_lines(on_finish_cleanup, input_dir):
        sent["on_finish_cleanup"] = cleanup
    return input_dir, files, assets, sent


def _cleanup_lines(
    on_finish_cleanup: str | builtins.list[str] | None, input_dir: Path | None
) -> builtins.list[str]:
    """``on_finish_cleanup`` as command lines: a script of the input folder, or the lines given."""
    if on_finish_cleanup is None:
        return []
    if isinstance(on_finish_cleanup, (str, os.PathLike)):
        script = Path(on_finish_cleanup)
        if script.is_absolute() or ".." in script.parts:
            raise ValueError(
                f"on_finish_cleanup {str(script)!r} must name a script inside the input folder, "
                "relative to it (or give a list of command lines)."
            )
        if input_dir is not None and not (input_dir / script).is_file():
            raise FileNotFoundError(
                f"on_finish_cleanup: {script.as_posix()} is not a file of the input folder {input_dir}."
            )
        return [f"sh {shlex.quote(script.as_posix())}"]
    lines = builtins.list(on_finish_cleanup)
    if not all(isinstance(line, str) and line.strip() for line in lines):
        raise ValueError(
            "on_finish_cleanup is a script's name or a list of shell command lines, e.g. ['rm -rf tmp']."
        )
    return lines


_OFFERED: dict[str, dict[str, dict]] = {}


def _offered(client: api.Client) -> dict[str, dict]:
    """The simulators a server offers, asked once per server."""
    if client.url not in _OFFERED:
        _OFFERED[client.url] = {s["name"]: s for s in client.get("/simulators")}
    return _OFFERED[client.url]


class Simulator:
    """Any simulator the server offers, by name; subclasses add their own parameters."""

    name = ""

    def __init__(self, name: str | None = None) -> None:
        if name:
            self.name = name.lower()
        if not self.name:
            raise ValueError(
                "Name the simulator, e.g. Simulator('commands'); simulators.list() has them all."
            )
        self._client = api.client()
        # While a templated sweep submits its tasks one by one: the batch they make.
        self._sweep: dict | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if type(self) is not Simulator else f"Simulator({self.name!r})"

    @property
    def version(self) -> str | None:
        """The version the server's host has (machines report their own when a task starts)."""
        return _offered(self._client).get(self.name, {}).get("version")

    def run(
        self,
        input_dir: str | os.PathLike | None,
        on: MachineGroup | str | None = None,
        *,
        project: str | None = None,
        resubmit_on_preemption: bool = False,
        time_to_live: str | int | dt.timedelta | None = None,
        metadata: dict[str, str] | None = None,
        remote_assets: str | builtins.list[str] | None = None,
        storage_dir: str | None = "",
        on_finish_cleanup: str | builtins.list[str] | None = None,
        **parameters,
    ) -> Task:
        """Submit the simulation in ``input_dir`` to machine group ``on``; returns its new task.

        ``on`` is a :class:`MachineGroup` (started here if it is not) or a
        group's name; without it the server's ``default`` group runs it.
        ``time_to_live`` limits the computation (``"90s"``, ``"10m"``,
        ``"1h30m"``, ``"2 hours"``, a timedelta, or a number of seconds);
        ``metadata`` tags the task with string pairs.
        ``remote_assets`` are paths of storage the machine adds to the input
        without the client sending them: another task's files
        (``"<task id>/outputs/frames"``) or uploaded ones (``"my-data/mesh.msh"``),
        each placed in the task's folder under its last name; with them
        ``input_dir`` may be None. ``storage_dir`` is a folder of the
        project's storage the outputs are also kept in, as
        ``<storage_dir>/<task id>/outputs.zip`` (see :mod:`simdeck.storage`).
        ``on_finish_cleanup`` runs after the simulation ends by itself
        (succeeded or failed), before its outputs are stored: a script of the
        input folder, or a list of shell command lines, in the task's folder.
        Every call makes a new task, even with the same arguments.
        """
        from simdeck.tasks import check_metadata

        input_dir, files, assets, sent = _input_of(input_dir, remote_assets, storage_dir, on_finish_cleanup)
        params = {k: v for k, v in (self._chosen() | parameters).items() if v is not None}
        if input_dir is not None and not assets:
            self._check_local(input_dir, params)  # a file it looks for may come from the assets
        if metadata is not None:
            check_metadata(metadata)
        group_name = _group_name(on)
        archive, size, digest = _zip(input_dir, files)
        body = (
            {
                "simulator": self.name,
                "machine_group": group_name,
                "parameters": params,
                "project": project,
                "resubmit_on_preemption": resubmit_on_preemption,
                "time_to_live": _time_to_live(time_to_live),
                "metadata": metadata,
            }
            | sent
            | (self._sweep or {})
        )
        if size <= INLINE_INPUT_MAX_BYTES:
            # One request creates and queues the task; larger inputs are uploaded after.
            body |= {"input_archive": base64.b64encode(archive.read_bytes()).decode(), "input_sha256": digest}
        try:
            # The key makes the request safe to send again: after a timeout or a
            # server restart the server answers with the task it made, if it made one.
            task_info = self._client.post("/tasks", json=body, headers=api.request_key(), retry=True)
        except BaseException:
            archive.unlink(missing_ok=True)
            raise
        task = Task(task_info["id"])
        if self._sweep is not None:  # the next task of a templated sweep joins its batch
            self._sweep = {"batch": task_info["batch"]}
        say = functools.partial(print, file=sys.stderr)
        version = f" {self.version}" if self.version else ""
        say(f"■ Task {task.id} created.")
        say(f"  Simulator:      {task_info['simulator']}{version}")
        if input_dir is not None:
            say(f"  Input folder:   {input_dir.resolve()} ({len(files)} files)")
        for asset in assets:
            say(f"  Remote asset:   {asset}")
        if storage_dir:
            say(f"  Outputs kept in storage folder: {storage_dir}/{task.id}/")
        say(f"  Machine group:  {task_info['machine_group']} ({task_info['machine_type']})")
        say(f"  Project:        {task_info['project']}")
        if time_to_live:
            say(f"  Time to live:   {time_to_live}")
        say(f"  Resubmitted if its machine is lost: {'yes' if resubmit_on_preemption else 'no'}")
        detail = task_info
        try:
            with render.transfer_bar(hidden=task_info["upload_url"] is None) as bar:
                job = bar.add_task("Uploading the input", total=size)
                if task_info["upload_url"] is not None:
                    detail = self._client.upload_input(
                        task.id, task_info["upload_url"], archive, digest, lambda n: bar.advance(job, n)
                    )
        finally:
            archive.unlink(missing_ok=True)
        say(f"  Input uploaded: {size} bytes zipped.")
        position = detail.get("position_in_queue")
        if position is not None:
            say(f"  Tasks ahead of it in the queue: {position}")
        elif detail["status"] != "submitted":
            say(f"  It is {detail['status_label']}: {detail['guidance']['what_happened']}")
        follow = [
            (f"simdeck tasks list --id {task.id}", "its status"),
            (f"simdeck logs {task.id}", "its stdout and stderr, live"),
            (f"simdeck tasks list-files {task.id}", "its files while it runs"),
            (f"simdeck tasks info {task.id}", "everything about it"),
        ]
        width = max(len(command) for command, _ in follow)
        say("  To follow it:")
        for command, what in follow:
            say(f"    {command.ljust(width)}   # {what}")
        return task

    def run_many(
        self,
        input_dir: str | os.PathLike | None,
        sweep: builtins.list[dict] | dict,
        on: MachineGroup | str | None = None,
        *,
        project: str | None = None,
        resubmit_on_preemption: bool = False,
        time_to_live: str | int | dt.timedelta | None = None,
        metadata: dict[str, str] | builtins.list[dict[str, str]] | None = None,
        templates: builtins.list[dict] | None = None,
        remote_assets: str | builtins.list[str] | None = None,
        storage_dir: str | None = "",
        on_finish_cleanup: str | builtins.list[str] | None = None,
    ) -> builtins.list[Task]:
        """Submit one task per parameter set in ``sweep``, all on the input in ``input_dir``.

        ``sweep`` holds the keyword arguments :meth:`run` would take as
        parameters, one dict per task. ``metadata`` is one dict for every
        task or a list of one dict per task. Returns the tasks in the order
        of ``sweep``.

        With ``templates``, ``input_dir`` is a template folder
        (:class:`simdeck.TemplateManager`) and each task gets it rendered
        with its own dict of ``templates``; ``sweep`` is then one dict for
        every task or one per task. Every input is rendered before any task
        is made, so a template that cannot be rendered makes none.

        The tasks are created in requests of growing size (50, 100, 200, ...
        up to a thousand), each all or none, so the machines start on the
        first tasks while the others are being created. A refused parameter
        set refuses its request, and the error names its index in the
        sweep; the tasks of the requests before it exist and run, and the
        error's ``created`` lists them.

        ``remote_assets``, ``storage_dir`` and ``on_finish_cleanup`` are
        every task's, as :meth:`run` takes them (``input_dir`` may then be
        None, as there).
        """
        from simdeck.tasks import check_metadata

        shared = {
            "remote_assets": remote_assets,
            "storage_dir": storage_dir,
            "on_finish_cleanup": on_finish_cleanup,
        }

        if templates is not None:
            return self._run_rendered(
                input_dir,
                templates,
                sweep,
                on,
                metadata,
                project=project,
                resubmit_on_preemption=resubmit_on_preemption,
                time_to_live=time_to_live,
                **shared,
            )
        if isinstance(sweep, dict):
            raise TypeError("Give sweep as a list of dicts, one per task.")
        input_dir, files, assets, sent = _input_of(input_dir, remote_assets, storage_dir, on_finish_cleanup)
        sweep = [{k: v for k, v in (self._chosen() | params).items() if v is not None} for params in sweep]
        if not sweep:
            return []
        if input_dir is not None and not assets:  # a file it looks for may come from the assets
            for params in sweep:
                self._check_local(input_dir, params)
        tags = metadata if isinstance(metadata, builtins.list) else [metadata] * len(sweep)
        if len(tags) != len(sweep):
            raise ValueError(f"Give one metadata dict per task: {len(sweep)} tasks, {len(tags)} dicts.")
        for tag in tags:
            if tag is not None:
                check_metadata(tag)
        group_name = _group_name(on)
        archive, size, digest = _zip(input_dir, files)
        try:
            data = archive.read_bytes()
        finally:
            archive.unlink(missing_ok=True)
        body = {"machine_group": group_name} | sent
        if size <= INLINE_INPUT_MAX_BYTES:
            body |= {"input_archive": base64.b64encode(data).decode(), "input_sha256": digest}
        specs = [
            {
                "simulator": self.name,
                "parameters": params,
                "project": project,
                "resubmit_on_preemption": resubmit_on_preemption,
                "time_to_live": _time_to_live(time_to_live),
                "metadata": tag,
            }
            for params, tag in zip(sweep, tags, strict=True)
        ]
        headers = {"Content-Length": str(size), "X-Archive-Size": str(size), "X-Content-SHA256": digest}
        created = []
        # The requests make one batch on the server: its subscribers hear once when all its tasks ended.
        joined = {"batch_size": len(specs)}
        for start, end in _batches(len(specs)):
            try:
                answer = self._client.post(
                    "/tasks/batch",
                    json=body | joined | {"tasks": specs[start:end]},
                    headers=api.request_key(),
                    retry=True,
                )
                batch = answer["tasks"]
                joined = {"batch": answer["batch"]}
            except SimdeckError as exc:
                _refused_after(exc, start, [Task(item["id"]) for item in created])
                raise
            # A larger input goes to each task of the request before the next request.
            for item in batch:
                if item["upload_url"] is not None:
                    self._client.upload(
                        item["upload_url"].removeprefix("/api/v1"), iter([data]), headers=headers
                    )
            created += batch
        print(f"■ {len(created)} tasks created on {group_name}.", file=sys.stderr)
        return [Task(item["id"]) for item in created]

    def _run_rendered(self, template_dir, templates, sweep, on, metadata, **options) -> builtins.list[Task]:
        """One task per dict of ``templates``, each on the template folder rendered with it."""
        import tempfile

        from simdeck.templating import TemplateManager

        count = len(templates)
        sweep = [sweep] * count if isinstance(sweep, dict) else sweep
        tags = metadata if isinstance(metadata, builtins.list) else [metadata] * count
        for name, given in (("sweep", sweep), ("metadata", tags)):
            if len(given) != count:
                raise ValueError(
                    f"Give one {name} dict per template dict: {count} tasks, {len(given)} dicts."
                )
        with tempfile.TemporaryDirectory(prefix="simdeck-rendered-") as scratch:
            inputs = [
                TemplateManager.render_dir(template_dir, Path(scratch) / str(i), **values)
                for i, values in enumerate(templates)
            ]
            for folder, params in zip(inputs, sweep, strict=True):
                self._check_local(folder, {k: v for k, v in params.items() if v is not None})
            # One batch on the server, as a sweep of one input is: told once when all ended.
            self._sweep = {"batch_size": count}
            try:
                return [
                    self.run(folder, on, metadata=tag, **options, **params)
                    for folder, params, tag in zip(inputs, sweep, tags, strict=True)
                ]
            finally:
                self._sweep = None

    def _check_local(self, input_dir: Path, params: dict) -> None:
        """Catch mistakes before uploading anything."""

    def _chosen(self) -> dict:
        """Parameters chosen when the simulator was made (its version), sent with every task."""
        return {}


class SplishSplash(Simulator):
    """SPlisHSPlasH, the SPH fluid simulator.

    ``sim_config_filename`` names the scene (JSON) inside ``input_dir``; it
    may be left out when the folder holds exactly one JSON file.
    """

    name = "splishsplash"

    def run(  # type: ignore[override]
        self, input_dir, on=None, *, sim_config_filename: str | None = None, **kwargs
    ) -> Task:
        if sim_config_filename is None and input_dir is None:
            raise ValueError(
                "Name the scene file with sim_config_filename=... when the input is remote assets."
            )
        if sim_config_filename is None:
            scenes = sorted(p.name for p in Path(input_dir).glob("*.json"))
            if len(scenes) != 1:
                found = ", ".join(scenes) if scenes else "none"
                raise ValueError(
                    "Name the scene file with sim_config_filename=...; "
                    f"JSON files at the top of {input_dir}: {found}."
                )
            sim_config_filename = scenes[0]
        return super().run(input_dir, on, sim_config_filename=sim_config_filename, **kwargs)

    def _check_local(self, input_dir: Path, params: dict) -> None:
        scene = params.get("sim_config_filename")
        if scene and not (input_dir / scene).is_file():
            raise FileNotFoundError(
                f"The scene file {scene!r} is not in {input_dir}; "
                "sim_config_filename is relative to input_dir."
            )


class Commands(Simulator):
    """Runs your own command lines in order, e.g. ``["python make_mesh.py", "python solve.py"]``."""

    name = "commands"

    def run(self, input_dir, on=None, *, commands: builtins.list[str] | str, **kwargs) -> Task:  # type: ignore[override]
        if isinstance(commands, str):
            commands = [commands]
        return super().run(input_dir, on, commands=[*commands], **kwargs)


class _Suite(Simulator):
    """A simulator of command lines naming its own programs, as Debian installs it on the machines.

    ``version`` asks for a version ("2022.5", or "2022" for any 2022 release):
    a task is refused when no machine of its group has it. ``use_dev`` is
    accepted for scripts written for other services; there is no development
    build here.
    """

    def __init__(self, /, version: str | None = None, use_dev: bool = False) -> None:
        if version is not None and not isinstance(version, str):
            raise ValueError(f"version must be a string such as '2022.5', not {version!r}.")
        if use_dev:
            raise ValueError(
                "use_dev=True: this server runs the simulators installed on its machines and has no "
                "development builds; leave use_dev out."
            )
        super().__init__()
        self._version = version

    @property
    def version(self) -> str | None:
        """The version asked for, else the one the server's host has."""
        return self._version or super().version

    def _chosen(self) -> dict:
        return {"version": self._version}

    def _run_commands(self, input_dir, on, commands, n_vcpus, use_hwthread, **kwargs) -> Task:
        if isinstance(commands, str):
            commands = [commands]
        if not isinstance(commands, builtins.list) or not commands:
            raise ValueError(f"Give commands as a non-empty list of {type(self).__name__} command lines.")
        return Simulator.run(
            self, input_dir, on, commands=[*commands], n_vcpus=n_vcpus, use_hwthread=use_hwthread, **kwargs
        )


class _CommandSuite(_Suite):
    """A suite whose tasks are only command lines of its programs."""

    def run(  # type: ignore[override]
        self,
        input_dir,
        commands: builtins.list[str],
        *,
        on=None,
        n_vcpus: int | None = None,
        use_hwthread: bool | None = None,
        **kwargs,
    ) -> Task:
        return self._run_commands(input_dir, on, commands, n_vcpus, use_hwthread, **kwargs)


class GROMACS(_CommandSuite):
    """GROMACS: ``commands`` are gmx command lines, e.g. ``["gmx grompp ...", "gmx mdrun -deffnm em"]``.

    ``gmx`` runs its own threads on the machine's vCPUs; ``n_vcpus`` runs
    ``gmx_mpi`` commands on that many MPI processes.
    """

    name = "gromacs"


class LAMMPS(_Suite):
    """LAMMPS: runs ``lmp -in <sim_config_filename>``, on ``n_vcpus`` MPI processes when given."""

    name = "lammps"

    def run(  # type: ignore[override]
        self,
        input_dir,
        sim_config_filename: str,
        *,
        on=None,
        n_vcpus: int | None = None,
        use_hwthread: bool | None = None,
        **kwargs,
    ) -> Task:
        return Simulator.run(
            self,
            input_dir,
            on,
            sim_config_filename=sim_config_filename,
            n_vcpus=n_vcpus,
            use_hwthread=use_hwthread,
            **kwargs,
        )

    def _check_local(self, input_dir: Path, params: dict) -> None:
        script = params.get("sim_config_filename")
        if not isinstance(script, str) or not (input_dir / script).is_file():
            raise FileNotFoundError(
                f"The LAMMPS input script {script!r} is not in {input_dir}; "
                "sim_config_filename is relative to input_dir."
            )


class OpenFOAM(_Suite):
    """OpenFOAM: ``commands`` (e.g. ``["blockMesh", "icoFoam"]``) or a ``shell_script`` of the input.

    ``distribution`` is ``"esi"`` (openfoam.com's releases, as Debian's
    v1912) or ``"foundation"`` (openfoam.org's); left out, whichever the
    machines have. A command with ``-parallel`` runs on ``n_vcpus`` MPI
    processes: run decomposePar before it.
    """

    name = "openfoam"

    def __init__(self, /, distribution: str | None = None, version: str | None = None, use_dev: bool = False):
        if distribution is not None and distribution not in ("esi", "foundation"):
            raise ValueError(
                f"Distribution {distribution!r} of OpenFOAM is not supported; give 'esi' or 'foundation'."
            )
        super().__init__(version=version, use_dev=use_dev)
        self.distribution = distribution

    def _chosen(self) -> dict:
        return super()._chosen() | {"distribution": self.distribution}

    def run(  # type: ignore[override]
        self,
        input_dir,
        *,
        commands: builtins.list[str] | None = None,
        shell_script: str | None = None,
        on=None,
        n_vcpus: int | None = None,
        use_hwthread: bool | None = None,
        **kwargs,
    ) -> Task:
        if (commands is None) == (shell_script is None):
            raise ValueError("Give either commands or shell_script (one of them).")
        if shell_script is not None:
            if not (Path(input_dir) / shell_script).is_file():
                raise FileNotFoundError(f"The shell script {shell_script!r} is not in {input_dir}.")
            return Simulator.run(
                self,
                input_dir,
                on,
                shell_script=shell_script,
                n_vcpus=n_vcpus,
                use_hwthread=use_hwthread,
                **kwargs,
            )
        return self._run_commands(input_dir, on, commands, n_vcpus, use_hwthread, **kwargs)


class QuantumEspresso(_CommandSuite):
    """Quantum ESPRESSO: ``commands`` are its programs' command lines, e.g. ``["pw.x -in scf.in"]``.

    Programs read their input with ``-in FILE`` (commands run without a
    shell, so not ``< FILE``); with ``n_vcpus`` each runs on that many MPI
    processes.
    """

    name = "quantumespresso"

    def available_commands(self) -> builtins.list[str]:
        """The Quantum ESPRESSO programs commands may start with (as Debian installs them)."""
        return [
            "pw.x",
            "ph.x",
            "pp.x",
            "dos.x",
            "projwfc.x",
            "bands.x",
            "q2r.x",
            "matdyn.x",
            "cp.x",
            "neb.x",
            "dynmat.x",
            "epsilon.x",
            "hp.x",
            "ld1.x",
            "turbo_lanczos.x",
            "xspectra.x",
        ]


# Named like the builtin on purpose: scripts written for the seeds' service call simulators.list().
def list() -> builtins.list[dict]:
    """The simulators the server offers: name, label, version, and whether its host has them."""
    return api.client().get("/simulators")


def __getattr__(attr: str) -> type[Simulator]:
    """``simulators.Gromacs`` for any simulator the server offers that has no class here."""
    if not attr[:1].isupper():
        raise AttributeError(attr)
    try:
        offered = _offered(api.client())
    except SimdeckError:
        raise AttributeError(attr) from None
    name = attr.lower()
    if name not in offered:
        raise AttributeError(
            f"The server offers no simulator called {attr!r}; it offers: {', '.join(sorted(offered))}."
        )
    return type(attr, (Simulator,), {"name": name, "__doc__": offered[name].get("label", attr)})


__all__ = [
    "GROMACS",
    "LAMMPS",
    "Commands",
    "OpenFOAM",
    "QuantumEspresso",
    "SimdeckError",
    "Simulator",
    "SplishSplash",
    "list",
]


def _time_to_live(value) -> str | None:
    """The time to live as the server reads it (whole seconds), checked here first."""
    total = durations.seconds(value, "time_to_live")
    return None if total is None else f"{math.ceil(total)}s"
