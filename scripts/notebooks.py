"""The teaching notebooks: where they are, the pairing check, and execution on small settings.

``notebooks/NN_name.py`` (jupytext percent format) is each notebook's source: edit, lint and
review that file. ``notebooks/NN_name.ipynb`` is its paired notebook, saved without outputs,
for readers who open Jupyter; after editing a ``.py`` run ``jupytext --sync notebooks/NN_name.py``
(with jupytext installed, Jupyter keeps the pair in sync by itself).

Used by ``tests/test_notebooks.py`` and by the documentation build (``docs/hooks.py``), which
renders the notebooks executed with ``MECHLENS_NOTEBOOK_FAST=1``.

    python scripts/notebooks.py check              # every pair in sync, no outputs committed
    python scripts/notebooks.py run OUT [NN ...]   # execute (FAST) into OUT/NN_name.ipynb
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
from jupytext.compare import NotebookDifference, compare_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FORMAT = "py:percent"
TIMEOUT_S = 1800  # per cell; the machine running CI may be slow and shared

# The environment a notebook runs in: small settings, offline.
FAST_ENV = {
    "MECHLENS_NOTEBOOK_FAST": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Appended to every executed notebook, then removed: the kernel must be this interpreter.
_KERNEL_CHECK = "import sys\nprint(sys.executable)"


def sources() -> list[Path]:
    """The notebook sources, ``notebooks/NN_name.py``, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def read(source: Path) -> nbformat.NotebookNode:
    """The notebook a ``.py`` source describes (no outputs)."""
    return jupytext.read(source, fmt=FORMAT)


def pairing_problems(source: Path) -> list[str]:
    """What is wrong with ``source`` and its paired ``.ipynb`` (empty when in sync)."""
    ipynb = source.with_suffix(".ipynb")
    name = source.name
    if not ipynb.exists():
        return [f"{ipynb.name} is missing: run `jupytext --sync notebooks/{name}`"]
    paired = nbformat.read(ipynb, as_version=4)
    problems = []
    try:
        nbformat.validate(paired)
    except nbformat.ValidationError as e:
        problems.append(f"{ipynb.name} is not a valid notebook: {e}")
    try:
        compare_notebooks(paired, read(source), fmt=FORMAT)
    except NotebookDifference as e:
        problems.append(
            f"{ipynb.name} differs from {name} (run `jupytext --sync notebooks/{name}` "
            f"after editing the .py): {e}"
        )
    with_outputs = [
        i
        for i, c in enumerate(paired.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    if with_outputs:
        problems.append(f"{ipynb.name} is saved with outputs in cells {with_outputs}")
    return problems


def execute(source: Path, workdir: Path | None = None, timeout: int = TIMEOUT_S):
    """Run a notebook source top to bottom with FAST settings; return the executed notebook.

    The kernel is this interpreter's ``python3`` kernel, started in ``workdir`` (a fresh
    temporary directory when None) with :data:`FAST_ENV`. A cell error raises
    ``nbclient.exceptions.CellExecutionError``.
    """
    import nbclient

    nb = read(source)
    nb.cells.append(nbformat.v4.new_code_cell(_KERNEL_CHECK))
    env = {**os.environ, **FAST_ENV}
    env.pop("MPLBACKEND", None)  # the kernel needs the inline backend, not Agg
    with tempfile.TemporaryDirectory() as tmp:
        cwd = str(workdir or tmp)
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}
        )
        client.execute(env=env)
    check = nb.cells.pop()
    kernel_python = check.outputs[0]["text"].strip()
    if os.path.realpath(kernel_python) != os.path.realpath(sys.executable):
        raise RuntimeError(
            f"{source.name} ran in {kernel_python}, not {sys.executable}: the `python3` "
            "kernel of this environment must be the one running (install ipykernel here)"
        )
    return nb


def figures(nb: nbformat.NotebookNode) -> int:
    """How many figures (image/png outputs) an executed notebook displays."""
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check every .py/.ipynb pair (in sync, no outputs)")
    run = sub.add_parser("run", help="execute notebooks with FAST settings")
    run.add_argument("out", type=Path, help="folder for the executed .ipynb files")
    run.add_argument("numbers", nargs="*", help="notebook numbers (NN); all when none given")
    args = ap.parse_args(argv)
    if args.command == "check":
        problems = [p for s in sources() for p in pairing_problems(s)]
        print("\n".join(problems) or f"{len(sources())} notebooks in sync")
        return 1 if problems else 0
    chosen = [s for s in sources() if not args.numbers or s.name[:2] in args.numbers]
    unknown = set(args.numbers) - {s.name[:2] for s in sources()}
    if unknown:
        ap.error(f"no notebook numbered {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for source in chosen:
        nb = execute(source)
        path = args.out / source.with_suffix(".ipynb").name
        nbformat.write(nb, path)
        print(f"wrote {path} ({figures(nb)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
