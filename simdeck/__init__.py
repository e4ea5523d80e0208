"""Simdeck's Python client: submit simulations, follow and collect them.

import simdeck
mg = simdeck.resources.MachineGroup("c2-standard-4", num_machines=2)
mg.start()
task = simdeck.simulators.SplishSplash().run(
    input_dir="examples/splishsplash-dambreak", sim_config_filename="config.json", on=mg)
task.wait()
task.download_outputs()
mg.terminate()
"""

from simdeck import resources, simulators, tasks
from simdeck.errors import SimdeckError

__version__ = "0.1.0"
__all__ = ["SimdeckError", "resources", "simulators", "tasks"]
