"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml).

* The home page is README.md, its ``docs/...`` links rewritten to be relative to docs/;
  CONTRIBUTING.md is the page contributing.md.
* Every teaching notebook ``notebooks/NN_name.ipynb`` is added to the site and to the
  "Notebooks" section of the navigation, as committed: with the outputs of its full run
  (written by ``python scripts/notebooks.py execute``), which mkdocs-jupyter renders without
  executing anything. With ``MECHLENS_DOCS_NOTEBOOKS=DIR`` the notebooks are read from DIR
  instead (e.g. FAST runs written by ``python scripts/notebooks.py run DIR``).
* On the API reference pages, a guide named in a docstring (``docs/patching.md``) becomes a
  link to that page.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import nbformat
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.hooks.mechlens")

_spec = importlib.util.spec_from_file_location("mechlens_scripts_notebooks", ROOT / "scripts" / "notebooks.py")
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)

_staged: tempfile.TemporaryDirectory | None = None  # <tmp>/notebooks/NN_name.ipynb, this process


def as_site_page(text: str) -> str:
    """README.md (or CONTRIBUTING.md) with its links into docs/ made relative to docs/ (the
    site's root), and its link to CONTRIBUTING.md pointing at the site's copy."""
    text = re.sub(r"\]\(CONTRIBUTING\.md", "](contributing.md", text)
    return re.sub(r"\]\(docs/", "](", text)


# Sphinx roles in docstrings (":func:`x`", ":class:`~a.b.C`") reach the page as text before
# the code span; the reference keeps the code span only.
_SPHINX_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|obj|exc|py:\w+):(<code>)~?")


# "docs/patching.md" or "docs/patching.md#section" in a docstring, in a code span or not (and
# not inside an attribute): a guide of this site.
_GUIDE = re.compile(r'(?<![="/\w])(<code>)?docs/([\w-]+)\.md(#[\w-]+)?(</code>)?')


def link_guides(html: str, guides: set[str], prefix: str) -> str:
    """``html`` with every mention of a guide in ``guides`` (``docs/NAME.md``) made a link."""

    def link(m: re.Match) -> str:
        name, anchor = m.group(2), m.group(3) or ""
        if f"{name}.md" not in guides:
            return m.group(0)
        text = f"docs/{name}.md{anchor}"
        if m.group(1) and m.group(4):
            text = f"<code>{text}</code>"
        else:  # an unbalanced code span stays as it was around the link
            return (m.group(1) or "") + f'<a href="{prefix}{name}.html{anchor}">{text}</a>' + (m.group(4) or "")
        return f'<a href="{prefix}{name}.html{anchor}">{text}</a>'

    return _GUIDE.sub(link, html)


def on_page_content(html, page, config, files, **kwargs):
    html = _SPHINX_ROLE.sub(r"\1", html)
    if page.file.src_uri.startswith("reference/"):
        guides = {f.src_uri for f in files if "/" not in f.src_uri and f.src_uri.endswith(".md")}
        html = link_guides(html, guides, prefix="../")
    return html


# mkdocs-jupyter writes the MathJax loader with the URL it is given, by default a CDN; with
# none it writes `<script src="">`, which re-requests the page and fails. The notebooks
# carry no TeX, so the loader goes.
_EMPTY_SCRIPT = re.compile(r'<script src="">\s*</script>')


def on_post_page(output, page, config, **kwargs):
    return _EMPTY_SCRIPT.sub("", output)


def _staged_notebook(source: Path) -> tuple[Path, Path]:
    """(folder, path) of the notebook of ``source`` under ``folder/notebooks/``: the committed
    ``.ipynb`` with its outputs, or the one in MECHLENS_DOCS_NOTEBOOKS."""
    global _staged
    if _staged is None:
        _staged = tempfile.TemporaryDirectory(prefix="mechlens-docs-")
        (Path(_staged.name) / "notebooks").mkdir()
    name = source.with_suffix(".ipynb").name
    path = Path(_staged.name) / "notebooks" / name
    given = os.environ.get("MECHLENS_DOCS_NOTEBOOKS")
    if given:
        executed = Path(given) / name
        if not executed.exists():
            raise FileNotFoundError(
                f"MECHLENS_DOCS_NOTEBOOKS={given} has no {name}; write it with "
                f"`python scripts/notebooks.py run {given}` or unset the variable"
            )
        shutil.copyfile(executed, path)
    else:
        committed = source.with_suffix(".ipynb")
        problems = notebooks.output_problems(nbformat.read(committed, as_version=4), committed.name)
        if problems and source.stem in notebooks.PENDING:
            log.info("%s: pending regeneration (%s)", committed.name, notebooks.PENDING[source.stem])
        elif problems:  # the page would show no or broken outputs
            log.warning("; ".join(problems))
        shutil.copyfile(committed, path)
    return Path(_staged.name), path


def on_config(config, **kwargs):
    # every notebook, in order, under "Notebooks" (after docs/notebooks.md)
    section = next(
        (item for item in config["nav"] if isinstance(item, dict) and "Notebooks" in item), None
    )
    if section is None:
        raise ValueError("mkdocs.yml: the nav needs a 'Notebooks' section for the notebooks")
    entries = section["Notebooks"]
    for source in notebooks.sources():
        uri = f"notebooks/{source.with_suffix('.ipynb').name}"
        if uri not in entries:
            entries.append(uri)
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which picks up the notebooks
def on_files(files, config, **kwargs):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=as_site_page(readme)))
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "contributing.md", content=as_site_page(contributing)))
    for source in notebooks.sources():
        folder, path = _staged_notebook(source)
        files.append(
            File(
                f"notebooks/{path.name}", src_dir=str(folder), dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
