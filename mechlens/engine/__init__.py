"""The intervention engine: patches, and the backends that run them.

A :class:`Patch` says "at hook ``hook``, where ``mask`` is true, use ``source`` instead of the
activation". A *configuration* is a list of patches applied together in one run of the
dataset; a sweep is a list of configurations. Two backends run them and give the same
numbers:

- ``"fast"`` (TransformerBridge): :mod:`mechlens.patching._forward`'s suffix runner, which
  runs only the layers and positions a patch can change;
- ``"hooks"`` (any model with the TransformerLens hook API, ``HookedTransformer`` included):
  full forward passes through ``run_with_hooks``, many configurations stacked on the batch
  axis (:func:`run_with_patches`).

``backend="auto"`` picks the fast path where it applies (:func:`resolve_backend`) and the hooks
path elsewhere. Methods choose between them; both are tested against each other and against
``transformer_lens.patching`` on every site and architecture.

Interventions that are not patches from another run (moving along a direction, adding a
vector, ablating) are hooks built per forward pass: :func:`run_grid` runs any number of
configurations of them over a dataset, stacked on the batch axis, and returns the metric per
configuration and example. :func:`cache_batched` is the one batched caching run.

One batching rule for every method: ``batch_size`` is sequences per forward pass, ``None``
means :data:`DEFAULT_BATCH_SIZE`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from mechlens.hooks import hooked
from mechlens.metrics import logit_diff
from mechlens.model_protocol import check_model, is_bridge
from mechlens.models import model_device
from mechlens.validate import check_batch_size

__all__ = [
    "BACKENDS", "Patch", "HooksRunner", "patch_mask", "patch_rows", "resolve_backend", "run_with_patches",
    "cached_run", "saver", "is_bridge", "DEFAULT_BATCH_SIZE", "rows_per_pass", "copies_per_pass", "chunks",
    "progress_iter", "batches", "padded_batches", "pad_id", "run_grid", "logit_diff_metric", "cache_batched",
]

BACKENDS = ("auto", "fast", "hooks")

# Sequences per forward pass when batch_size is None (every method): large enough that a CPU
# runs near its batched throughput, small enough to keep activations modest.
DEFAULT_BATCH_SIZE = 128

Hook = tuple[str, Callable[..., Any]]


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


def progress_iter(items: Sequence[Any], progress: bool, desc: str) -> Any:
    return tqdm(items, desc=desc, leave=False) if progress else items


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


# --------------------------------------------------------------------------- running hook interventions


def logit_diff_metric(answers: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The metric of most methods: the logit difference of ``answers`` ``[batch, n_pairs, 2]``
    for the rows' examples (``fn(logits, example_index) -> [rows]``)."""

    def metric(logits: Tensor, examples: Tensor) -> Tensor:
        return logit_diff(logits, answers[examples].to(logits.device))

    return metric


@torch.no_grad()
def run_grid(
    model: Any,
    tokens: Tensor,
    metric: Callable[[Tensor, Tensor], Tensor],
    *,
    n_configs: int = 1,
    hooks: Callable[[Tensor, Tensor], Sequence[Hook]] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "running",
) -> Tensor:
    """``metric`` of every (configuration, example) run, ``[n_configs, batch]`` (float32, CPU).

    The ``n_configs x batch`` grid is run in forward passes of ``batch_size`` sequences: row
    ``r`` is configuration ``r // batch`` of example ``r % batch``. ``hooks(configs, examples)``
    gets the configuration and example index of each row of one pass and returns the hooks
    that implement the interventions for those rows; ``metric(logits, examples)`` maps the
    pass's logits to one value per row (:func:`logit_diff_metric`). Without ``hooks`` this is
    the plain batched run of the dataset.
    """
    n = tokens.shape[0]
    grid_c = torch.arange(n_configs).repeat_interleave(n)
    grid_e = torch.arange(n).repeat(n_configs)
    out = torch.empty(n_configs * n)
    dev = model_device(model)
    for sl in progress_iter(batches(n_configs * n, batch_size), progress, desc):
        c, e = grid_c[sl], grid_e[sl]
        with hooked(model, list(hooks(c, e)) if hooks is not None else []):
            logits = model(tokens[e].to(dev))
        out[sl] = metric(logits, e).detach().float().cpu()
    return out.view(n_configs, n)


@torch.no_grad()
def cache_batched(
    model: Any,
    tokens: Tensor,
    names: Sequence[str],
    *,
    batch_size: int | None,
    answers: Tensor | None = None,
    stop_at_layer: int | None = None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Run ``tokens`` in batches caching only ``names``; with ``answers`` also the per-example
    logit differences (float32, CPU). ``stop_at_layer`` only applies without answers (the
    logits need every layer)."""
    names = list(names)
    acts: dict[str, list[Tensor]] = {n: [] for n in names}
    lds = []
    dev = model_device(model)
    kw = {"stop_at_layer": stop_at_layer} if (stop_at_layer is not None and answers is None) else {}
    for sl in batches(len(tokens), batch_size):
        cache: dict[str, Tensor] = {}
        with hooked(model, [(n, saver(cache, n)) for n in names]):
            out = model(tokens[sl].to(dev), **kw)
        for n in names:
            acts[n].append(cache[n])
        if answers is not None:
            lds.append(logit_diff(out, answers[sl].to(out.device)).detach().float().cpu())
        del cache, out
    return {n: torch.cat(v) for n, v in acts.items()}, (torch.cat(lds) if lds else None)


@dataclass(frozen=True)
class Patch:
    """At ``hook``, take ``source`` where ``mask`` is true.

    ``source`` is ``[batch, ...]`` (one value per example, the activation's shape); ``mask``
    broadcasts against it (e.g. ``[batch, pos, 1]`` for a residual-stream position).
    """

    hook: str
    mask: Tensor
    source: Tensor


def patch_mask(
    pos: Bool[Tensor, "k batch pos"], heads: Bool[Tensor, "k n_heads"] | None, layout: str
) -> Bool[Tensor, "k batch ..."]:
    """Broadcastable mask of the patched entries for ``k`` stacked copies of an activation
    of layout ``"bpd"`` [batch, pos, d], ``"bphd"`` [batch, pos, head, d] or ``"bhqk"``
    [batch, head, dest, src] (the position is the destination)."""
    if layout == "bpd":
        return pos[..., None]
    if layout == "bphd":
        m = pos[:, :, :, None, None]
        return m if heads is None else m & heads[:, None, None, :, None]
    if layout == "bhqk":
        m = pos[:, :, None, :, None]
        return m if heads is None else m & heads[:, None, :, None, None]
    raise ValueError(f"unknown layout {layout!r}")


def patch_rows(
    act: Tensor, offset: int, k: int, batch: int, mask: Tensor, source: Tensor
) -> Tensor:
    """Rows ``offset .. offset + k*batch`` of ``act`` (k stacked copies of the dataset) take
    ``source`` where ``mask`` is true; other rows are untouched."""
    n = k * batch
    seg = act[offset : offset + n].reshape(k, batch, *act.shape[1:])
    # .to(seg.device): a no-op on one device; on a model split over GPUs the layer may live elsewhere
    new = torch.where(mask.to(seg.device), source.to(seg.device, seg.dtype).unsqueeze(0), seg).reshape(
        n, *act.shape[1:]
    )
    if offset == 0 and n == act.shape[0]:
        return new
    out = act.clone()
    out[offset : offset + n] = new
    return out


def resolve_backend(model: Any, backend: str) -> str:
    """``"auto"`` -> ``"fast"`` on a TransformerBridge, else ``"hooks"``; checks the name and
    that ``"fast"`` is possible."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {list(BACKENDS)}")
    check_model(model)
    if backend == "auto":
        return "fast" if is_bridge(model) else "hooks"
    if backend == "fast" and not is_bridge(model):
        raise ValueError(
            f"backend='fast' needs a TransformerLens TransformerBridge (mechlens.load_model), but "
            f"this model is a {type(model).__name__}; use backend='hooks' (or 'auto')"
        )
    return backend


def saver(cache: dict[str, Tensor], name: str) -> Callable[..., None]:
    """A hook that stores its activation (detached) in ``cache[name]``: keyed by the name asked
    for, also where the model resolves it to an alias (hook_resid_pre -> hook_in)."""

    def save(act: Tensor, hook: Any) -> None:
        cache[name] = act.detach()

    return save


def cached_run(model: Any, tokens: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass: the logits and the activations at ``names`` (keyed by the names asked
    for, also where the model resolves a name to an alias)."""
    cache: dict[str, Tensor] = {}
    with torch.no_grad(), hooked(model, [(n, saver(cache, n)) for n in sorted(set(names))]):
        logits = model(tokens)
    return logits, cache


def run_with_patches(
    model: Any,
    tokens: Tensor,
    configs: Sequence[Sequence[Patch]],
    metric: Callable[[Tensor], Tensor],
    *,
    configs_per_pass: int,
    progress: bool = True,
    desc: str = "patching",
) -> Tensor:
    """The hooks backend: run ``tokens`` once per configuration with its patches applied and
    return ``metric`` of each run, ``[n_configs, batch]``.

    ``configs_per_pass`` configurations share a forward pass, stacked on the batch axis
    (rows ``i*batch .. (i+1)*batch`` are configuration ``i``). ``metric`` maps the logits of
    ``k`` stacked copies ``[k*batch, pos, vocab]`` to ``[k*batch]``.
    """
    b = tokens.shape[0]
    out = torch.empty(len(configs), b)
    chunks = [range(i, min(len(configs), i + configs_per_pass)) for i in range(0, len(configs), configs_per_pass)]
    for chunk in tqdm(chunks, desc=desc, leave=False, disable=not progress):
        by_hook: dict[str, list[tuple[int, Patch]]] = {}
        for row, ci in enumerate(chunk):
            for p in configs[ci]:
                by_hook.setdefault(p.hook, []).append((row, p))
        hooks = [(name, _hook(patches, b)) for name, patches in by_hook.items()]
        with torch.no_grad(), hooked(model, hooks):
            logits = model(tokens.repeat(len(chunk), 1))
        out[chunk.start : chunk.stop] = metric(logits).detach().float().cpu().view(len(chunk), b)
    return out


def _hook(patches: list[tuple[int, Patch]], b: int) -> Callable[..., Tensor]:
    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        for row, p in patches:
            rows = slice(row * b, (row + 1) * b)
            act[rows] = torch.where(p.mask.to(act.device), p.source.to(act.device, act.dtype), act[rows])
        return act

    return hook


class HooksRunner:
    """The interface of the fast backend's :class:`~mechlens.patching._forward.SuffixRunner`
    over full forward passes, for any TransformerLens model.

    ``run(joins, hooks=...)`` gives what the suffix runner gives: rows joining at block ``L``
    with a given residual, hooks that see only the rows present at their layer (a prefix of
    the batch, in join order). Every row runs the whole model on ``tokens`` (one copy of
    the dataset per ``len(tokens)`` rows) and takes its joining residual at the input of
    block ``L``; rows are independent sequences, so what they computed before is discarded
    exactly. No position skipping.
    """

    can_skip_positions = False

    def __init__(self, model: Any, tokens: Tensor):
        self.model = model
        self.tokens = tokens
        self.n_layers = int(model.cfg.n_layers)

    def _at(self, layer: int) -> str:
        n = self.n_layers
        return f"blocks.{layer}.hook_resid_pre" if layer < n else f"blocks.{n - 1}.hook_resid_post"

    def run(
        self,
        joins: Sequence[tuple[int, Tensor]],
        *,
        hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
        output: str = "last",
        capture: Sequence[int] = (),
        stop: int | None = None,
        offset: int = 0,
        kv_store: Any = None,
    ) -> tuple[Tensor | None, dict[int, Tensor]]:
        if offset or kv_store is not None:
            raise ValueError("the hooks backend runs whole sequences (offset=0, no kv_store)")
        if not joins:
            raise ValueError("nothing to run")
        layers = [j for j, _ in joins]
        if layers != sorted(layers):
            raise ValueError("joins must be sorted by layer")
        if stop is not None and output != "none":
            raise ValueError("stop is only allowed with output='none'")
        n, b = self.n_layers, self.tokens.shape[0]
        spans: list[tuple[int, int, int, Tensor]] = []  # (layer, first row, end row, residual)
        total = 0
        for layer, resid in joins:
            spans.append((layer, total, total + resid.shape[0], resid))
            total += resid.shape[0]
        if total % b:
            raise ValueError(f"{total} rows is not a whole number of copies of the {b} prompts")

        def present(layer: int) -> int:
            return max((end for lay, _, end, _ in spans if lay <= layer), default=0)

        def join_hook(layer: int) -> Callable[..., Tensor]:
            def hook(act: Tensor, hook: Any) -> Tensor:
                act = act.clone()
                for lay, lo, hi, resid in spans:
                    if lay == layer:
                        act[lo:hi] = resid.to(act.dtype)
                return act

            return hook

        captured: dict[int, Tensor] = {}

        def capture_hook(layer: int) -> Callable[..., None]:
            def hook(act: Tensor, hook: Any) -> None:
                captured[layer] = act[: present(layer)]

            return hook

        def on_present_rows(fn: Callable[..., Any], layer: int) -> Callable[..., Tensor]:
            def hook(act: Tensor, hook: Any) -> Tensor:
                m = present(layer)
                if m == 0:
                    return act
                out = fn(act[:m], hook)
                if out is None:
                    return act
                return out if m == act.shape[0] else torch.cat([out.to(act.dtype), act[m:]])

            return hook

        end = n if stop is None else stop
        capture = set(capture) | ({n} if output == "resid" else set())
        join_layers = sorted({lay for lay, *_ in spans if lay <= end})
        fwd: list[tuple[str, Callable[..., Any]]] = []
        # at block inputs: joins, then captures, then the caller's hooks (as the suffix runner)
        fwd += [(self._at(lay), join_hook(lay)) for lay in join_layers if lay < n]
        fwd += [(self._at(lay), capture_hook(lay)) for lay in sorted(set(capture)) if lay < n and lay <= end]
        for name, fn in hooks:
            fwd.append((name, on_present_rows(fn, _hook_layer(name, n))))
        # the final residual: the caller's hooks on the last block's output came first
        fwd += [(self._at(n), join_hook(n)) for lay in join_layers if lay == n]
        fwd += [(self._at(n), capture_hook(n)) for lay in set(capture) if lay == n and end == n]
        tokens = self.tokens.repeat(total // b, 1)
        with hooked(self.model, fwd):
            if output == "none":
                if end < n:
                    self.model(tokens, stop_at_layer=end + 1)  # the capture at `end` fires inside
                else:
                    self.model(tokens)
                return None, captured
            if output == "resid":
                self.model(tokens)
                return captured.get(n), captured
            logits = self.model(tokens)
        return (logits[:, -1:] if output == "last" else logits), captured


def _hook_layer(name: str, n_layers: int) -> int:
    """The block a hook belongs to (``n_layers`` for hooks after the blocks)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return -1 if parts[0] in ("hook_embed", "hook_pos_embed", "embed", "pos_embed") else n_layers
