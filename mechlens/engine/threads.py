"""How many CPU threads torch uses for mechlens's passes.

torch starts as many threads as the machine has cores. Two such processes on the same cores
oversubscribe them: each runs 5-6x slower, not 2x. mechlens says how many threads it uses
(the CLI prints it when a command starts) and lets the user choose:

- ``MECHLENS_THREADS=N`` in the environment (read when mechlens is imported);
- ``mechlens --threads N COMMAND`` on the command line;
- :func:`set_threads` in Python.

With two jobs on one machine, give each half the cores.
"""

from __future__ import annotations

import os

import torch

__all__ = ["set_threads", "threads", "threads_from_env", "ENV"]

ENV = "MECHLENS_THREADS"


def threads() -> int:
    """The number of threads torch uses for intra-op parallelism now."""
    return int(torch.get_num_threads())


def set_threads(n: int) -> int:
    """Use ``n`` CPU threads (at least 1); returns the previous number."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r} must be a positive int (the number of CPU threads torch may use)")
    before = threads()
    torch.set_num_threads(n)
    return before


def threads_from_env() -> int | None:
    """Apply ``MECHLENS_THREADS`` if it is set; returns the number applied (``None`` if unset)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r} must be a positive integer (CPU threads for torch)") from None
    set_threads(n)
    return n
