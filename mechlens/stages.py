"""Resumable staged runs: the machinery behind ``mechlens reproduce`` and ``mechlens study``.

A run is a list of named stages. Each stage writes its files under ``OUT/<name>/`` and,
when it finishes, a ``done.json`` marker holding the run's key (model, settings, the
stage's own specification), its headline numbers (``summary`` is the markdown the report
shows), the size and SHA-256 of every file it wrote, and a SHA-256 of itself. A stage whose
marker matches the key and whose files are all there, unchanged, is skipped next time (its
numbers are read back); a damaged or odd marker (an entry of the wrong type, a folder where
the file should be), a different key, or a missing or changed file makes it run again, in a
fresh folder. Checking a stage never raises.

The report is rewritten after *every* finished stage, so an interrupted run leaves a
report of everything that finished.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mechlens.engine import progress_iter
from mechlens.fileio import DamagedFileError, atomic_path, read_json, write_json

__all__ = ["MARKER", "stage_files", "finished", "run_stages", "save_fig", "save_csv"]

MARKER = "done.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_files(d: Path) -> dict[str, dict[str, Any]]:
    """Every file a stage wrote (relative path -> ``{"size": bytes, "sha256": hex}``), recorded
    in its marker: a file changed in place (same size, other bytes) is noticed too."""
    return {
        p.relative_to(d).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.name.startswith(".")
    }


def _marker_digest(done: dict[str, Any]) -> str:
    """A SHA-256 of a marker's content (all but this digest), so an edited marker is noticed."""
    body = {k: v for k, v in done.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _file_changed(path: Path, entry: Any) -> bool:
    """Whether a recorded file is missing or differs from its record (a size, or size and hash)."""
    try:
        if not path.is_file():
            return True
        if isinstance(entry, dict):
            return path.stat().st_size != entry.get("size") or _sha256(path) != entry.get("sha256")
        return path.stat().st_size != entry  # markers from before hashes: the size only
    except OSError:
        return True


def _marker_problem(done: Any) -> str | None:
    """What is wrong with a parsed marker's structure, or ``None``: every entry is checked by
    type, so an odd marker means "run again", never a crash later in the report."""
    if not isinstance(done, dict):
        return f"it holds {type(done).__name__}, not an object"
    numbers = done.get("numbers")
    if not isinstance(numbers, dict):
        return "it has no 'numbers' entry"
    if not isinstance(numbers.get("summary", ""), str):
        return f"its summary is {type(numbers['summary']).__name__}, not text"
    seconds = numbers.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return f"its seconds is {type(seconds).__name__}, not a number"
    files = done.get("files", {})
    if not isinstance(files, dict):
        return f"its files entry is {type(files).__name__}, not an object"
    for rel, entry in files.items():
        ok = (isinstance(entry, int) and not isinstance(entry, bool)) or (
            isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        )
        if not ok or rel.startswith("/") or ".." in Path(rel).parts:
            return f"its record of {rel!r} is not a size and hash"
    if "sha256" in done and done["sha256"] != _marker_digest(done):
        return "its content does not match its checksum (edited or damaged in place)"
    return None


def finished(out: Path, key: dict[str, Any], name: str, *, what: str = "reproduce") -> dict[str, Any] | None:
    """The numbers of a stage done in ``out`` with this key, else ``None``.

    A marker that cannot be read (damaged, a folder, in a stage folder that is a file), whose
    entries are not of the types mechlens writes or do not match its checksum, or whose
    stage's files are missing or changed (deleted, truncated, damaged in place: each file's
    size and SHA-256 are recorded), means the stage is not done: it runs again. Nothing here
    raises.
    """
    d = out / name
    marker = d / MARKER
    if not d.is_dir() or not (marker.exists() or marker.is_symlink()):
        if d.exists() and not d.is_dir():
            warnings.warn(f"{what}: {d} is a file, not a stage folder; the stage runs again", stacklevel=3)
        return None
    try:
        done = read_json(marker, fix="the stage runs again")
        if (problem := _marker_problem(done)) is not None:
            raise DamagedFileError(marker, problem, "the stage runs again")
    except (OSError, ValueError) as exc:
        warnings.warn(f"{what}: {exc}", stacklevel=3)
        return None
    if not all(done.get(k) == v for k, v in key.items()):
        return None
    # markers from before files were recorded: at least every file the summary links
    changed = {d / rel for rel, entry in done.get("files", {}).items() if _file_changed(d / rel, entry)}
    links = re.findall(r"\]\(([^)\s]+)\)", done["numbers"].get("summary", ""))
    changed |= {out / rel for rel in links if "://" not in rel and not (out / rel).is_file()}
    if changed:
        warnings.warn(
            f"{what}: stage {name!r} was done but {len(changed)} of its files are missing or changed "
            f"(e.g. {sorted(changed)[0]}); it runs again",
            stacklevel=3,
        )
        return None
    return done["numbers"]


def _fresh_folder(d: Path) -> None:
    """Make ``d`` an empty folder for a stage to run in: whatever was there (an old marker, the
    files of an interrupted run, a file or link in its place) goes, so a stage interrupted from
    here on is not done and a rerun never trips over what a damaged run left."""
    if d.is_symlink() or d.is_file():
        d.unlink()
    elif d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


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
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={str(out)!r} is a file; give a folder for the results (it is made if missing)")
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

    bar = progress_iter(list(names), progress, desc, leave=True)
    for name in bar:
        if name in done:
            continue
        if progress:  # the stage running now
            bar.set_description(f"{desc}: {name}" if desc else name)
        d = out / name
        _fresh_folder(d)
        t = time.perf_counter()
        numbers = run(name, d)
        numbers["seconds"] = round(time.perf_counter() - t, 1)
        # the digest is of the marker as it will read back (tuples as lists, keys as text)
        marker = json.loads(json.dumps({**key(name), "numbers": numbers, "files": stage_files(d)}))
        write_json(d / MARKER, {**marker, "sha256": _marker_digest(marker)})
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
