"""Writing files so that a crash never leaves half a file, and reading them with errors that
name the file.

Every file mechlens writes (saved results, ``reproduce`` markers, reports and figures, the
model cache) goes through :func:`atomic_path`: it is written under a temporary name in the
same folder and renamed over the target only when complete, so a reader sees the old file
or the new one, never a truncated one. A file that cannot be read raises
:class:`DamagedFileError`, which names the file and says how to recover.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DamagedFileError", "atomic_path", "write_text", "write_json", "read_json"]


class DamagedFileError(ValueError):
    """A file mechlens reads is missing a part, truncated or not what it should be."""

    def __init__(self, path: str | Path, why: str, fix: str):
        self.path = Path(path)
        super().__init__(f"{self.path} is damaged ({why}); {fix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` write ``tmp``; on success it is renamed to ``p``.

    The temporary name keeps ``p``'s suffix (so tools that pick a format from it, such as
    matplotlib's ``savefig``, still do) and lives in the same folder (so the rename is atomic).
    On an exception the temporary file is removed and ``p`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str | Path, *, fix: str) -> Any:
    """Parse a JSON file; a missing file raises FileNotFoundError, a damaged one
    :class:`DamagedFileError` (both naming the file)."""
    path = Path(path)
    if path.is_dir():
        raise DamagedFileError(path, "it is a folder, not a file", fix)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError as exc:
        raise DamagedFileError(path, f"not UTF-8 text: {exc.reason}", fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = "empty" if not text.strip() else f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise DamagedFileError(path, what, fix) from None
