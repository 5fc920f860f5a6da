"""Interventions as values at typed locations, and the one runner of patch configurations.

A :class:`Location` says *where* (a site of the registry in :mod:`mechlens.engine.sites`, a
layer, optionally a head, or a neuron for ``"mlp_post"``, and the positions); an
intervention says *what* (:class:`Replace` with another run's activation or a mean,
:class:`Zero`, :class:`Add` ``coeff * vector``, :class:`Scale`, :class:`ProjectOut` of a
direction, :class:`ProjectOnto` a direction). :func:`patch` compiles the pair into a
:class:`~mechlens.engine.hooks.Patch` (a hook name, a mask and a value), so methods never
assemble hook strings themselves.

:func:`run_patches` runs any list of *configurations* (each a list of patches applied
together) over a batch of prompts and returns the metric per configuration and example, on
either backend:

- ``"fast"``: a configuration whose earliest patch sits in block ``L`` joins the pass at
  block ``L`` with the unpatched residual stream cached there, so the blocks before ``L``
  run once per batch of prompts instead of once per configuration; with ``output="last"``
  it also starts at the first position where its values differ from the base run's;
- ``"hooks"``: full ``run_with_hooks`` passes, any TransformerLens model.

Configurations are stacked on the batch axis; examples are split into chunks so that no
pass holds more than ``batch_size`` sequences, whatever the dataset size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechlens.engine.backend import resolve_backend
from mechlens.engine.batching import chunks, progress_bar, rows_per_pass
from mechlens.engine.fast import base_run, overhead_tokens, plan_passes
from mechlens.engine.hooks import Patch, first_block, first_true, hook_layer
from mechlens.engine.sites import Site, get_site
from mechlens.hooks import hooked
from mechlens.models import model_device

__all__ = [
    "Location", "Intervention", "Replace", "Zero", "Add", "Scale", "ProjectOut", "ProjectOnto", "patch",
    "run_patches", "NEURON_SITE", "HOWS",
]

#: what an ablated value is replaced by (ablation sweeps, knock-out, directional ablation)
HOWS = ("zero", "mean", "resample")

# MLP hidden activations: one value per neuron (ablation of single neurons); not a patching
# site of its own, so it is kept beside the registry.
NEURON_SITE = Site("mlp_post", "blocks.{layer}.mlp.hook_post", "bpd", False, False, "MLP hidden activations")


@dataclass(frozen=True)
class Location:
    """Where an intervention acts.

    Attributes:
        site: a site name of :data:`mechlens.engine.sites.SITES` (``"resid_pre"``, ``"z"``,
            ``"mlp_out"``, ...) or ``"mlp_post"`` (MLP neurons).
        layer: the block.
        head: the head for per-head sites (``z``, ``q``, ``k``, ``v``, ``pattern``), the
            neuron for ``"mlp_post"``; ``None`` = all of them.
        position: ``None`` (every position) or a boolean mask ``[batch, pos]`` or ``[pos]``
            of the positions to change (for ``pattern``, the destination position).
    """

    site: str
    layer: int
    head: int | None = None
    position: Tensor | None = None

    def resolve(self, model: Any) -> Site:
        return NEURON_SITE if self.site == NEURON_SITE.name else get_site(model, self.site)

    def hook(self, model: Any) -> str:
        n = int(model.cfg.n_layers)
        if not 0 <= int(self.layer) < n:
            raise ValueError(f"layer={self.layer!r}: the model has layers 0..{n - 1}")
        return self.resolve(model).hook_name(self.layer)

    def mask(self, model: Any) -> Tensor:
        """A boolean mask broadcastable against the activation at :meth:`hook`."""
        s = self.resolve(model)
        if s.layout == "bpd":
            m = torch.ones(1, 1, 1, dtype=torch.bool)
            if self.head is not None:  # one neuron of mlp_post
                if s is not NEURON_SITE:
                    raise ValueError(f"site {self.site!r} has no heads; give head=None")
                d = int(getattr(model.cfg, "d_mlp", None) or 4 * model.cfg.d_model)
                m = torch.zeros(1, 1, d, dtype=torch.bool)
                m[..., self.head] = True
        elif s.layout == "bphd":
            m = torch.ones(1, 1, 1, 1, dtype=torch.bool)
            if self.head is not None:
                m = torch.zeros(1, 1, s.n_heads(model), 1, dtype=torch.bool)
                m[:, :, self.head] = True
        else:  # bhqk
            m = torch.ones(1, 1, 1, 1, dtype=torch.bool)
            if self.head is not None:
                m = torch.zeros(1, s.n_heads(model), 1, 1, dtype=torch.bool)
                m[:, self.head] = True
        if self.position is None:
            return m
        pos = self.position.bool()
        if pos.ndim == 1:
            pos = pos[None]
        if s.layout == "bpd":
            return m & pos[:, :, None]
        if s.layout == "bphd":
            return m & pos[:, :, None, None]
        return m & pos[:, None, :, None]


class Intervention:
    """What to do to an activation where a location's mask is true."""

    def compile(self, hook: str, mask: Tensor) -> Patch:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Replace(Intervention):
    """Use ``source`` (``[batch or 1, ...]``, the activation's shape): another run's
    activation (patching, resample ablation) or a mean (mean ablation)."""

    source: Tensor

    def compile(self, hook: str, mask: Tensor) -> Patch:
        return Patch(hook, mask, self.source)


@dataclass(frozen=True)
class Zero(Intervention):
    """Zero ablation."""

    def compile(self, hook: str, mask: Tensor) -> Patch:
        return Patch(hook, mask, torch.zeros(1))


@dataclass(frozen=True)
class Add(Intervention):
    """Add ``coeff * vector`` (activation addition, steering)."""

    vector: Tensor
    coeff: float = 1.0

    def compile(self, hook: str, mask: Tensor) -> Patch:
        v, c = self.vector, float(self.coeff)
        return Patch(hook, mask, None, transform=lambda act: act + c * v.to(act.device, act.dtype))


@dataclass(frozen=True)
class Scale(Intervention):
    """Multiply by ``factor``."""

    factor: float

    def compile(self, hook: str, mask: Tensor) -> Patch:
        f = float(self.factor)
        return Patch(hook, mask, None, transform=lambda act: act * f)


def _unit(direction: Tensor) -> Tensor:
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("direction must be a finite, non-zero vector")
    return direction / norm


@dataclass(frozen=True)
class ProjectOut(Intervention):
    """Remove the component along ``direction`` (directional ablation)."""

    direction: Tensor

    def compile(self, hook: str, mask: Tensor) -> Patch:
        u = _unit(self.direction)

        def fn(act: Tensor) -> Tensor:
            d = u.to(act.device, act.dtype)
            return act - (act @ d)[..., None] * d

        return Patch(hook, mask, None, transform=fn)


@dataclass(frozen=True)
class ProjectOnto(Intervention):
    """Keep only the component along ``direction``."""

    direction: Tensor

    def compile(self, hook: str, mask: Tensor) -> Patch:
        u = _unit(self.direction)

        def fn(act: Tensor) -> Tensor:
            d = u.to(act.device, act.dtype)
            return (act @ d)[..., None] * d

        return Patch(hook, mask, None, transform=fn)


def patch(model: Any, location: Location, intervention: Intervention) -> Patch:
    """Compile ``intervention`` at ``location`` into a :class:`Patch` for :func:`run_patches`."""
    if not isinstance(intervention, Intervention):
        raise TypeError(f"intervention must be an Intervention (Replace, Zero, Add, ...), not {intervention!r}")
    return intervention.compile(location.hook(model), location.mask(model))


# --------------------------------------------------------------------------- running configurations

RowMetric = Callable[[Tensor, Tensor], Tensor]


def _rows_of(x: Tensor | None, ex: range, n: int) -> Tensor | None:
    """The rows of a per-example tensor for the examples ``ex`` (broadcast tensors unchanged)."""
    if x is None or x.ndim == 0 or x.shape[0] != n or n == 1:
        return x
    return x[ex.start : ex.stop]


def _hook(entries: list[tuple[int, int, Patch]]) -> Callable[..., Tensor]:
    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        for lo, hi, p in entries:
            act[lo:hi] = p.apply(act[lo:hi])
        return act

    return hook


def run_patches(
    model: Any,
    tokens: Tensor,
    configs: Sequence[Sequence[Patch]],
    metric: RowMetric,
    *,
    output: str = "last",
    backend: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "patching",
) -> Tensor:
    """``metric`` of every (configuration, example) run, ``[n_configs, batch]`` (float32, CPU).

    Args:
        model: a TransformerLens model.
        tokens: the prompts ``[batch, pos]`` every configuration runs on.
        configs: lists of :class:`Patch` applied together; a patch's ``mask`` and ``source``
            are per example (``[batch, ...]``) or broadcast (first axis 1).
        metric: ``metric(logits, examples) -> [rows]``: the logits of one pass's rows and
            the example index of each row (:meth:`PatchMetric.on_rows`).
        output: ``"last"`` (the metric needs the final position's logits) or ``"all"``.
        backend: ``"auto"``, ``"fast"`` or ``"hooks"`` (see :mod:`mechlens.engine`); both
            give the same numbers. The fast backend runs a configuration from the block of
            its earliest patch and (``output="last"``) from the first position where a
            ``Replace``/``Zero`` value differs from the unpatched run's (a transform, or a
            patch of attention patterns, runs every position).
        batch_size: sequences per forward pass (``None``: ``DEFAULT_BATCH_SIZE``); datasets
            larger than that are run in chunks of examples.
        progress: show a progress bar named ``desc``.
    """
    if output not in ("last", "all"):
        raise ValueError(f"output={output!r}: choose 'last' or 'all'")
    backend = resolve_backend(model, backend)
    n, n_layers = tokens.shape[0], int(model.cfg.n_layers)
    starts = [first_block([p.hook for p in cfg], n_layers) for cfg in configs]
    if any(hook_layer(p.hook, n_layers) < 0 for cfg in configs for p in cfg):
        # patches on the embeddings: the fast runner starts at block 0 from the embeddings it
        # is given, so it could not apply them; the hooks backend gives the same numbers
        backend = "hooks"
    out = torch.empty(len(configs), n)
    rows = rows_per_pass(batch_size)
    ex_chunks = chunks(n, rows)
    dev = model_device(model)
    bar = progress_bar(len(configs) * len(ex_chunks), progress, desc)
    try:
        for ex in ex_chunks:
            tok = tokens[ex.start : ex.stop].to(dev)
            b = len(ex)
            k_max = max(1, rows // b)
            examples = torch.arange(ex.start, ex.stop)
            sub_configs = [
                [Patch(p.hook, _rows_of(p.mask, ex, n), _rows_of(p.source, ex, n), p.transform) for p in cfg]
                for cfg in configs
            ]
            if backend == "fast":
                names = {_join_hook(s, n_layers) for s in set(starts)}
                if output == "last":  # the base values replaced values are compared with
                    names |= {p.hook for cfg in sub_configs for p in cfg if _compares(p)}
                run = base_run(model, tok, names)
                runner = run.runner(model)
                # a pass starts at the first position its configurations change (output "last":
                # the metric reads only the final position), earlier keys and values the base run's
                skip = output == "last" and runner.can_skip_positions
                firsts = [_first_change(cfg, run.cache, tok.shape[1]) if skip else 0 for cfg in sub_configs]
                for name in set(run.cache) - {_join_hook(s, n_layers) for s in set(starts)}:
                    del run.cache[name]  # compared: not needed by the passes
                plan = plan_passes(firsts, starts, n_layers=n_layers, seq_len=tok.shape[1], batch=b,
                                   max_configs=k_max, overhead_tokens=overhead_tokens(model))
                for chunk in plan:
                    ids = sorted(chunk, key=lambda i: (starts[i], i))  # rows join in layer order
                    off = min(firsts[i] for i in ids)
                    joins: list[tuple[int, Tensor]] = []
                    for layer in sorted({starts[i] for i in ids}):
                        k = sum(1 for i in ids if starts[i] == layer)
                        joins.append((layer, run.cache[_join_hook(layer, n_layers)][:, off:].repeat(k, 1, 1)))
                    hooks = _pass_hooks([[_from_position(p, off) for p in sub_configs[i]] for i in ids], b)
                    with torch.no_grad():
                        logits, _ = runner.run(joins, hooks=hooks, output=output, offset=off)
                    assert logits is not None
                    out[ids, ex.start : ex.stop] = _measure(metric, logits, examples, len(ids))
                    bar.update(len(ids))
                del run
            else:
                for chunk in chunks(len(configs), k_max):
                    ids = list(chunk)
                    hooks = _pass_hooks([sub_configs[i] for i in ids], b)
                    with torch.no_grad(), hooked(model, hooks):
                        logits = model(tok.repeat(len(ids), 1))
                    out[ids, ex.start : ex.stop] = _measure(metric, logits, examples, len(ids))
                    bar.update(len(ids))
    finally:
        bar.close()
    return out


def _join_hook(layer: int, n_layers: int) -> str:
    return f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"


def _compares(p: Patch) -> bool:
    """Whether a patch's change can be found by comparing its value with the base run's: a
    value (not a transform) at a hook whose position axis is 1 (not an attention pattern)."""
    return p.transform is None and p.source is not None and not p.hook.endswith(("hook_pattern", "hook_attn_scores"))


def _first_change(cfg: Sequence[Patch], base: dict[str, Tensor], seq_len: int) -> int:
    """The first position where a configuration puts in a value unlike the base run's (the
    last position where it changes nothing): everything before it is the base run's."""
    first = seq_len - 1
    for p in cfg:
        if not _compares(p):
            return 0
        act = base[p.hook]
        assert p.source is not None
        if act.ndim < 2 or act.shape[1] != seq_len or any(x.numel() > 1 and x.ndim != act.ndim for x in (p.mask, p.source)):
            return 0  # the position is not axis 1 of the activation, mask and value: no slicing by position
        changed = p.mask.to(act.device) & (p.source.to(act.device, act.dtype) != act)
        f = int(first_true(changed.reshape(*changed.shape[:2], -1).any(-1).any(0), 0))
        if f >= 0:
            first = min(first, f)
    return first


def _from_position(p: Patch, off: int) -> Patch:
    """``p`` for a run of positions ``off..`` only (position axis 1; broadcast axes kept)."""
    if not off:
        return p

    def cut(x: Tensor | None) -> Tensor | None:
        return x[:, off:] if x is not None and x.ndim > 1 and x.shape[1] > 1 else x

    return Patch(p.hook, cut(p.mask), cut(p.source), p.transform)


def _pass_hooks(configs: Sequence[Sequence[Patch]], b: int) -> list[tuple[str, Callable[..., Tensor]]]:
    """One hook per hook name applying each configuration's patches to its rows
    (configuration ``i`` owns rows ``i*b .. (i+1)*b``)."""
    by_hook: dict[str, list[tuple[int, int, Patch]]] = {}
    for i, cfg in enumerate(configs):
        for p in cfg:
            by_hook.setdefault(p.hook, []).append((i * b, (i + 1) * b, p))
    return [(name, _hook(entries)) for name, entries in by_hook.items()]


def _measure(metric: RowMetric, logits: Tensor, examples: Tensor, copies: int) -> Tensor:
    rows = examples.repeat(copies)
    return metric(logits, rows).detach().float().cpu().view(copies, len(examples))

