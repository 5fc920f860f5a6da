"""The teaching notebooks run, top to bottom, on smollm2-135m (FAST settings).

Each notebook's source is ``notebooks/NN_name.py`` (jupytext percent format), paired with
``notebooks/NN_name.ipynb``. The source is executed with nbclient in a fresh kernel of this
interpreter, with ``MECHLENS_NOTEBOOK_FAST=1`` (few prompts, layers and steps) and a
temporary working directory (``scripts/notebooks.py``). The notebooks assert their own key
facts in code cells (patching clean into clean changes nothing, the last layer's path and
activation patching agree, a direction beats random ones, weights are restored exactly,
...), so an execution error is a failed check. The test also checks that each committed
``.ipynb`` is in sync with its ``.py`` and carries the clean outputs of a full run (written by
``python scripts/notebooks.py execute``: every cell run in order, no error, warning or
progress bar, its figures), and that every notebook displays its figures.

Select them with ``-m notebooks``; deselect with ``-m "not notebooks"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
# Minimum number of figures each notebook must display (counted as image/png outputs);
# a notebook not listed must display at least one.
MIN_FIGURES = {"01": 6, "02": 6, "03": 5, "04": 3, "05": 5, "06": 5, "07": 4}

# "notebooks" selects these tests; "slow" because they load smollm2-135m.
pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def test_notebooks_are_numbered_from_01():
    numbers = [int(p.name[:2]) for p in SOURCES]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 6
    # no notebook without its source
    assert {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")} == {p.stem for p in SOURCES}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_is_paired(source, notebook_tools):
    assert notebook_tools.pairing_problems(source, require_outputs=False) == []
    nb = notebook_tools.read(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    # the parameters cell comes first, so FAST can switch every later cell
    assert "MECHLENS_NOTEBOOK_FAST" in code[0].source
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_carries_a_clean_full_run(source, notebook_tools):
    """What GitHub and the site show: the outputs of a full run, results only."""
    import nbformat

    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    problems = notebook_tools.output_problems(nb, source.with_suffix(".ipynb").name)
    if source.stem in notebook_tools.PENDING:
        # a pending notebook must still need its run: once it is clean, it leaves the list
        assert problems or notebook_tools.figures(nb) < MIN_FIGURES.get(source.name[:2], 1), (
            f"{source.stem} carries a clean full run: remove it from PENDING in scripts/notebooks.py")
        pytest.skip(f"pending regeneration (scripts/notebooks.py PENDING): {notebook_tools.PENDING[source.stem]}")
    assert problems == []
    assert notebook_tools.figures(nb) >= MIN_FIGURES.get(source.name[:2], 1)


def test_output_check_sees_warnings_and_fast_runs(notebook_tools):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    assert "no outputs of a full run" in notebook_tools.output_problems(nb)[0]
    nb.metadata[notebook_tools.OUTPUTS_KEY] = {"settings": "full"}
    nb.cells[0].execution_count = 1
    assert notebook_tools.output_problems(nb) == []
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found")]
    assert "stderr output" in notebook_tools.output_problems(nb)[0]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="UserWarning: x")]
    assert "a warning in the output" in notebook_tools.output_problems(nb)[0]


def test_pairing_check_sees_an_edit(notebook_tools, tmp_path):
    source = tmp_path / SOURCES[0].name
    source.write_text(SOURCES[0].read_text().replace("# ## 1.", "# ## One."), encoding="utf-8")
    ipynb = SOURCES[0].with_suffix(".ipynb")
    (tmp_path / ipynb.name).write_bytes(ipynb.read_bytes())
    (problem,) = notebook_tools.pairing_problems(source, require_outputs=False)
    assert "differs from" in problem and "## One." in problem


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes(source, executed_notebook, notebook_tools):
    nb, new_files = executed_notebook(source)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = notebook_tools.figures(nb)
    assert figures >= MIN_FIGURES.get(source.name[:2], 1), f"{source.name} displayed {figures} figures"
    # files go to a temp dir (the kernel's working directory) or nowhere
    assert not new_files
