"""The hooks backend: full ``run_with_hooks`` passes on any TransformerLens model.

A :class:`Patch` says "at hook ``hook``, where ``mask`` is true, use ``source`` instead of the
activation". :func:`run_with_patches` runs configurations (lists of patches) stacked on the
batch axis; :class:`HooksRunner` gives the fast backend's runner interface
(:class:`mechlens.engine.fast.SuffixRunner`) over full forward passes, so a method written
against the runner runs on both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from mechlens.engine.batching import progress_iter
from mechlens.hooks import hooked

__all__ = [
    "Hook", "Patch", "patch_mask", "patch_rows", "saver", "cached_run", "run_with_patches", "HooksRunner",
    "hook_layer", "first_block", "first_true",
]

Hook = tuple[str, Callable[..., Any]]


@dataclass(frozen=True)
class Patch:
    """At ``hook``, where ``mask`` is true, take ``source`` (or ``transform(activation)``).

    ``source`` is ``[batch, ...]`` (one value per example, the activation's shape) or
    broadcast (first axis 1); ``mask`` broadcasts against the activation (e.g. ``[batch,
    pos, 1]`` for a residual-stream position). With ``transform`` (a function of the
    activation's rows, e.g. adding a vector) ``source`` is ``None``. Build patches from
    typed locations with :func:`mechlens.engine.interventions.patch`.
    """

    hook: str
    mask: Tensor
    source: Tensor | None
    transform: Callable[[Tensor], Tensor] | None = None

    def apply(self, act: Tensor) -> Tensor:
        """``act`` (the rows this patch owns) with the patch applied where ``mask`` is true."""
        new = self.transform(act) if self.transform is not None else self.source.to(act.device, act.dtype)
        return torch.where(self.mask.to(act.device), new.to(act.dtype), act)


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


def saver(cache: dict[str, Tensor], name: str) -> Callable[..., None]:
    """A hook that stores its activation (detached) in ``cache[name]``: keyed by the name asked
    for, also where the model resolves it to an alias (hook_resid_pre -> hook_in)."""

    def save(act: Tensor, hook: Any) -> None:
        cache[name] = act.detach()

    return save


def cached_run(
    model: Any, tokens: Tensor, names: Sequence[str], *, stop_at_layer: int | None = None
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """One forward pass: the logits and the activations at ``names`` (keyed by the names asked
    for, also where the model resolves a name to an alias). With ``stop_at_layer`` the pass
    stops before that block and the logits are ``None``."""
    cache: dict[str, Tensor] = {}
    kw = {"stop_at_layer": stop_at_layer} if stop_at_layer is not None else {}
    with torch.no_grad(), hooked(model, [(n, saver(cache, n)) for n in sorted(set(names))]):
        out = model(tokens, **kw)
    return (None if stop_at_layer is not None else out), cache


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
    for chunk in progress_iter(chunks, progress, desc):
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
            act[rows] = p.apply(act[rows])
        return act

    return hook


class HooksRunner:
    """The interface of the fast backend's :class:`~mechlens.engine.fast.SuffixRunner`
    over full forward passes, for any TransformerLens model.

    ``run(joins, hooks=...)`` gives what the suffix runner gives: rows joining at block ``L``
    with a given residual, hooks that see only the rows present at their layer (a prefix of
    the batch, in join order). Every row runs the whole model on ``tokens`` (one copy of
    the dataset per ``len(tokens)`` rows) and takes its joining residual at the input of
    block ``L``; rows are independent sequences, so what they computed before is discarded
    exactly. No position skipping.
    """

    can_skip_positions = False
    can_replace_attention = False

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
        attention: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor | None, dict[int, Tensor]]:
        if offset or kv_store is not None or attention:
            raise ValueError("the hooks backend runs whole sequences and blocks (offset=0, no kv_store or attention)")
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
            fwd.append((name, on_present_rows(fn, hook_layer(name, n))))
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


def first_block(names: Iterable[str], n_layers: int) -> int:
    """The first block any of the hooks ``names`` acts in (:func:`hook_layer`): ``n_layers``
    when they all act after the blocks, 0 when one acts on the embeddings."""
    return min((max(hook_layer(name, n_layers), 0) for name in names), default=n_layers)


def hook_layer(name: str, n_layers: int) -> int:
    """The block a hook belongs to (``n_layers`` for hooks after the blocks)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return -1 if parts[0] in ("hook_embed", "hook_pos_embed", "embed", "pos_embed") else n_layers


def first_true(x: Tensor, dim: int = -1) -> Tensor:
    """The index of the first true entry of ``x`` along ``dim``, -1 where there is none (the
    first position a patch changes: activations before it are the base run's, since
    attention is causal)."""
    return torch.where(x.any(dim), x.int().argmax(dim), -1)  # argmax returns the first maximum
