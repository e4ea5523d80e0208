"""Simulators: each ``run()`` uploads an input folder and creates a new task."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from simdeck import api
from simdeck.errors import SimdeckError
from simdeck.resources import MachineGroup
from simdeck.tasks import Task

CHUNK = 1 << 20


def _input_files(input_dir: Path) -> list[Path]:
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


def _zip(input_dir: Path, files: list[Path]) -> tuple[Path, int, str]:
    fd, name = tempfile.mkstemp(prefix="simdeck-input-", suffix=".zip")
    os.close(fd)
    path = Path(name)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for file in files:
            zf.write(file, file.relative_to(input_dir).as_posix())
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return path, path.stat().st_size, digest.hexdigest()


def _stream(path: Path, on_chunk) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            on_chunk(len(chunk))
            yield chunk


class Simulator:
    name = ""

    def __init__(self) -> None:
        self._client = api.client()

    def _parameters(self, **kwargs) -> dict:
        return {k: v for k, v in kwargs.items() if v is not None}

    def run(
        self,
        input_dir: str | os.PathLike,
        on: MachineGroup | str | None = None,
        *,
        project: str | None = None,
        resubmit_on_preemption: bool = False,
        time_to_live: str | None = None,
        metadata: dict[str, str] | None = None,
        **parameters,
    ) -> Task:
        """Submit the simulation in ``input_dir`` to machine group ``on``; returns its new task."""
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        input_dir = Path(input_dir)
        files = _input_files(input_dir)
        params = self._parameters(**parameters)
        self._check_local(input_dir, params)
        if isinstance(on, MachineGroup):
            on.ensure_started()
            group_name = on.name
        else:
            group_name = on or "default"
        task_info = self._client.post(
            "/tasks",
            json={
                "simulator": self.name,
                "machine_group": group_name,
                "input_files": [f.relative_to(input_dir).as_posix() for f in files],
                "parameters": params,
                "project": project,
                "resubmit_on_preemption": resubmit_on_preemption,
                "time_to_live": time_to_live,
                "metadata": metadata,
            },
        )
        task = Task(task_info["id"])
        print(f"■ Task {task.id} created: {self.name} on machine group {group_name}.", file=sys.stderr)
        print(f"  Input folder: {input_dir.resolve()}", file=sys.stderr)
        if time_to_live:
            print(f"  Time to live: {time_to_live}", file=sys.stderr)
        print(f"  Resubmit on preemption: {'yes' if resubmit_on_preemption else 'no'}", file=sys.stderr)
        archive, size, digest = _zip(input_dir, files)
        try:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
                disable=not sys.stderr.isatty(),
            ) as bar:
                job = bar.add_task("Uploading input", total=size)
                detail = self._client.upload(
                    task_info["upload_url"].removeprefix("/api/v1"),
                    _stream(archive, lambda n: bar.advance(job, n)),
                    headers={
                        "Content-Length": str(size),
                        "X-Archive-Size": str(size),
                        "X-Content-SHA256": digest,
                    },
                )
        finally:
            archive.unlink(missing_ok=True)
        position = detail.get("position_in_queue")
        if position is not None:
            print(f"  Tasks ahead in the queue: {position}", file=sys.stderr)
        print(
            "  Follow it with:\n"
            f"    simdeck tasks list --id {task.id}\n"
            f"    simdeck logs {task.id}\n"
            f"    simdeck tasks info {task.id}",
            file=sys.stderr,
        )
        return task

    def _check_local(self, input_dir: Path, params: dict) -> None:
        """Catch mistakes before uploading anything."""


class SplishSplash(Simulator):
    """SPlisHSPlasH, the SPH fluid simulator; ``sim_config_filename`` names the scene file."""

    name = "splishsplash"

    def run(self, input_dir, on=None, *, sim_config_filename: str, **kwargs) -> Task:  # type: ignore[override]
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

    def run(self, input_dir, on=None, *, commands: list[str], **kwargs) -> Task:  # type: ignore[override]
        if isinstance(commands, str):
            commands = [commands]
        return super().run(input_dir, on, commands=[*commands], **kwargs)


def list() -> list[dict]:
    """The simulators the server offers."""
    return api.client().get("/simulators")


__all__ = ["Commands", "SimdeckError", "Simulator", "SplishSplash", "list"]
