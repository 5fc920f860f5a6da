"""Attaching hooks safely: every intervention is a context manager, so an exception never
leaves a hook on the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlens.metrics import logit_diff
from mechlens.models import model_device
from mechlens.validate import check_batch_size as check_batch_size_arg
from mechlens.validate import check_layer

__all__ = ["hooked", "check_hook_names", "check_layer", "check_batch_size_arg", "batches", "cache_batched"]


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


def batches(n: int, batch_size: int | None) -> Iterator[slice]:
    """Slices of ``range(n)`` of ``batch_size`` rows (``None``: all at once)."""
    check_batch_size_arg(batch_size)
    if n == 0:
        return
    step = n if batch_size is None else int(batch_size)
    for i in range(0, n, step):
        yield slice(i, min(n, i + step))


@torch.no_grad()
def cache_batched(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    names: Sequence[str],
    *,
    batch_size: int | None,
    answers: Int[Tensor, "batch n_pairs 2"] | None = None,
    stop_at_layer: int | None = None,
) -> tuple[dict[str, Tensor], Float[Tensor, " batch"] | None]:
    """Run ``tokens`` in batches caching only ``names``; with ``answers`` also the per-example
    logit differences (float32). ``stop_at_layer`` only applies without answers
    (the logits need every layer)."""
    names = list(names)
    acts: dict[str, list[Tensor]] = {n: [] for n in names}
    lds = []
    dev = model_device(model)
    kw = {"stop_at_layer": stop_at_layer} if (stop_at_layer is not None and answers is None) else {}
    for sl in batches(len(tokens), batch_size):
        out, cache = model.run_with_cache(tokens[sl].to(dev), names_filter=lambda n: n in names, **kw)
        for n in names:
            acts[n].append(cache[n].detach())
        if answers is not None:
            lds.append(logit_diff(out, answers[sl].to(out.device)).detach().float())
        del cache, out
    return {n: torch.cat(v) for n, v in acts.items()}, (torch.cat(lds) if lds else None)
