"""Input folders rendered from templates, alone and as a sweep of real tasks."""

from __future__ import annotations

import pytest

import simdeck
from simdeck import TemplateManager
from simdeck.templating import TemplateError


@pytest.fixture
def template(tmp_path):
    folder = tmp_path / "template"
    (folder / "scene").mkdir(parents=True)
    (folder / "scene" / "config.json.jinja").write_text('{"viscosity": {{ nu }}, "steps": {{ steps }}}\n')
    (folder / "run.sh").write_text("cat scene/config.json\n")
    (folder / "notes.txt").write_text("{{ left as it is }}\n")  # not a template: copied
    return folder


def test_templates_are_rendered_and_the_rest_copied(template, tmp_path):
    target = TemplateManager.render_dir(template, tmp_path / "case-1", nu=0.01, steps=200)
    assert target == tmp_path / "case-1"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "notes.txt",
        "run.sh",
        "scene",
        "scene/config.json",
    ]
    assert (target / "scene" / "config.json").read_text() == '{"viscosity": 0.01, "steps": 200}\n'
    assert (target / "notes.txt").read_text() == "{{ left as it is }}\n"


def test_a_missing_parameter_names_the_file_and_writes_nothing(template, tmp_path):
    with pytest.raises(TemplateError, match=r"config\.json\.jinja .*'steps' is undefined") as caught:
        TemplateManager.render_dir(template, tmp_path / "case-1", nu=0.01)
    assert isinstance(caught.value, ValueError)  # what scripts catch for a bad argument
    assert not (tmp_path / "case-1").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["template"], "no scratch folder left"


def test_a_target_is_only_rendered_over_when_asked(template, tmp_path):
    target = tmp_path / "case-1"
    target.mkdir()
    (target / "mine.txt").write_text("kept\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        TemplateManager.render_dir(template, target, nu=1, steps=1)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    TemplateManager.render_dir(template, target, overwrite=True, nu=2, steps=3)
    assert (target / "scene" / "config.json").read_text() == '{"viscosity": 2, "steps": 3}\n'
    assert (target / "mine.txt").read_text() == "kept\n"


def test_a_syntax_error_names_the_line(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt.jinja").write_text("fine\n{% if %}\n")
    with pytest.raises(TemplateError, match=r"a\.txt\.jinja, line 2"):
        TemplateManager.render_dir(tmp_path / "t", tmp_path / "out")
    with pytest.raises(TemplateError, match="does not exist"):
        TemplateManager.render_dir(tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_sweep_runs_one_task_per_rendered_input(stack, client_for, alice_key, template):
    from tasks_app.models import Task

    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    sim = simdeck.simulators.Commands()
    broken = [{"nu": 1, "steps": 2}, {"nu": 5}]
    with pytest.raises(TemplateError, match="'steps' is undefined"):
        sim.run_many(template, {"commands": ["sh run.sh"]}, on=mg, templates=broken)
    assert not Task.objects.exists(), "a sweep that cannot be rendered makes no task"

    tasks = sim.run_many(
        template,
        {"commands": ["sh run.sh"]},
        on=mg,
        templates=[{"nu": 0.1, "steps": 10}, {"nu": 0.2, "steps": 20}],
        metadata=[{"case": "a"}, {"case": "b"}],
    )
    assert [t.wait(polling_period=0.3, silent_mode=True) for t in tasks] == ["success", "success"]
    from simdeck import api

    outputs = [api.client().request("GET", f"/tasks/{t.id}/logs/stdout").text for t in tasks]
    assert outputs == ['{"viscosity": 0.1, "steps": 10}\n', '{"viscosity": 0.2, "steps": 20}\n']
    assert [t.get_metadata() for t in tasks] == [{"case": "a"}, {"case": "b"}]
    batches = {Task.objects.get(pk=t.id).batch for t in tasks}
    assert len(batches) == 1 and batches.pop().size == 2, "one batch, as a sweep of one input is"
