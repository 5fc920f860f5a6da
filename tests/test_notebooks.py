"""The teaching notebooks run, top to bottom, on smollm2-135m (FAST settings).

Each notebook is executed with nbclient in a fresh kernel of this interpreter, with
``MECHLENS_NOTEBOOK_FAST=1`` (few prompts, layers and steps) and a temporary working
directory. The notebooks assert their own key facts in code cells (patching clean into
clean changes nothing, the last layer's path and activation patching agree, a direction
beats random ones, weights are restored exactly, ...), so an execution error is a failed
check. The test also checks that the committed ``.ipynb`` files are what
``notebooks/build.py`` writes, that they are saved without outputs, and that every
notebook displays its figures.

Select them with ``-m notebooks``; deselect with ``-m "not notebooks"``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
# Minimum number of figures each notebook must display (counted as image/png outputs).
MIN_FIGURES = {"01": 6, "02": 6, "03": 5, "04": 3, "05": 5, "06": 5}
TIMEOUT_S = 1800  # per cell; the machine running CI may be slow and shared

# "notebooks" selects these tests; "slow" because they load smollm2-135m.
pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOK_DIR / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_all_six_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


def test_notebooks_are_built_from_build_py():
    build = _build_module()
    assert build.main(["--check"]) == 0, "run `python notebooks/build.py` and commit the notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    assert all(not c.outputs and c.execution_count is None for c in code)
    # the parameters cell comes first, so FAST can switch every later cell
    assert "MECHLENS_NOTEBOOK_FAST" in code[0].source
    assert nb.metadata.kernelspec.name == "python3"


def _execute(path: Path, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("MECHLENS_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # conftest sets MPLBACKEND=Agg for the test process; the kernel needs the inline backend.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    # One extra cell reports the kernel's interpreter: it must be this one (with mechlens).
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return nb


def _listing() -> set[str]:
    return {p.name for p in NOTEBOOK_DIR.iterdir()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    before = _listing()
    nb = _execute(path, tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= MIN_FIGURES[path.name[:2]], f"{path.name} displayed {figures} figures"
    kernel_python = nb.cells[-1].outputs[0]["text"].strip()
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)
    # files go to a temp dir (the kernel's working directory) or nowhere
    assert _listing() == before
