"""The generic simulator: runs the user's own command lines, one after another."""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks_app.simulators.base import InvalidParameters, Invocation, Simulator, SimulatorMissing


class Commands(Simulator):
    name = "commands"
    label = "Commands"

    # Asked for every task a machine runs; once found, the shell is not looked up again.
    _shell_found = False

    def version(self) -> str:
        if not self._shell_found:
            if shutil.which("sh") is None:
                raise SimulatorMissing("No POSIX shell (sh) on this machine; install dash or bash.")
            self._shell_found = True
        return "1"

    def validate(self, parameters: dict, input_files: list[str]) -> dict:
        unknown = set(parameters) - {"commands"}
        if unknown:
            raise InvalidParameters(
                f"Commands takes only 'commands'; unknown: {', '.join(sorted(unknown))}.",
                field=sorted(unknown)[0],
            )
        commands = parameters.get("commands")
        if isinstance(commands, str):
            commands = [commands]
        if not isinstance(commands, list) or not commands:
            raise InvalidParameters(
                "Give 'commands' as a non-empty list of command lines, "
                "e.g. ['python make_mesh.py', 'python solve.py'].",
                field="commands",
            )
        for i, command in enumerate(commands):
            if not isinstance(command, str) or not command.strip():
                raise InvalidParameters(
                    f"Command {i + 1} is empty or not a string; each command is one line of text.",
                    field="commands",
                )
        return {"commands": [c.strip() for c in commands]}

    def invocations(self, workdir: Path, parameters: dict, run_dir: Path | None = None) -> list[Invocation]:
        # Each line goes through the shell, as the user would type it; the
        # executor stops at the first one that fails.
        return [Invocation(["sh", "-c", c], display=c) for c in parameters["commands"]]
