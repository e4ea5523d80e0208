"""Storage and chained tasks from Python and the command line, against a real server and machines."""

from __future__ import annotations

import os
import zipfile

import pytest

import simdeck
from simdeck.errors import InvalidInput, NotFound
from tests.client_fixtures import normalize, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_storage_round_trip_and_a_chain_of_two_tasks(stack, client_for, alice_key, tmp_path, capsys):
    client_for(alice_key)
    data = tmp_path / "data"
    (data / "deep").mkdir(parents=True)
    (data / "coarse.txt").write_text("coarse mesh\n")
    (data / "deep" / "fine.txt").write_text("fine mesh, finer\n")

    # Upload a folder, look at it, measure it.
    written = simdeck.storage.upload(data, "meshes")
    assert written == ["meshes/coarse.txt", "meshes/deep/fine.txt"]
    capsys.readouterr()
    rows = simdeck.storage.listdir()
    assert [(r["name"], r["size"]) for r in rows] == [("meshes/", 29)]
    printed = normalize(capsys.readouterr().out)
    assert "alice-default:/" in printed and "meshes/  <size>  <time>" in printed
    assert "Total: <size> in 1 entry." in printed
    assert simdeck.storage.get_space_used() == pytest.approx(29 / 1000**3)

    # Down again, copied, and links and paths outside refused.
    back = simdeck.storage.download("meshes", tmp_path / "back")
    assert (back / "deep" / "fine.txt").read_text() == "fine mesh, finer\n"
    simdeck.storage.copy("meshes/coarse.txt", "kept/coarse.txt")
    (data / "link").symlink_to(data / "coarse.txt")
    with pytest.raises(ValueError, match="is a link; links are not uploaded"):
        simdeck.storage.upload(data, "again")
    with pytest.raises(InvalidInput, match="climbs out with '..'"):
        simdeck.storage.upload(data / "coarse.txt", "../elsewhere")
    with pytest.raises(InvalidInput, match="confirm=False"):
        simdeck.storage.remove("kept")  # asks first, and there is no terminal here
    assert simdeck.storage.remove("kept", confirm=False)["removed"] == 1

    # A task makes outputs; the next takes them and an uploaded file, sending no input of its own.
    mg = simdeck.resources.MachineGroup("n2-standard-2", name="chain").start()
    sim = simdeck.simulators.Commands()
    source = tmp_path / "first"
    source.mkdir()
    (source / "make.sh").write_text("mkdir -p frames && echo 41 > frames/a.txt && echo 42 > result.txt\n")
    first = sim.run(source, on=mg, commands=["sh make.sh"])
    assert first.wait() == "success"
    with pytest.raises(NotFound, match=r"remote_assets\[0\].*no task with id 'zzzzzzzzzzzzzzzzzzzzzzzzz'"):
        sim.run(None, on=mg, commands=["ls"], remote_assets=["zzzzzzzzzzzzzzzzzzzzzzzzz/outputs"])
    second = sim.run(
        None,
        on=mg,
        commands=["cat frames/a.txt outputs/result.txt coarse.txt > joined.txt"],
        remote_assets=[f"{first.id}/outputs/frames", f"{first.id}/outputs", "meshes/coarse.txt"],
        storage_dir="chained",
    )
    assert second.wait() == "success", second.get_info().error_detail
    info = second.get_info()
    assert info.inputs_from == [first.id] and info.storage_dir == "chained"
    assert first.get_info().used_by == [second.id]
    outputs = second.download_outputs(output_dir=tmp_path / "second")
    assert (outputs / "joined.txt").read_text() == "41\n42\ncoarse mesh\n"
    assert not (outputs / "coarse.txt").exists()  # an input left untouched is not an output

    # The outputs are kept in the storage folder too, and its files are read there as any other.
    listed = simdeck.storage.listdir(f"chained/{second.id}", print_results=False)
    assert [r["name"] for r in listed] == ["outputs.zip"]
    kept = simdeck.storage.download("chained", tmp_path / "kept")
    assert (kept / second.id / "joined.txt").read_text() == "41\n42\ncoarse mesh\n"
    task_folder = simdeck.storage.download(f"{first.id}/outputs", tmp_path / "task", decompress=False)
    assert zipfile.is_zipfile(task_folder.with_suffix(".zip"))

    # The same from the command line.
    env = {"NO_COLOR": "1"}
    ls = run_cli("storage", "ls", "--order-by", "name", "--sort-order", "asc", "-m", "5", env=env)
    assert ls.returncode == 0, ls.stderr
    shown = normalize(ls.stdout)
    assert "chained/" in shown and "meshes/" in shown and f"{first.id}/" in ls.stdout
    assert "Total: <size> in 4 entries." in shown
    size = run_cli("storage", "size", env=env)
    assert size.returncode == 0 and "Project alice-default stores" in size.stdout
    upload = run_cli("storage", "upload", str(data / "coarse.txt"), "cli", env=env)
    assert upload.returncode == 0, upload.stderr
    down = run_cli("storage", "download", "cli/coarse.txt", "--dir", str(tmp_path / "cli"), env=env)
    assert down.returncode == 0 and (tmp_path / "cli" / "cli" / "coarse.txt").read_text() == "coarse mesh\n"
    bad = run_cli("storage", "remove", "/etc", "-y", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "write 'etc' instead" in bad.stderr
    missing = run_cli("storage", "download", "nothing-here", env=env)
    assert missing.returncode == 3 and "Nothing is stored at 'nothing-here'" in missing.stderr
    gone = run_cli("storage", "remove", "cli", "-y", env=env)
    assert gone.returncode == 0, gone.stderr
    assert "cli/" not in run_cli("storage", "ls", env=env).stdout
    mg.terminate()
    assert os.environ.get("SIMDECK_API_KEY") == alice_key
