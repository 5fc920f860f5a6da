"""The teaching notebooks: where they are, the pairing check, and their execution.

``notebooks/NN_name.py`` (jupytext percent format) is each notebook's source: edit, lint and
review that file. ``notebooks/NN_name.ipynb`` is its paired notebook, committed *with the
outputs of a full run* on smollm2-135m (the settings the prose describes), so it reads on
GitHub and on the documentation site without being run. After editing a ``.py``, write its
notebook again with ``python scripts/notebooks.py execute notebooks/NN_name.py`` (runs it
and saves the outputs; ``jupytext --sync notebooks/NN_name.py`` alone keeps the pair in sync
but leaves the outputs of edited cells empty).

Used by ``tests/test_notebooks.py`` (which executes the notebooks with
``MECHLENS_NOTEBOOK_FAST=1``: few prompts, layers and steps) and by the documentation build
(``scripts/mkdocs_hooks.py``), which renders the committed outputs.

    python scripts/notebooks.py check                  # pairs in sync, full-run outputs committed
    python scripts/notebooks.py execute --all          # run every notebook (full settings) and
                                                       # save its outputs into notebooks/*.ipynb
    python scripts/notebooks.py execute notebooks/05_steering.py   # one notebook
    python scripts/notebooks.py run OUT [NN ...]       # execute (FAST) into OUT/NN_name.ipynb
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.compare import NotebookDifference, compare_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FORMAT = "py:percent"
TIMEOUT_S = 1800  # per cell; the machine running CI may be slow and shared

# The environment a notebook runs in: offline, no progress bars in the outputs (the
# notebooks read MECHLENS_NOTEBOOK_PROGRESS in their parameters cell), and for the tests
# small settings (FAST_ENV) or for the committed outputs the full ones (FULL_ENV).
_OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MECHLENS_NOTEBOOK_PROGRESS": "0",
}
FAST_ENV = {"MECHLENS_NOTEBOOK_FAST": "1", **_OFFLINE}
FULL_ENV = {"MECHLENS_NOTEBOOK_FAST": "0", **_OFFLINE}

# Recorded in a committed notebook's metadata by `execute`: how its outputs were made.
OUTPUTS_KEY = "mechlens"

# Appended to every executed notebook, then removed: the kernel must be this interpreter.
_KERNEL_CHECK = "import sys\nprint(sys.executable)"


def sources() -> list[Path]:
    """The notebook sources, ``notebooks/NN_name.py``, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def read(source: Path) -> nbformat.NotebookNode:
    """The notebook a ``.py`` source describes (no outputs)."""
    return jupytext.read(source, fmt=FORMAT)


def pairing_problems(source: Path, require_outputs: bool = True) -> list[str]:
    """What is wrong with ``source`` and its paired ``.ipynb`` (empty when in sync and, with
    ``require_outputs``, saved with the clean outputs of a full run)."""
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
    if require_outputs:
        problems += output_problems(paired, ipynb.name)
    return problems


# Notebooks whose committed .ipynb does not yet carry a clean full run of the current source
# (regenerate with `python scripts/notebooks.py execute notebooks/NN_name.py`, then remove the
# entry). The output and figure checks skip them and say so; every other notebook must pass.
PENDING: dict[str, str] = {}


def output_problems(nb: nbformat.NotebookNode, name: str = "the notebook") -> list[str]:
    """What is wrong with the saved outputs of ``nb`` (empty when it carries a clean full run).

    Every code cell must have run (in order, from a full run written by ``execute``), and no
    output may be an error, a warning or a progress bar on stderr.
    """
    fix = f"run `python scripts/notebooks.py execute notebooks/{Path(name).with_suffix('.py').name}`"
    made = nb.metadata.get(OUTPUTS_KEY, {})
    if made.get("settings") != "full":
        return [f"{name} carries no outputs of a full run: {fix}"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    if counts != list(range(1, len(code) + 1)):
        return [f"{name}: cells not run top to bottom (execution counts {counts}): {fix}"]
    problems = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.output_type == "error":
                problems.append(f"{name}, cell {i}: an error output ({o.ename})")
            elif o.output_type == "stream" and o.name == "stderr":
                problems.append(f"{name}, cell {i}: stderr output {o.text[:80]!r}")
            elif "Warning" in o.get("text", ""):
                problems.append(f"{name}, cell {i}: a warning in the output {o.text[:80]!r}")
    return problems


def execute(
    source: Path, workdir: Path | None = None, timeout: int = TIMEOUT_S, fast: bool = True,
    log: bool = False,
):
    """Run a notebook source top to bottom; return the executed notebook.

    The kernel is this interpreter's ``python3`` kernel, started in ``workdir`` (a fresh
    temporary directory when None) with :data:`FAST_ENV` (``fast=True``, the tests) or
    :data:`FULL_ENV` (the settings the prose describes). A cell error raises
    ``nbclient.exceptions.CellExecutionError``.
    """
    import nbclient

    nb = read(source)
    nb.cells.append(nbformat.v4.new_code_cell(_KERNEL_CHECK))
    env = {**os.environ, **(FAST_ENV if fast else FULL_ENV)}
    env.pop("MPLBACKEND", None)  # the kernel needs the inline backend, not Agg
    with tempfile.TemporaryDirectory() as tmp:
        cwd = str(workdir or tmp)
        n_code = sum(c.cell_type == "code" for c in nb.cells) - 1  # without the kernel check
        start = time.perf_counter()

        def done(cell, cell_index, **_):  # a long run shows where it is
            if log and cell.execution_count and cell.execution_count <= n_code:
                print(f"  cell {cell.execution_count}/{n_code} done "
                      f"({(time.perf_counter() - start) / 60:.1f} min)", flush=True)

        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}},
            on_cell_executed=done,
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


def save_outputs(source: Path) -> tuple[Path, float]:
    """Execute ``source`` with the full settings and save its outputs into the paired
    ``.ipynb`` (cells, ids and metadata of the pair kept); return (path, seconds)."""
    ipynb = source.with_suffix(".ipynb")
    problems = [p for p in pairing_problems(source, require_outputs=False)]
    if problems:
        raise RuntimeError("; ".join(problems))
    start = time.perf_counter()
    nb = execute(source, fast=False, log=True)
    seconds = time.perf_counter() - start
    paired = nbformat.read(ipynb, as_version=4)
    for cell, done in zip(paired.cells, nb.cells, strict=True):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = done.outputs, done.execution_count
    paired.metadata[OUTPUTS_KEY] = {
        "settings": "full",
        "model": "smollm2-135m",
        "written_by": "python scripts/notebooks.py execute",
    }
    nbformat.write(paired, ipynb)  # saved either way, to look at; `check` fails on problems
    problems = output_problems(paired, ipynb.name)
    if problems:
        raise RuntimeError(f"{ipynb.name} was saved with problems: " + "; ".join(problems))
    return ipynb, seconds


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
    sub.add_parser("check", help="check every .py/.ipynb pair (in sync, full-run outputs)")
    ex = sub.add_parser(
        "execute", help="run notebooks with the full settings and save their outputs"
    )
    ex.add_argument("sources", nargs="*", type=Path, help="notebooks/NN_name.py files")
    ex.add_argument("--all", action="store_true", help="every notebook, one after another")
    run = sub.add_parser("run", help="execute notebooks with FAST settings")
    run.add_argument("out", type=Path, help="folder for the executed .ipynb files")
    run.add_argument("numbers", nargs="*", help="notebook numbers (NN); all when none given")
    args = ap.parse_args(argv)
    if args.command == "check":
        problems = [p for s in sources() for p in pairing_problems(s)]
        print("\n".join(problems) or f"{len(sources())} notebooks in sync")
        return 1 if problems else 0
    if args.command == "execute":
        if args.all == bool(args.sources):
            ap.error("execute: name notebooks/NN_name.py files or give --all (not both)")
        known = {s.resolve(): s for s in sources()}
        chosen = []
        for given in args.sources:
            path = given.with_suffix(".py").resolve()
            if path not in known:
                ap.error(f"execute: {given} is not a notebook source (notebooks/NN_name.py)")
            chosen.append(known[path])
        for source in chosen or sources():
            print(f"executing {source.name} (full settings) ...", flush=True)
            path, seconds = save_outputs(source)
            nb = nbformat.read(path, as_version=4)
            print(f"wrote {path.relative_to(ROOT)} ({figures(nb)} figures) in {seconds / 60:.1f} min",
                  flush=True)
        return 0
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
