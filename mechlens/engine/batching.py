"""The one batching rule of every method, and the one progress helper.

``batch_size`` is sequences per forward pass; ``None`` means :data:`DEFAULT_BATCH_SIZE`.
No pass holds more than ``batch_size`` sequences of activations or logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechlens.validate import check_batch_size

__all__ = [
    "DEFAULT_BATCH_SIZE", "rows_per_pass", "copies_per_pass", "chunks", "batches", "progress_iter",
    "progress_bar", "padded_batches", "pad_id",
]


# Sequences per forward pass when batch_size is None (every method): large enough that a CPU
# runs near its batched throughput, small enough to keep activations modest.
DEFAULT_BATCH_SIZE = 128



# --------------------------------------------------------------------------- batching


def rows_per_pass(batch_size: int | None) -> int:
    """Sequences per forward pass: ``batch_size`` checked, ``None`` -> :data:`DEFAULT_BATCH_SIZE`."""
    check_batch_size(batch_size)
    return DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)


def copies_per_pass(batch_size: int | None, batch: int) -> int:
    """How many copies of a ``batch``-prompt dataset fit in one pass (at least one)."""
    return max(1, rows_per_pass(batch_size) // batch)


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def batches(n: int, batch_size: int | None) -> list[slice]:
    """Slices of ``range(n)`` of ``batch_size`` rows (``None``: :data:`DEFAULT_BATCH_SIZE`)."""
    return [slice(r.start, r.stop) for r in chunks(n, rows_per_pass(batch_size))]

def progress_iter(
    items: Sequence[Any] | Iterable[Any], progress: bool, desc: str, total: int | None = None, leave: bool = False
) -> Any:
    """``items``, wrapped in a progress bar named ``desc`` when ``progress`` (the one progress
    helper: every bar in mechlens comes from here or :func:`progress_bar`). Inner bars vanish
    when done (``leave=False``); a method's outer bar may stay."""
    return tqdm(items, desc=desc, total=total, leave=leave, dynamic_ncols=True) if progress else items


def progress_bar(total: int, progress: bool, desc: str, leave: bool = False) -> Any:
    """A manual progress bar (``.update(n)``, ``.close()``, ``.set_postfix_str``); disabled
    when not ``progress``."""
    return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, disable=not progress)

def padded_batches(
    tokens: Sequence[Tensor], batch_size: int | None, pad_id: int = 0
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Right-padded batches ``(indices, tokens, index of each last real token)``.

    A causal model never attends to later positions, so right padding leaves every real
    token's activations unchanged; no attention mask is needed.
    """
    batch_size = rows_per_pass(batch_size)
    # Sort by length so that batches carry little padding.
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lens = torch.tensor([len(tokens[i]) for i in idx])
        out = torch.full((len(idx), int(lens.max())), pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            out[row, : lens[row]] = tokens[i]
        yield idx, out, lens - 1


def pad_id(model: Any) -> int:
    """The tokenizer's padding id (0 without one): right padding never changes real tokens."""
    tok = getattr(model, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    return int(pid) if pid is not None else 0
