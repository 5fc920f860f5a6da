"""The fast backend: run only the layers and positions a patch can change.

A patch at layer ``L`` changes nothing before ``L``, so the patched run can start from the
residual stream cached at ``L`` and run only blocks ``L..n-1``, the final norm and the
unembedding. The bridge's own ``start_at_layer`` still runs the skipped blocks inside the
Hugging Face model, so the runner calls the bridge's block components directly, with the
same keyword arguments the Hugging Face model hands them in a normal forward pass (the
causal mask, rotary ``position_embeddings``, ``position_ids``; captured once from a real
forward pass, with the KV cache switched off: :mod:`mechlens.engine.bridge`). Every hook
inside the blocks still fires.

Many patch configurations share one pass: they are stacked on the batch axis. A batch can
mix configurations that start at different layers: rows *join* the running batch at the
block where their patch starts (:meth:`SuffixRunner.run`), so no row ever computes a
block it does not need.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlens.engine.bridge import (
    CACHE_KEY,
    POSITIONAL,
    KwargCapture,
    PrefixKV,
    RecordKV,
    has_tensor,
    slice_positions,
)
from mechlens.engine.hooks import Hook, saver
from mechlens.engine.sites import has_hook
from mechlens.hooks import hooked

__all__ = [
    "base_run", "BaseRun", "SuffixRunner", "block_runner", "fast_runner_or_none", "prefix_kv", "plan_passes",
    "overhead_tokens",
]


@dataclass
class BaseRun:
    """What one cached forward pass gives a sweep."""

    logits: Float[Tensor, "batch pos vocab"]
    cache: dict[str, Tensor]
    block_kwargs: list[dict[str, Any]]
    kv: list[tuple[Tensor, Tensor]] | None  # per layer (keys, values) [batch, kv_heads, pos, d_head]

    def runner(self, model: Any, rows: slice = slice(None)) -> SuffixRunner:
        """A :class:`SuffixRunner` over this run's block arguments whose position skipping
        takes the keys and values of the base run's ``rows`` (e.g. the corrupt half of a
        clean + corrupt run, for rows patched on the corrupt prompts)."""
        kv = None if self.kv is None else [(k[rows], v[rows]) for k, v in self.kv]
        return SuffixRunner(model, self.block_kwargs, kv)


@dataclass
class _Prepared:
    block_kwargs: list[dict[str, Any]]
    skip_positions: bool


# Models whose blocks compute ``mid = h + attn_out; out = mid + mlp(ln2(mid))`` (checked on
# a real pass by _verify): the runner can then stand a given attention output in for a
# block's attention (SuffixRunner.run's ``attention``).
_SEQUENTIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# Block arguments per model and prompt shape, captured and verified on first use. Weakly
# keyed: the entry goes when the model does.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prep_key(model: Any, tokens: Tensor) -> tuple[int, str, str]:
    """What the captured block arguments depend on: prompt length, device, dtype."""
    return int(tokens.shape[1]), str(tokens.device), str(next(model.parameters()).dtype)


def base_run(model: Any, tokens: Int[Tensor, "batch pos"], names: Iterable[str]) -> BaseRun:
    """One forward pass caching only ``names``, with the keyword arguments of every block
    (batch 1, broadcastable: ``block_kwargs[l]`` calls ``model.blocks[l]``) and, where the
    model has a KV cache, each layer's attention keys and values (for position skipping).

    The first call for a model and prompt length runs the bridge's forward pass, captures
    the block arguments and checks that running the blocks on their own reproduces the
    model's logits (else it raises: patching would be inexact). Later calls run the blocks
    directly from the embeddings, which skips the Hugging Face wrapper's overhead.
    """
    names = sorted(set(names) | {"blocks.0.hook_resid_pre"})
    key = _prep_key(model, tokens)
    per_model = _PREPARED.setdefault(model, {})
    prep = per_model.get(key)
    cache: dict[str, Tensor] = {}
    hooks = [(n, saver(cache, n)) for n in names]
    if prep is not None:
        with torch.no_grad():
            resid = model(tokens, stop_at_layer=0)
            runner = SuffixRunner(model, prep.block_kwargs)
            rec = RecordKV() if prep.skip_positions else None
            logits, _ = runner.run([(0, resid)], hooks=hooks, output="all", kv_store=rec)
        kv = [rec.kv[i] for i in range(model.cfg.n_layers)] if rec is not None else None
        assert logits is not None
        return BaseRun(logits, cache, prep.block_kwargs, kv)

    with torch.no_grad(), KwargCapture(model) as cap, hooked(model, hooks):
        out = model(tokens, return_type="logits_and_cache")
    logits, pkv = out if isinstance(out, tuple) else (out, None)
    kv = None
    layers = getattr(pkv, "layers", None)
    if layers is not None and len(layers) == model.cfg.n_layers:
        try:
            kv = [(layer.keys.detach(), layer.values.detach()) for layer in layers]
        except AttributeError:
            kv = None
        if kv is not None and any(k.shape[-2] != tokens.shape[1] or k.shape[0] != tokens.shape[0] for k, _ in kv):
            kv = None
    run = BaseRun(logits, cache, cap.prepared(tokens.shape[0]), kv)
    prep = _verify(model, run)
    per_model[key] = prep
    if not prep.skip_positions:
        run.kv = None
    return run


def block_runner(model: Any, tokens: Int[Tensor, "batch pos"]) -> SuffixRunner:
    """A :class:`SuffixRunner` (whole sequences, no position skipping) for prompts of this
    length; the block arguments are captured and verified on first use (:func:`base_run` on
    the first prompt)."""
    key = _prep_key(model, tokens)
    if key not in _PREPARED.get(model, {}):
        base_run(model, tokens[:1], ())
    return SuffixRunner(model, _PREPARED[model][key].block_kwargs)


def fast_runner_or_none(model: Any, tokens: Int[Tensor, "batch pos"], asked: str) -> SuffixRunner | None:
    """:func:`block_runner` for a call that asked for ``backend=asked`` (resolved to
    ``"fast"``): ``None`` where ``"auto"`` was asked and the model's blocks cannot run on
    their own, so the caller runs the hooks backend, which gives the same numbers."""
    try:
        return block_runner(model, tokens)
    except NotImplementedError:
        if asked != "auto":
            raise
        return None


def prefix_kv(model: Any, tokens: Int[Tensor, "batch pos"], p: int) -> SuffixRunner | None:
    """A runner for positions ``p..`` of ``tokens``: it holds every layer's keys and values
    of the unhooked run at positions ``< p`` (the whole model run on those positions only).
    ``None`` where the model cannot skip positions."""
    block_runner(model, tokens)
    prep = _PREPARED[model][_prep_key(model, tokens)]
    if not prep.skip_positions or not 0 < p < tokens.shape[1]:
        return None
    head = block_runner(model, tokens[:, :p])  # block arguments for p positions
    rec = RecordKV()
    with torch.no_grad():
        head.run([(0, model(tokens[:, :p], stop_at_layer=0))], output="none", kv_store=rec)
    return SuffixRunner(model, prep.block_kwargs, [rec.kv[i] for i in range(head.n_layers)])


def _verify(model: Any, run: BaseRun) -> _Prepared:
    """Check on one example that the blocks run on their own give the model's logits, from
    the first position and from the middle (with the cached keys and values)."""
    x = run.cache["blocks.0.hook_resid_pre"][:1]
    target = run.logits[:1]
    tol = 1e-4 * max(1.0, float(target.abs().max()))
    kv = [(k[:1], v[:1]) for k, v in run.kv] if run.kv is not None else None
    runner = SuffixRunner(model, run.block_kwargs, kv)
    n = int(model.cfg.n_layers)
    seen: dict[str, Tensor] = {}
    names = [f"blocks.{i}.hook_{w}" for i in range(n) for w in ("resid_pre", "attn_out", "resid_post")]
    names = [nm for nm in names if has_hook(model, nm)]
    with torch.no_grad():
        out, _ = runner.run([(0, x)], output="all", hooks=[(nm, saver(seen, nm)) for nm in names])
        assert out is not None
        if out.shape != target.shape or (out - target).abs().max() > tol:
            raise NotImplementedError(
                f"mechlens cannot run the blocks of this architecture ({type(model.blocks[0]).__name__}) on "
                "their own and reproduce the model's logits, so its fast patching would be inexact"
            )
        if model not in _SEQUENTIAL:
            _SEQUENTIAL[model] = len(seen) == len(names) == 3 * n and _is_sequential(model, seen)
        skip = runner.can_skip_positions
        if skip:
            p = x.shape[1] // 2
            out, _ = runner.run([(0, x[:, p:])], output="all", offset=p)
            assert out is not None
            skip = out.shape == target[:, p:].shape and bool((out - target[:, p:]).abs().max() <= tol)
    return _Prepared(run.block_kwargs, skip)


def _is_sequential(model: Any, seen: dict[str, Tensor]) -> bool:
    """Whether every block's output is ``mid + mlp(ln2(mid))`` with ``mid = resid_pre +
    attn_out`` on one recorded pass. Blocks without ``ln2``/``mlp`` components (GPT-J-style
    parallel blocks) or whose MLP returns more than a tensor (mixtures of experts) are not."""
    try:
        for i in range(int(model.cfg.n_layers)):
            post = seen[f"blocks.{i}.hook_resid_post"]
            out = _mlp_step(model, i, seen[f"blocks.{i}.hook_resid_pre"] + seen[f"blocks.{i}.hook_attn_out"])
            if not isinstance(out, Tensor) or out.shape != post.shape:
                return False
            if (out - post).abs().max() > 1e-5 * max(1.0, float(post.abs().max())):
                return False
    except (AttributeError, TypeError, RuntimeError):
        return False
    return True


def _mlp_step(model: Any, layer: int, mid: Tensor) -> Tensor:
    """The rest of a sequential block after its attention: ``mid + mlp(ln2(mid))``."""
    block = model.blocks[layer]
    return mid + block.mlp(block.ln2(mid))


class SuffixRunner:
    """Runs blocks ``L..n-1``, the final norm and the unembedding from given residuals."""

    def __init__(
        self,
        model: Any,
        block_kwargs: Sequence[dict[str, Any]],
        kv: Sequence[tuple[Tensor, Tensor]] | None = None,
    ):
        self.model = model
        self.kwargs = [{k: v for k, v in kw.items() if k != CACHE_KEY} for kw in block_kwargs]
        self.cache_keys = [kw.get(CACHE_KEY) for kw in block_kwargs]
        self.kv = kv
        self.n_layers = int(model.cfg.n_layers)
        # Position skipping needs the base run's keys/values, a cache argument to put them
        # in, and block arguments whose position axes are known.
        self.can_skip_positions = (
            kv is not None
            and all(self.cache_keys)
            and all(
                k in POSITIONAL or not has_tensor(v)
                for kw in self.kwargs
                for k, v in kw.items()
            )
        )

    @property
    def can_replace_attention(self) -> bool:
        """Whether :meth:`run` can take a block's attention output as given (``attention=``):
        the model's blocks were checked to compute ``h + attn_out``, then ``+ mlp(ln2(.))``
        (not parallel attention and MLP, no norm after either)."""
        return bool(_SEQUENTIAL.get(self.model, False))

    def rows(self, examples: Tensor) -> SuffixRunner:
        """This runner for rows of the given examples (``examples[i]``: the example of row
        ``i``): position skipping takes each row's keys and values from its example."""
        out = copy.copy(self)
        if self.kv is not None:
            idx = examples.to(self.kv[0][0].device)
            out.kv = [(k[idx], v[idx]) for k, v in self.kv]
        return out

    def _block_kwargs(self, layer: int, p: int) -> dict[str, Any]:
        kw = self.kwargs[layer]
        if p == 0:
            return kw
        kw = {k: (slice_positions(v, POSITIONAL[k], p) if k in POSITIONAL else v) for k, v in kw.items()}
        assert self.kv is not None
        kw[self.cache_keys[layer]] = PrefixKV(self.kv, p)
        return kw

    def run(
        self,
        joins: Sequence[tuple[int, Float[Tensor, "rows pos d_model"]]],
        *,
        hooks: Sequence[Hook] = (),
        output: str = "last",
        capture: Iterable[int] = (),
        stop: int | None = None,
        offset: int = 0,
        kv_store: Any = None,
        attention: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor | None, dict[int, Tensor]]:
        """Run the stacked rows to the end (or to ``stop``).

        Args:
            joins: ``(layer, residual)`` pairs sorted by layer: the rows of ``residual``
                join the batch at the input of block ``layer`` (``n_layers`` = just before
                the final norm). Rows keep the order in which they joined.
            hooks: forward hooks attached (by a context manager) for this run only.
            output: ``"last"``: logits at the final position ``[rows, 1, vocab]``;
                ``"all"``: logits at every position; ``"resid"``: the final residual stream;
                ``"none"``: nothing (with ``stop``).
            capture: layers whose incoming residual ``[rows so far, pos, d_model]`` is returned.
            stop: stop before this block (only with ``output="none"``).
            offset: the rows hold positions ``offset..`` only; earlier positions are the
                base run's (their keys and values come from it). Exact when nothing
                before ``offset`` is patched: attention is causal.
            kv_store: an object with ``update(k, v, layer)`` handed to the blocks as their
                KV cache (to record keys and values); only with ``offset=0``.
            attention: ``{layer: attention output [rows or a divisor of them, pos, d_model]}``
                (tiled over the rows): these blocks do not run their attention but add the
                given output, then run their MLP (e.g. a run whose heads there are all frozen
                to a base run's: its ``hook_attn_out``). Hooks inside those blocks' attention
                and on their residual stream do not fire; the MLP's do. Needs
                :attr:`can_replace_attention`.
        """
        if attention and not self.can_replace_attention:
            raise ValueError("this model's blocks are not h + attention, then + MLP: attention= cannot stand in")
        if offset and not self.can_skip_positions:
            raise ValueError("this model does not support position skipping (offset must be 0)")
        if not joins:
            raise ValueError("nothing to run")
        layers = [j for j, _ in joins]
        if layers != sorted(layers):
            raise ValueError("joins must be sorted by layer")
        capture = set(capture)
        end = self.n_layers if stop is None else stop
        captured: dict[int, Tensor] = {}
        h: Tensor | None = None
        ji = 0
        with ExitStack() as stack:
            if hooks:
                stack.enter_context(hooked(self.model, list(hooks)))
            for layer in range(layers[0], end + 1):
                parts = [] if h is None else [h]
                while ji < len(joins) and joins[ji][0] == layer:
                    parts.append(joins[ji][1])
                    ji += 1
                h = parts[0] if len(parts) == 1 else torch.cat(parts)
                if layer in capture:
                    captured[layer] = h
                if layer == end:
                    break
                if attention is not None and layer in attention:
                    a = attention[layer].to(h.dtype)
                    h = _mlp_step(self.model, layer, h + a.repeat(h.shape[0] // a.shape[0], 1, 1))
                    continue
                kw = self._block_kwargs(layer, offset)
                if kv_store is not None and self.cache_keys[layer]:
                    kw = {**kw, self.cache_keys[layer]: kv_store}
                out = self.model.blocks[layer](h, **kw)
                h = out[0] if isinstance(out, tuple) else out
            assert h is not None
            if output == "none":
                return None, captured
            if stop is not None:
                raise ValueError("stop is only allowed with output='none'")
            if output == "resid":
                return h, captured
            x = h[:, -1:] if output == "last" else h
            return self.model.unembed(self.model.ln_final(x)), captured

    def residuals(self, tokens: Int[Tensor, "batch pos"], layers: Iterable[int]) -> dict[int, Tensor]:
        """The residual stream entering each of ``layers`` (``n_layers``: before the final
        norm) on the unhooked run of ``tokens``, without gradients: where runs that change
        nothing before those blocks start."""
        layers = sorted(set(layers))
        with torch.no_grad():
            x = self.model(tokens, stop_at_layer=0)
            _, captured = self.run([(0, x)], output="none", capture=layers, stop=layers[-1])
        return captured


def plan_passes(
    first_pos: Sequence[int],
    start_layer: Sequence[int],
    *,
    n_layers: int,
    seq_len: int,
    batch: int,
    max_configs: int,
    overhead_tokens: float = 32.0,
) -> list[list[int]]:
    """Split patch configurations into forward passes of at most ``max_configs`` each.

    Configuration ``i`` needs blocks ``start_layer[i]..n-1`` at positions ``first_pos[i]..``.
    A pass starts at its smallest first position and layer, so mixing configurations
    wastes work, while every pass costs a fixed overhead per block. Sorting by position and
    cutting the sorted list by dynamic programming minimises ``sum over passes of
    overhead_tokens * blocks + sum over rows of blocks * positions`` (work in token-blocks).
    Cuts are considered where the first position changes and where a run of equal first
    positions must be split to respect ``max_configs``. Returns lists of configuration indices.
    """
    n = len(first_pos)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (first_pos[i], start_layer[i], i))
    p = [first_pos[i] for i in order]
    st = [start_layer[i] for i in order]
    w = [batch * (n_layers - s_) for s_ in st]  # row-blocks of each configuration
    # candidate cut points: changes of position, and every max_configs inside a run
    cuts = [0]
    for t in range(1, n):
        if p[t] != p[t - 1] or t - cuts[-1] >= max_configs:
            cuts.append(t)
    cuts.append(n)
    prefix_w = [0]
    for x in w:
        prefix_w.append(prefix_w[-1] + x)
    best = [0.0] + [float("inf")] * (len(cuts) - 1)
    back = [0] * len(cuts)
    for b_i in range(1, len(cuts)):
        i = cuts[b_i]
        for a_i in range(b_i - 1, -1, -1):
            j = cuts[a_i]
            if i - j > max_configs:
                break
            cost = (best[a_i] + overhead_tokens * (n_layers - min(st[j:i]) + 1)
                    + (seq_len - p[j]) * (prefix_w[i] - prefix_w[j]))
            if cost < best[b_i]:
                best[b_i], back[b_i] = cost, a_i
    chunks = []
    b_i = len(cuts) - 1
    while b_i > 0:
        a_i = back[b_i]
        chunks.append([order[t] for t in range(cuts[a_i], cuts[b_i])])
        b_i = a_i
    return chunks[::-1]


def overhead_tokens(model: Any) -> float:
    """Per-block cost of one more pass, in token-blocks of compute: about 1e7 FLOPs of
    Python and dispatch overhead against the FLOPs one token needs in one block."""
    d = int(model.cfg.d_model)
    d_mlp = int(getattr(model.cfg, "d_mlp", None) or 4 * d)
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    flops = 2 * (4 * d * d + (3 if gated else 2) * d * d_mlp)
    return float(min(max(1e7 / flops, 1.0), 1000.0))
