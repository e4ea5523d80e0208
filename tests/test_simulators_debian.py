"""GROMACS, LAMMPS, OpenFOAM and Quantum ESPRESSO from Debian: checked at submit, run for real.

The first tests check what a submission may ask (only the simulator's own
programs, MPI processes a machine has, a version its machines have)
without running anything. The end-to-end tests run each example through
the API on real machines, in their sandboxes, together with a broken input
whose failure must quote the simulator's own error line. Each is skipped
where Debian's package is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import simdeck
from simdeck.errors import SimdeckError
from tasks_app import services
from tasks_app import simulators as sims
from tasks_app.errors import Refused
from tasks_app.models import Machine, Task
from tasks_app.simulators.openfoam import find_bashrc, foam_environment
from tasks_app.simulators.progress import ProgressReader
from tasks_app.views.waiting import why_waiting
from tests.helpers import ROOT, wait_for

EXAMPLES = ROOT / "examples"


def installed(program: str, package: str):
    return pytest.mark.skipif(
        shutil.which(program) is None,
        reason=f"Debian's {package} package is not installed ({program} is not on PATH)",
    )


def refusal(simulator: str, parameters: dict, files: list[str]) -> sims.InvalidParameters:
    with pytest.raises(sims.InvalidParameters) as caught:
        sims.get(simulator).validate(parameters, files)
    return caught.value


# -- what a submission may ask ------------------------------------------------------------------


@installed("gmx", "gromacs")
def test_a_gromacs_task_runs_gromacs_programs_only():
    files = ["em.mdp"]
    ok = sims.get("gromacs").validate({"commands": ["gmx grompp -f em.mdp", " gmx mdrun -deffnm em "]}, files)
    assert ok == {"commands": ["gmx grompp -f em.mdp", "gmx mdrun -deffnm em"]}
    error = refusal("gromacs", {"commands": ["gmx grompp -f em.mdp", "python evil.py"]}, files)
    assert error.field == "commands"
    assert "Command 2 runs 'python', which is not a GROMACS program" in str(error)
    assert "Commands simulator" in str(error)
    error = refusal("gromacs", {"commands": ["gmx mdrun -deffnm em > out.txt"]}, files)
    assert "shell syntax ('>')" in str(error) and "without a shell" in str(error)
    error = refusal("gromacs", {"commands": ["mpirun -np 2 gmx_mpi mdrun"]}, files)
    assert "Simdeck starts MPI itself" in str(error)
    error = refusal("gromacs", {"commands": ["gmx mdrun"], "n_vcpus": 2}, files)
    assert error.field == "n_vcpus" and "none of the commands uses gmx_mpi" in str(error)
    error = refusal("gromacs", {"commands": []}, files)
    assert "non-empty list" in str(error)


@installed("lmp", "lammps")
def test_a_lammps_task_names_its_input_script():
    lammps = sims.get("lammps")
    assert lammps.validate({"sim_config_filename": "melt.in", "n_vcpus": 2}, ["melt.in"]) == {
        "sim_config_filename": "melt.in",
        "n_vcpus": 2,
    }
    assert "is not in the input folder" in str(
        refusal("lammps", {"sim_config_filename": "in.x"}, ["melt.in"])
    )
    assert "melt.in" in str(refusal("lammps", {}, ["melt.in"]))
    for bad in (0, -1, 1.5, True, "2"):
        error = refusal("lammps", {"sim_config_filename": "melt.in", "n_vcpus": bad}, ["melt.in"])
        assert error.field == "n_vcpus"
    error = refusal("lammps", {"sim_config_filename": "melt.in", "commands": ["lmp"]}, ["melt.in"])
    assert "not commands" in str(error)
    invocation = lammps.invocations(
        Path("/x"), {"sim_config_filename": "melt.in", "n_vcpus": 2}, Path("/task")
    )[0]
    assert invocation.argv == ["mpirun", "-np", "2", "lmp", "-in", "melt.in"]
    assert invocation.env["OMP_NUM_THREADS"] == "1" and invocation.env["OMPI_MCA_plm"] == "isolated"


@installed("blockMesh", "openfoam")
def test_an_openfoam_task_runs_commands_or_a_script_and_parallel_needs_processes():
    foam = sims.get("openfoam")
    files = ["system/controlDict", "run.sh"]
    assert foam.validate({"shell_script": "run.sh", "distribution": "esi"}, files) == {
        "shell_script": "run.sh",
        "distribution": "esi",
    }
    assert "either commands" in str(refusal("openfoam", {}, files)).lower()
    error = refusal("openfoam", {"commands": ["blockMesh", "icoFoam -parallel"]}, files)
    assert error.field == "n_vcpus" and "numberOfSubdomains" in str(error)
    assert "not a file of the input folder" in str(refusal("openfoam", {"shell_script": "go.sh"}, files))
    assert refusal("openfoam", {"commands": ["ls"]}, files).field == "commands"
    assert (
        refusal("openfoam", {"commands": ["icoFoam"], "distribution": "cfd"}, files).field == "distribution"
    )
    # Debian's is ESI's v1912: a task asking for the Foundation's cannot run on it.
    assert foam.version() == "v1912"
    assert "foundation" in foam.unfit("v1912", {"distribution": "foundation"})
    assert foam.unfit("v1912", {"distribution": "esi", "version": "1912"}) is None


@installed("pw.x", "quantum-espresso")
def test_a_quantum_espresso_task_reads_its_input_with_an_option():
    qe = sims.get("quantumespresso")
    assert qe.validate({"commands": ["pw.x -in si.scf.in"]}, ["si.scf.in"]) == {
        "commands": ["pw.x -in si.scf.in"]
    }
    error = refusal("quantumespresso", {"commands": ["pw.x < si.scf.in"]}, ["si.scf.in"])
    assert "shell syntax ('<')" in str(error)
    assert refusal("quantumespresso", {"commands": ["gmx mdrun"]}, []).field == "commands"
    assert qe.unfit("6.7", {"version": "7.2"}) == "the task asks for Quantum ESPRESSO 7.2"
    assert qe.unfit("6.7", {"version": "6"}) is None


@pytest.mark.parametrize(
    ("simulator", "theirs", "other"),
    [
        ("gromacs", "gmx_mpi mdrun -deffnm em", "lmp -in melt.in"),
        ("quantumespresso", "ph.x -in ph.in", "python run.py"),
        ("openfoam", "simpleFoam -parallel", "./Allrun"),
    ],
)
def test_a_server_without_the_package_checks_commands_by_the_programs_names(
    simulator, theirs, other, monkeypatch
):
    # The server's own host need not have the simulators its machines run.
    adapter = sims.get(simulator)
    monkeypatch.setattr(adapter, "programs", lambda: frozenset())
    assert adapter.validate({"commands": [theirs], "n_vcpus": 2}, [])["commands"] == [theirs]
    error = refusal(simulator, {"commands": [theirs, other], "n_vcpus": 2}, [])
    assert f"Command 2 runs {other.split()[0]!r}, which is not a {adapter.label} program" in str(error)
    # The machine, which has the package, checks again against what it has.
    monkeypatch.setattr(adapter, "programs", lambda: frozenset({"none-of-these"}))
    with pytest.raises(sims.InvalidParameters, match=f"Command 1 runs {theirs.split()[0]!r}"):
        adapter.invocations(Path("/x"), {"commands": [theirs], "n_vcpus": 2}, Path("/task"))


def test_the_client_classes_refuse_what_this_server_cannot_give_before_asking_it():
    with pytest.raises(ValueError, match="no development builds"):
        simdeck.simulators.GROMACS(use_dev=True)
    with pytest.raises(ValueError, match="give 'esi' or 'foundation'"):
        simdeck.simulators.OpenFOAM(distribution="openfoam.org")
    with pytest.raises(ValueError, match="version must be a string"):
        simdeck.simulators.QuantumEspresso(version=7.2)


@pytest.mark.django_db
def test_a_task_for_a_simulator_no_machine_of_the_group_has_is_refused(alice, started_group, logged_in):
    machine = Machine.objects.create(
        group=started_group,
        name="lab-m1",
        state=Machine.State.ONLINE,
        simulators={"commands": "1", "lammps": "29Sep2021"},
    )

    def submit(simulator: str, parameters: dict) -> Refused:
        with pytest.raises(Refused) as caught:
            services.create_task(
                alice,
                simulator=simulator,
                parameters=parameters,
                machine_group=started_group,
                input_files=["melt.in"],
            )
        return caught.value

    if shutil.which("gmx"):
        refused = submit("gromacs", {"commands": ["gmx mdrun"]})
        assert refused.status == 409 and refused.field == "simulator"
        assert str(refused) == (
            "No machine of group lab has GROMACS: they have Commands, LAMMPS. Submit it to a group whose "
            "machines have GROMACS (simdeck resources available lists them), or ask an admin to install "
            "it on these machines."
        )
    refused = submit("lammps", {"sim_config_filename": "melt.in", "version": "2Aug2023"})
    assert refused.field == "version"
    assert "they have LAMMPS 29Sep2021, and the task asks for LAMMPS 2Aug2023" in str(refused)
    refused = submit("lammps", {"sim_config_filename": "melt.in", "n_vcpus": 8})
    assert refused.field == "n_vcpus" and "more than the 4 vCPUs of a c2-standard-4 machine" in str(refused)
    task = services.create_task(
        alice,
        simulator="lammps",
        parameters={"sim_config_filename": "melt.in", "version": "29Sep2021", "n_vcpus": 4},
        machine_group=started_group,
        input_files=["melt.in"],
    )
    assert task.parameters["version"] == "29Sep2021"
    # The group's page shows what each machine has.
    page = logged_in.get(f"/machine-groups/{started_group.name}/").content.decode()
    assert "<td>Commands 1, LAMMPS 29Sep2021</td>" in page
    # A machine that reported nothing (it predates reports) decides nothing.
    machine.simulators = {}
    machine.save()
    services.create_task(
        alice,
        simulator="commands",
        parameters={"commands": ["true"]},
        machine_group=started_group,
        input_files=["a"],
    )


# -- progress, from the programs' own output -----------------------------------------------------


def fractions_over(reader: ProgressReader, output: bytes) -> list[float]:
    """What ``reader`` says over ``output`` fed a line at a time, as a machine feeds it batches."""
    said = [reader.lines(line) for line in output.splitlines(keepends=True)]
    return [fraction for fraction in said if fraction is not None]


@installed("lmp", "lammps")
def test_lammps_progress_follows_the_thermo_steps_of_a_real_run(tmp_path):
    shutil.copytree(EXAMPLES / "lammps-lj-melt", tmp_path, dirs_exist_ok=True)
    lammps = sims.get("lammps")
    run = subprocess.run(["lmp", "-in", "melt.in"], cwd=tmp_path, capture_output=True, check=True, timeout=99)
    reader = lammps.progress_reader(tmp_path, {"sim_config_filename": "melt.in"})
    said = fractions_over(reader, run.stdout)
    # thermo 100 over run 500: a line at steps 0, 100, ... 500, then the run's end.
    assert said[:6] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert said[-1] == 1.0 and said == sorted(said)
    # Two runs count as one total; a script that loops cannot be counted before it runs.
    melt = (tmp_path / "melt.in").read_text()
    (tmp_path / "two.in").write_text(melt + "run 1500\n")
    reader = lammps.progress_reader(tmp_path, {"sim_config_filename": "two.in"})
    assert fractions_over(reader, run.stdout)[-1] == 0.25
    (tmp_path / "loop.in").write_text(melt + "label again\nnext i\njump SELF again\n")
    assert type(lammps.progress_reader(tmp_path, {"sim_config_filename": "loop.in"})) is ProgressReader


@installed("blockMesh", "openfoam")
def test_openfoam_progress_is_the_solvers_time_against_the_cases_end_time(tmp_path):
    shutil.copytree(EXAMPLES / "openfoam-cavity", tmp_path, dirs_exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)} | foam_environment()
    subprocess.run(["blockMesh"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=True)
    solved = subprocess.run(["icoFoam"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=True)
    reader = sims.get("openfoam").progress_reader(tmp_path, {"commands": ["blockMesh", "icoFoam"]})
    said = fractions_over(reader, solved.stdout)
    # deltaT 0.005 up to endTime 0.5: a hundred steps.
    assert len(said) == 100 and said[0] == 0.01 and said[-1] == 1.0 and said == sorted(said)
    # reconstructPar lists the times again afterwards: the task stays done.
    assert reader.lines(b"Time = 0.1\n") == 1.0
    # A SIMDECK_PROGRESS line of the task's own still counts.
    assert reader.lines(b"SIMDECK_PROGRESS 0.5\n") == 0.5
    control = tmp_path / "system" / "controlDict"
    control.write_text(control.read_text().replace("stopAt          endTime;", "stopAt          writeNow;"))
    assert type(sims.get("openfoam").progress_reader(tmp_path, {})) is ProgressReader


@installed("gmx", "gromacs")
def test_gromacs_progress_follows_the_steps_in_mdruns_log(tmp_path):
    shutil.copytree(EXAMPLES / "gromacs-argon-em", tmp_path / "run")
    run = tmp_path / "run"
    commands = ["gmx grompp -f em.mdp -c argon.gro -p topol.top -o em.tpr", "gmx mdrun -deffnm em"]
    for command in commands:
        subprocess.run(command.split(), cwd=run, capture_output=True, check=True, timeout=120)
    log = (run / "em.log").read_bytes()
    # The reader follows the log as mdrun writes it: here written again, a piece at a time.
    (run / "em.log").unlink()
    reader = sims.get("gromacs").progress_reader(run, {"commands": commands})
    assert reader.look() is None  # no log yet
    said = []
    with open(run / "em.log", "wb") as f:
        for start in range(0, len(log), 2000):
            f.write(log[start : start + 2000])
            f.flush()
            said.append(reader.look())
    said = [fraction for fraction in said if fraction is not None]
    # Steepest descents of at most 500 steps that converged before: steps, then the end.
    assert 0 < said[0] < 0.1 and said[-2] < 0.5 and said[-1] == 1.0 and said == sorted(said)


@installed("pw.x", "quantum-espresso")
def test_quantum_espresso_progress_is_the_scf_accuracy_against_its_threshold(tmp_path):
    shutil.copytree(EXAMPLES / "quantumespresso-si-scf", tmp_path, dirs_exist_ok=True)
    argv = ["pw.x", "-in", "si.scf.in"]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, check=True, timeout=99)
    reader = sims.get("quantumespresso").progress_reader(tmp_path, {"commands": ["pw.x -in si.scf.in"]})
    said = fractions_over(reader, run.stdout)
    # conv_thr 1.0d-8: the first estimate is the start, each iteration gains orders of magnitude.
    assert said[0] == 0.0 and said[-1] == 1.0 and said == sorted(said) and len(said) >= 4
    assert 0.2 < said[2] < 0.9


@pytest.mark.e2e
@pytest.mark.timeout(180)
@installed("blockMesh", "openfoam")
def test_an_elastic_groups_task_waits_for_a_machine_that_has_its_simulator(
    stack, client_for, alice_key, tmp_path, monkeypatch
):
    # The machines look for OpenFOAM's bashrc where there is none yet: they find no OpenFOAM.
    bashrc = tmp_path / "bashrc"
    monkeypatch.delenv("SIMDECK_OPENFOAM_BASHRC", raising=False)
    real = find_bashrc()
    stack.restart_provider(SIMDECK_OPENFOAM_BASHRC=str(bashrc), SIMDECK_MACHINE_REFRESH_SECONDS="1")
    client_for(alice_key)
    mg = simdeck.resources.ElasticMachineGroup("n2-standard-2", min_machines=1, max_machines=1).start()
    wait_for(
        lambda: (
            Machine.objects.filter(group__name=mg.name, state=Machine.State.ONLINE)
            .exclude(simulators={})
            .exists()
        ),
        90,
        message="a machine online that reported its simulators",
    )
    first = Machine.objects.get(group__name=mg.name, state=Machine.State.ONLINE)
    assert "openfoam" not in first.simulators and "lammps" in first.simulators

    # Taken, not refused: it waits, and says for what.
    task = simdeck.simulators.OpenFOAM().run(EXAMPLES / "openfoam-cavity", commands=["blockMesh"], on=mg)
    waiting = why_waiting(Task.objects.select_related("machine_group").get(pk=task.id), 0)
    assert waiting.reason == f"No machine of {mg.name} has OpenFOAM."
    assert Task.objects.get(pk=task.id).status == "submitted"

    # An admin installs it: a machine started afterwards finds it and runs the task.
    bashrc.write_text(f". {real}\n")  # sourced where it is: it finds its installation from there
    ended(task, "success")
    ran_on = Task.objects.get(pk=task.id).machine
    assert ran_on != first and "openfoam" in ran_on.simulators


# -- for real, through the API ------------------------------------------------------------------


@pytest.fixture
def mg(client_for, alice_key, stack):
    """A started group of two two-vCPU machines: a good input and a broken one run side by side."""
    client_for(alice_key)
    group = simdeck.resources.MachineGroup("n2-standard-2", num_machines=2).start()
    wait_for(
        lambda: Machine.objects.filter(group__name=group.name, state=Machine.State.ONLINE).count() == 2,
        90,
        message="two machines online",
    )
    return group


def broken_copy(example: str, tmp_path: Path, path: str, old: str, new: str) -> Path:
    """The example, copied, with one line of one file changed to break it."""
    folder = tmp_path / f"{example}-broken"
    shutil.copytree(EXAMPLES / example, folder)
    text = (folder / path).read_text()
    assert old in text
    (folder / path).write_text(text.replace(old, new))
    return folder


def ended(task, expect: str):
    status = task.wait(polling_period=0.2, silent_mode=True)
    info = task.get_info()
    assert status == expect, (status, info.error_detail)
    return info


def outputs(task, tmp_path: Path) -> Path:
    return task.download_outputs(output_dir=tmp_path / task.id)


@pytest.mark.e2e
@pytest.mark.timeout(240)
@installed("gmx", "gromacs")
def test_gromacs_minimises_the_argon_box_and_explains_a_topology_that_does_not_fit(mg, tmp_path):
    version = sims.get("gromacs").version()
    reported = Machine.objects.filter(group__name=mg.name).values_list("simulators", flat=True)
    assert [r["gromacs"] for r in reported] == [version, version]
    assert simdeck.api.client().get(f"/machine-groups/{mg.name}")["simulators"]["gromacs"] == [version]
    commands = ["gmx grompp -f em.mdp -c argon.gro -p topol.top -o em.tpr", "gmx mdrun -deffnm em"]
    gromacs = simdeck.simulators.GROMACS()
    good = gromacs.run(EXAMPLES / "gromacs-argon-em", commands, on=mg)
    broken = broken_copy("gromacs-argon-em", tmp_path, "topol.top", "AR  216", "AR  215")
    bad = gromacs.run(broken, commands, on=mg)
    with pytest.raises(SimdeckError) as caught:
        simdeck.simulators.GROMACS(version="2019").run(EXAMPLES / "gromacs-argon-em", commands, on=mg)
    assert "and the task asks for GROMACS 2019" in str(caught.value)

    info = ended(good, "success")
    assert info.simulator_version == sims.get("gromacs").version()
    log = (outputs(good, tmp_path) / "em.log").read_text()
    energy = float(re.search(r"Potential Energy\s+=\s+(\S+)", log).group(1))
    # Attractive Lennard-Jones atoms near their spacing: about -6.5 kJ/mol each.
    assert -1600 < energy < -1200, energy
    assert re.search(r"Steepest Descents converged to Fmax < 10 in \d+ steps", log)

    info = ended(bad, "failed")
    assert "number of coordinates in coordinate file (argon.gro, 216)" in info.guidance.why
    assert "does not match topology (topol.top, 215)" in info.guidance.why
    assert "[ molecules ]" in info.guidance.what_to_do
    assert info.error_detail.startswith("GROMACS said: Fatal error:")


@pytest.mark.e2e
@pytest.mark.timeout(240)
@installed("lmp", "lammps")
def test_lammps_melts_on_two_mpi_processes_and_explains_an_unknown_pair_style(mg, tmp_path):
    lammps = simdeck.simulators.LAMMPS()
    good = lammps.run(EXAMPLES / "lammps-lj-melt", "melt.in", n_vcpus=2, on=mg)
    broken = broken_copy("lammps-lj-melt", tmp_path, "melt.in", "lj/cut 2.5", "lj/cutt 2.5")
    bad = lammps.run(broken, "melt.in", on=mg)

    ended(good, "success")
    log = (outputs(good, tmp_path) / "log.lammps").read_text()
    assert "Loop time of" in log and "on 2 procs for 500 steps with 2048 atoms" in log
    last = re.search(r"^\s+500\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", log, re.MULTILINE)
    # Started at 3.0, the melt settles near half of it as kinetic energy turns potential.
    assert 1.0 < float(last.group(1)) < 2.5, last.group(0)

    info = ended(bad, "failed")
    assert "ERROR: Unrecognized pair style 'lj/cutt'" in info.guidance.why
    assert "LAMMPS manual" in info.guidance.what_to_do


@pytest.mark.e2e
@pytest.mark.timeout(240)
@installed("blockMesh", "openfoam")
def test_openfoam_solves_the_cavity_in_parallel_and_explains_a_missing_viscosity(mg, tmp_path):
    foam = simdeck.simulators.OpenFOAM(distribution="esi")
    good = foam.run(
        EXAMPLES / "openfoam-cavity",
        commands=["blockMesh", "decomposePar", "icoFoam -parallel", "reconstructPar"],
        n_vcpus=2,
        on=mg,
    )
    broken = broken_copy("openfoam-cavity", tmp_path, "constant/transportProperties", "nu  ", "mu  ")
    bad = foam.run(broken, commands=["blockMesh", "icoFoam"], on=mg)
    scripted = tmp_path / "openfoam-cavity-scripted"
    shutil.copytree(EXAMPLES / "openfoam-cavity", scripted)
    (scripted / "run.sh").write_text("set -e\nblockMesh > mesh.log\nicoFoam > solve.log\necho solved\n")
    by_script = foam.run(scripted, shell_script="run.sh", on=mg)
    with pytest.raises(SimdeckError) as caught:
        simdeck.simulators.OpenFOAM(distribution="foundation").run(
            EXAMPLES / "openfoam-cavity", commands=["blockMesh"], on=mg
        )
    assert "asks for OpenFOAM's foundation distribution" in str(caught.value)

    ended(good, "success")
    folder = outputs(good, tmp_path)
    assert {"0.1", "0.2", "0.3", "0.4", "0.5"} <= {p.name for p in folder.iterdir()}
    assert (folder / "processor1" / "0.5" / "U").is_file()
    velocity = (folder / "0.5" / "U").read_text()
    assert "internalField   nonuniform List<vector>" in velocity
    assert "Finalising parallel run" in (folder / "stdout.txt").read_text()

    ended(by_script, "success")
    folder = outputs(by_script, tmp_path)
    assert (folder / "0.5" / "U").is_file() and "End" in (folder / "solve.log").read_text()

    info = ended(bad, "failed")
    assert "FOAM FATAL IO ERROR" in info.guidance.why
    assert "Entry 'nu' not found in dictionary" in info.guidance.why
    assert "keywords" in info.guidance.what_to_do


@pytest.mark.e2e
@pytest.mark.timeout(240)
@installed("pw.x", "quantum-espresso")
def test_quantum_espresso_finds_the_energy_of_silicon_and_explains_a_misspelt_variable(mg, tmp_path):
    qe = simdeck.simulators.QuantumEspresso()
    good = qe.run(EXAMPLES / "quantumespresso-si-scf", ["pw.x -in si.scf.in"], n_vcpus=2, on=mg)
    broken = broken_copy("quantumespresso-si-scf", tmp_path, "si.scf.in", "ecutwfc", "ecutwfcc")
    bad = qe.run(broken, ["pw.x -in si.scf.in"], on=mg)

    ended(good, "success")
    out = (outputs(good, tmp_path) / "stdout.txt").read_text()
    energy = float(re.search(r"^!\s+total energy\s+=\s+(\S+) Ry", out, re.MULTILINE).group(1))
    assert energy == pytest.approx(-15.8389, abs=1e-3)
    assert re.search(r"Parallel version \(MPI\), running on\s+2 processors", out)
    assert "convergence has been achieved" in out

    info = ended(bad, "failed")
    assert "Error in routine read_namelists" in info.guidance.why
    assert "misspelt" in info.guidance.what_to_do
    assert Task.objects.get(pk=bad.id).diagnosis["quote"].startswith("Error in routine read_namelists")
