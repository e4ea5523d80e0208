"""Simdeck's Python client: submit simulations, follow and collect them.

    import simdeck

    mg = simdeck.resources.MachineGroup("c2-standard-4", num_machines=2)
    mg.start()
    task = simdeck.simulators.SplishSplash().run(
        input_dir="examples/splishsplash-dambreak", sim_config_filename="config.json", on=mg)
    task.wait()
    task.download_outputs()
    mg.terminate()

The server and API key come from ``SIMDECK_URL`` / ``SIMDECK_API_KEY`` or
from ``simdeck auth login``; see :mod:`simdeck.config`.
"""

from simdeck import errors, projects, resources, simulators, storage, tasks, templating, users, utils
from simdeck.errors import SimdeckError
from simdeck.templating import TemplateManager

__version__ = "0.1.0"
__all__ = [
    "SimdeckError",
    "TemplateManager",
    "errors",
    "projects",
    "resources",
    "simulators",
    "storage",
    "tasks",
    "templating",
    "users",
    "utils",
]
