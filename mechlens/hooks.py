"""Attaching hooks safely: every intervention is a context manager, so an exception never
leaves a hook on the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["hooked", "check_hook_names"]


def check_hook_names(model: Any, names: Sequence[str]) -> None:
    known = set(model.hook_dict)
    bad = [n for n in names if n not in known]
    if bad:
        sample = sorted(k for k in known if k.startswith("blocks.0."))[:12]
        raise ValueError(f"unknown hook name(s) {bad}; names look like {sample}")


@contextmanager
def hooked(model: Any, fwd_hooks: Sequence[tuple[str | Callable, Callable]]) -> Iterator[Any]:
    """``with hooked(model, [(name, fn), ...]):`` — hooks live only inside the block."""
    names = [n for n, _ in fwd_hooks if isinstance(n, str)]
    check_hook_names(model, names)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model
