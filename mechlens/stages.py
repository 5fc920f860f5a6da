"""Resumable staged runs: the machinery behind ``mechlens reproduce`` and ``mechlens study``.

A run is a list of named stages. Each stage writes its files under ``OUT/<name>/`` and,
when it finishes, a ``done.json`` marker holding the run's key (model, settings, the
stage's own specification), its headline numbers (``summary`` is the markdown the report
shows) and the size of every file it wrote. A stage whose marker matches the key and
whose files are all there is skipped next time (its numbers are read back); a damaged
marker, a different key or a missing or resized file makes it run again.

The report is rewritten after *every* finished stage, so an interrupted run leaves a
report of everything that finished.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mechlens.fileio import DamagedFileError, atomic_path, read_json, write_json

__all__ = ["MARKER", "stage_files", "finished", "run_stages", "save_fig", "save_csv"]

MARKER = "done.json"


def stage_files(d: Path) -> dict[str, int]:
    """Every file a stage wrote (relative path -> size in bytes), recorded in its marker."""
    return {
        p.relative_to(d).as_posix(): p.stat().st_size
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.name.startswith(".")
    }


def finished(out: Path, key: dict[str, Any], name: str, *, what: str = "reproduce") -> dict[str, Any] | None:
    """The numbers of a stage done in ``out`` with this key, else ``None``.

    A marker that cannot be read, or whose stage's files are missing or changed size (a
    figure deleted, a result truncated), means the stage is not done: it runs again.
    """
    d = out / name
    marker = d / MARKER
    if not marker.exists():
        return None
    try:
        done = read_json(marker, fix="the stage runs again")
        if not isinstance(done, dict) or not isinstance(done.get("numbers"), dict):
            raise DamagedFileError(marker, "it has no 'numbers' entry", "the stage runs again")
    except (OSError, ValueError) as exc:
        warnings.warn(f"{what}: {exc}", stacklevel=3)
        return None
    if not all(done.get(k) == v for k, v in key.items()):
        return None
    # markers from before files were recorded: at least every file the summary links
    files = done.get("files") if isinstance(done.get("files"), dict) else {}
    changed = {d / rel for rel, size in files.items() if not (d / rel).is_file() or (d / rel).stat().st_size != size}
    summary = done["numbers"].get("summary", "")
    links = re.findall(r"\]\(([^)\s]+)\)", summary if isinstance(summary, str) else "")
    changed |= {out / rel for rel in links if "://" not in rel and not (out / rel).is_file()}
    if changed:
        warnings.warn(
            f"{what}: stage {name!r} was done but {len(changed)} of its files are missing or changed "
            f"(e.g. {sorted(changed)[0]}); it runs again",
            stacklevel=3,
        )
        return None
    return done["numbers"]


def run_stages(
    out: Path,
    names: Sequence[str],
    run: Callable[[str, Path], dict[str, Any]],
    *,
    key: Callable[[str], dict[str, Any]],
    write_report: Callable[[dict[str, dict[str, Any]]], None],
    all_names: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
    desc: str = "stages",
    what: str = "reproduce",
) -> dict[str, dict[str, Any]]:
    """Run the stages ``names`` in order, skipping those already done; returns every stage's numbers.

    Args:
        out: the output folder.
        names: the stages to run now.
        run: ``run(name, stage_dir) -> numbers`` (a dict; ``"summary"`` is markdown).
        key: ``key(name)``: what a marker must match for the stage to count as done.
        write_report: called with ``{name: numbers}`` of every stage done in ``out`` (in
            ``all_names`` order) after each finished stage, and once at the end.
        all_names: every stage the report may show (default ``names``); stages not run now
            but done in ``out`` with the same key are shown too.
        force: run the stages in ``names`` even if done.
        progress: a progress bar over the stages.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = list(all_names) if all_names is not None else list(names)
    done: dict[str, dict[str, Any]] = {}
    for name in order:  # what is already in OUT (a stage forced to rerun is not, until it has)
        if force and name in names:
            continue
        if (numbers := finished(out, key(name), name, what=what)) is not None:
            done[name] = numbers

    def report() -> None:
        write_report({n: done[n] for n in order if n in done})

    bar = tqdm(list(names), desc=desc, disable=not progress)
    for name in bar:
        if name in done:
            continue
        bar.set_description(f"{desc}: {name}" if desc else name)  # the stage running now
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        # the old marker goes first: a stage interrupted from here on is not done; and the
        # temporary files of writes a kill interrupted are swept away
        (d / MARKER).unlink(missing_ok=True)
        for tmp in d.rglob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
        t = time.perf_counter()
        numbers = run(name, d)
        numbers["seconds"] = round(time.perf_counter() - t, 1)
        write_json(d / MARKER, {**key(name), "numbers": numbers, "files": stage_files(d)})
        done[name] = numbers
        report()  # an interrupted run still has a report of what finished
    report()
    return {n: done[n] for n in order if n in done}


def save_fig(fig: Any, path: Path, *, dpi: int = 120) -> str:
    """Write a matplotlib figure atomically (a killed run never leaves half a PNG), close it,
    and return its file name (for the report's link)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path.name


def save_csv(df: Any, path: Path) -> str:
    """Write a DataFrame as CSV atomically; returns the file name."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path.name
