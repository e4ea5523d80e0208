"""Input folders made from a template: files ending in ``.jinja`` rendered with parameters.

    from simdeck import TemplateManager

    TemplateManager.render_dir("dambreak-template", "dambreak-2", particle_radius=0.02)

``config.json.jinja`` in the template becomes ``config.json`` in the
target, rendered by Jinja2; every other file is copied as it is. A
parameter a template uses but was not given is an error that names the
file and the parameter: a half-rendered input would run and waste a
machine. Nothing is written unless the whole folder renders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jinja2

from simdeck.errors import InvalidInput

TEMPLATE_EXTENSION = ".jinja"


class TemplateError(InvalidInput):
    """A template could not be rendered with the parameters given."""


class TemplateManager:
    """Renders template folders into input folders (the same calls as Inductiva's)."""

    TEMPLATE_EXTENSION = TEMPLATE_EXTENSION

    @classmethod
    def render_dir(
        cls, source_dir: str | os.PathLike, target_dir: str | os.PathLike, overwrite: bool = False, **params
    ) -> Path:
        """Render ``source_dir`` into ``target_dir`` with ``params``; returns the target.

        ``target_dir`` must not exist unless ``overwrite`` is true; then the
        rendered files replace those of the same name and the others stay.
        """
        source, target = Path(source_dir), Path(target_dir)
        if not source.is_dir():
            raise TemplateError(f"The template folder {source} does not exist or is not a folder.")
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"{target} already exists. Pass overwrite=True to render over it, or name another folder."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # Rendered beside the target first, so an error leaves nothing behind.
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _render_tree(source, scratch, params)
            if target.exists():
                shutil.copytree(scratch, target, dirs_exist_ok=True, symlinks=True)
            else:
                scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target


def render_file(source: Path, params: dict) -> str:
    """One template's text, rendered; a missing parameter raises :class:`TemplateError`."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(source.parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # inputs are simulation files, not HTML
    )
    try:
        return env.get_template(source.name).render(**params)
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            f"The template {source} uses a parameter that was not given ({exc.message}). "
            "Pass it to render_dir() as a keyword argument."
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        where = f"{source}, line {exc.lineno}"
        raise TemplateError(f"The template {where} has a syntax error: {exc.message}") from None


def _render_tree(source: Path, target: Path, params: dict) -> None:
    for root, dirs, files in os.walk(source):
        here = Path(root)
        out = target / here.relative_to(source)
        for name in dirs:
            (out / name).mkdir(exist_ok=True)
        for name in files:
            path = here / name
            if name.endswith(TEMPLATE_EXTENSION) and len(name) > len(TEMPLATE_EXTENSION):
                rendered = render_file(path, params)
                (out / name[: -len(TEMPLATE_EXTENSION)]).write_text(rendered)
            else:
                shutil.copy2(path, out / name, follow_symlinks=True)
