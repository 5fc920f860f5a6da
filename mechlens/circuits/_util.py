"""Helpers shared by the circuit analyses (internal; the public API is in ``sentiment`` and ``motif``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.data.contrast import ContrastDataset
from mechlens.validate import check_binary_labels, check_vector
from mechlens.validate import check_dataset as _check_dataset

Head = tuple[int, int]
Hook = tuple[str, Callable[..., Any]]

def head_label(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def parse_head(label: str) -> Head:
    m = re.fullmatch(r"L(\d+)H(\d+)", label)
    if not m:
        raise ValueError(f"{label!r} is not a head label like 'L12H3'")
    return int(m.group(1)), int(m.group(2))


def check_dataset(
    ds: Any, what: str = "ds", *, need: Sequence[str] = (), binary: bool = True, model: Any = None
) -> None:
    """``validate.check_dataset`` (with ``model``: tokenizer, vocabulary, context), plus the
    named positions a circuit method needs and (``binary``) 0/1 labels."""
    _check_dataset(ds, model, what)
    missing = [p for p in need if p not in ds.positions]
    if missing:
        raise ValueError(
            f"{what} ({ds.name!r}) has no named position(s) {missing}; it has {ds.position_names()}. "
            "Build it with toy_movie_review(model, ...) or give positions=... to ContrastDataset.from_prompts"
        )
    if binary:
        check_binary_labels(ds, what)


def check_heads(model: Any, heads: Sequence[Head], what: str = "heads") -> list[Head]:
    out = []
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    for h in heads:
        if isinstance(h, str):
            h = parse_head(h)
        if not (isinstance(h, (tuple, list)) and len(h) == 2):
            raise ValueError(f"{what} entries must be (layer, head) pairs, got {h!r}")
        layer, head = int(h[0]), int(h[1])
        if not (0 <= layer < n_l and 0 <= head < n_h):
            raise ValueError(f"{what}: head {h!r} is out of range (layers 0..{n_l - 1}, heads 0..{n_h - 1})")
        out.append((layer, head))
    return out


def resolve_direction(
    model: Any,
    ds: ContrastDataset,
    direction: Any,
    *,
    batch_size: int | None,
) -> Any:
    """The sentiment direction to use: the one given, or mean_diff fitted on ``ds`` at ADJ.

    The default layer is the middle of the model (``n_layers // 2``); on smollm2-135m the
    mean-difference direction there recovers most of the logit difference when patched
    (docs/directions.md).
    """
    from mechlens.directions import fit
    from mechlens.directions.interventions import as_direction

    mid = model.cfg.n_layers // 2
    if direction is None:
        if "ADJ" not in ds.positions:
            raise ValueError(
                f"direction=None: a direction is fitted at the 'ADJ' position, which dataset {ds.name!r} "
                "lacks; pass direction=mechlens.directions.fit(model, movie_ds, 'mean_diff', layer=...)"
            )
        return fit(model, ds, "mean_diff", layer=mid, position="ADJ", batch_size=batch_size, progress=False)
    # a raw vector gets the middle layer (used only where a layer matters: ablation)
    d = as_direction(direction, layer=mid)
    if d.d_model != model.cfg.d_model:
        raise ValueError(
            f"direction has {d.d_model} components but the model's d_model is {model.cfg.d_model}; "
            "was it fitted on another model?"
        )
    return d


def unit_vector(direction: Any) -> Float[Tensor, " d_model"]:
    """The unit vector of a Direction or a raw ``[d_model]`` tensor (float32, CPU)."""
    v = direction.unit() if hasattr(direction, "unit") else torch.as_tensor(direction)
    v = check_vector(v, "direction").detach().float().cpu()
    if float(v.norm()) == 0.0:
        raise ValueError("direction must be a finite non-zero [d_model] vector, got the zero vector")
    return v / v.norm()


def safe_flip(patched: Tensor, clean: Tensor, corrupt: Tensor, labels: Tensor) -> float:
    """The logit flip, or NaN where it is undefined (clean and corrupt accuracies equal)."""
    from mechlens.metrics import logit_flip

    try:
        return logit_flip(patched, clean, corrupt, labels)
    except ValueError:
        return float("nan")


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"
