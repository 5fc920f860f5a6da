"""Running part of a model: the machinery that makes patching sweeps fast and exact.

A patch at layer ``L`` changes nothing before ``L``, so the patched run can start from the
residual stream cached at ``L`` and run only blocks ``L..n-1``, the final norm and the
unembedding. The bridge's own ``start_at_layer`` still runs the skipped blocks inside the
Hugging Face model, so this module calls the bridge's block components directly, with the
same keyword arguments the Hugging Face model hands them in a normal forward pass (the
causal mask, rotary ``position_embeddings``, ``position_ids``; captured once from a real
forward pass, with the KV cache switched off). Every hook inside the blocks still fires.

Many patch configurations share one pass: they are stacked on the batch axis. A batch can
mix configurations that start at different layers: rows *join* the running batch at the
block where their patch starts (:meth:`SuffixRunner.run`), so no row ever computes a
block it does not need.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlens.engine import saver
from mechlens.hooks import hooked
from mechlens.metrics import fraction_recovered, logit_diff
from mechlens.models import model_device
from mechlens.validate import check_dataset

__all__ = ["model_device", "prepare_dataset", "base_run", "BaseRun", "SuffixRunner", "PatchMetric", "check_mode", "plan_passes", "overhead_tokens"]


def check_mode(mode: str) -> str:
    if mode not in ("denoise", "noise"):
        raise ValueError(
            f"mode={mode!r}: choose 'denoise' (run the corrupt prompts, patch in clean activations) "
            "or 'noise' (run the clean prompts, patch in corrupt activations)"
        )
    return mode


def prepare_dataset(model: Any, ds: Any, what: str = "ds") -> Any:
    """Check a ContrastDataset against the model (``validate.check_dataset``) and move it
    to the model's device."""
    return check_dataset(ds, model, what).to(model_device(model))


# --------------------------------------------------------------------------- block kwargs


def _flatten_bound(sig: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(sig.bind_partial(*args, **kwargs).arguments)
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
            bound.update(bound.pop(name))
    return bound


def _batch_one(value: Any, batch: int, name: str) -> Any:
    """Reduce a batch-sized tensor (or tuple of them) to batch 1; rows must all be equal."""
    if isinstance(value, tuple):
        return tuple(_batch_one(v, batch, name) for v in value)
    if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[0] == batch and batch > 1:
        first = value[:1]
        if not torch.equal(value, first.expand_as(value)):
            raise NotImplementedError(
                f"block argument {name!r} differs between examples (padded prompts?); mechlens "
                "patching needs unpadded prompts of one length"
            )
        return first
    return value


_CACHE_KEY = "__mechlens_cache_key__"
# Block arguments that index positions, and the axis that does.
_POSITIONAL = {"position_ids": -1, "cache_position": -1, "position_embeddings": -2, "attention_mask": -2}


class _PrefixKV:
    """Stands in for a KV cache: prepends the base run's keys and values at positions ``< p``
    to the keys and values the block computes for positions ``p..``.

    The bridge's attention calls ``cache.update(k, v, layer_idx)`` and attends over the
    result, so a run that starts at position ``p`` sees exactly the full-length keys.
    """

    def __init__(self, kv: Sequence[tuple[Tensor, Tensor]], p: int):
        self.kv = kv
        self.p = p

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        pk, pv = self.kv[layer_idx]
        reps = k.shape[0] // pk.shape[0]

        def tile(x: Tensor, like: Tensor) -> Tensor:
            x = x[..., : self.p, :].to(like.dtype)
            return x.unsqueeze(0).expand(reps, *x.shape).reshape(reps * x.shape[0], *x.shape[1:])

        return torch.cat([tile(pk, k), k], dim=-2), torch.cat([tile(pv, v), v], dim=-2)


def _slice_positions(value: Any, axis: int, p: int) -> Any:
    if isinstance(value, tuple):
        return tuple(_slice_positions(v, axis, p) for v in value)
    if isinstance(value, Tensor):
        idx = [slice(None)] * value.ndim
        idx[axis] = slice(p, None)
        return value[tuple(idx)]
    return value


@functools.lru_cache(maxsize=64)
def _signature(cls: type) -> inspect.Signature:
    """The signature of ``cls.forward`` as a bound method (without ``self``)."""
    sig = inspect.signature(cls.forward)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


class _KwargCapture:
    """Forward pre-hooks on every block that record the keyword arguments it receives."""

    def __init__(self, model: Any):
        self.model = model
        self.kwargs: dict[int, dict[str, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _KwargCapture:
        for i, block in enumerate(self.model.blocks):
            sig = _signature(type(block.original_component))

            def pre(_mod: Any, args: tuple, kwargs: dict, i: int = i, sig: inspect.Signature = sig) -> None:
                self.kwargs[i] = _flatten_bound(sig, args, kwargs)

            self._handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def prepared(self, batch: int) -> list[dict[str, Any]]:
        from transformers.cache_utils import Cache

        out = []
        for i in range(len(self.model.blocks)):
            if i not in self.kwargs:
                raise RuntimeError(f"block {i} did not run during the cached forward pass")
            kw = dict(self.kwargs[i])
            first = next(iter(kw))  # the hidden states: replaced by the runner's input
            kw.pop(first)
            for k, v in list(kw.items()):
                if isinstance(v, Cache):
                    kw[k] = None
                    kw[_CACHE_KEY] = k  # where a prefix KV stand-in can go
                else:
                    kw[k] = _batch_one(v, batch, k)
            if "use_cache" in kw:
                kw["use_cache"] = False
            out.append(kw)
        return out


@dataclass
class BaseRun:
    """What one cached forward pass gives a sweep."""

    logits: Float[Tensor, "batch pos vocab"]
    cache: dict[str, Tensor]
    block_kwargs: list[dict[str, Any]]
    kv: list[tuple[Tensor, Tensor]] | None  # per layer (keys, values) [batch, kv_heads, pos, d_head]


class _RecordKV:
    """Stands in for a KV cache in a full pass: records each layer's keys and values."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.kv[layer_idx] = (k.detach(), v.detach())
        return k, v


@dataclass
class _Prepared:
    block_kwargs: list[dict[str, Any]]
    skip_positions: bool


# Block arguments per model and prompt shape, captured and verified on first use. Weakly
# keyed: the entry goes when the model does.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    key = (int(tokens.shape[1]), str(tokens.device), str(next(model.parameters()).dtype))
    per_model = _PREPARED.setdefault(model, {})
    prep = per_model.get(key)
    cache: dict[str, Tensor] = {}
    hooks = [(n, saver(cache, n)) for n in names]
    if prep is not None:
        with torch.no_grad():
            resid = model(tokens, stop_at_layer=0)
            runner = SuffixRunner(model, prep.block_kwargs)
            rec = _RecordKV() if prep.skip_positions else None
            logits, _ = runner.run([(0, resid)], hooks=hooks, output="all", kv_store=rec)
        kv = [rec.kv[i] for i in range(model.cfg.n_layers)] if rec is not None else None
        assert logits is not None
        return BaseRun(logits, cache, prep.block_kwargs, kv)

    with torch.no_grad(), _KwargCapture(model) as cap, hooked(model, hooks):
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


def _verify(model: Any, run: BaseRun) -> _Prepared:
    """Check on one example that the blocks run on their own give the model's logits, from
    the first position and from the middle (with the cached keys and values)."""
    x = run.cache["blocks.0.hook_resid_pre"][:1]
    target = run.logits[:1]
    tol = 1e-4 * max(1.0, float(target.abs().max()))
    kv = [(k[:1], v[:1]) for k, v in run.kv] if run.kv is not None else None
    runner = SuffixRunner(model, run.block_kwargs, kv)
    with torch.no_grad():
        out, _ = runner.run([(0, x)], output="all")
        assert out is not None
        if out.shape != target.shape or (out - target).abs().max() > tol:
            raise NotImplementedError(
                f"mechlens cannot run the blocks of this architecture ({type(model.blocks[0]).__name__}) on "
                "their own and reproduce the model's logits, so its fast patching would be inexact"
            )
        skip = runner.can_skip_positions
        if skip:
            p = x.shape[1] // 2
            out, _ = runner.run([(0, x[:, p:])], output="all", offset=p)
            assert out is not None
            skip = out.shape == target[:, p:].shape and bool((out - target[:, p:]).abs().max() <= tol)
    return _Prepared(run.block_kwargs, skip)


# --------------------------------------------------------------------------- suffix runner

Hook = tuple[str, Callable[..., Any]]


def _has_tensor(v: Any) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, tuple) and any(isinstance(x, Tensor) for x in v))


class SuffixRunner:
    """Runs blocks ``L..n-1``, the final norm and the unembedding from given residuals."""

    def __init__(
        self,
        model: Any,
        block_kwargs: Sequence[dict[str, Any]],
        kv: Sequence[tuple[Tensor, Tensor]] | None = None,
    ):
        self.model = model
        self.kwargs = [{k: v for k, v in kw.items() if k != _CACHE_KEY} for kw in block_kwargs]
        self.cache_keys = [kw.get(_CACHE_KEY) for kw in block_kwargs]
        self.kv = kv
        self.n_layers = int(model.cfg.n_layers)
        # Position skipping needs the base run's keys/values, a cache argument to put them
        # in, and block arguments whose position axes are known.
        self.can_skip_positions = (
            kv is not None
            and all(self.cache_keys)
            and all(
                k in _POSITIONAL or not _has_tensor(v)
                for kw in self.kwargs
                for k, v in kw.items()
            )
        )

    def _block_kwargs(self, layer: int, p: int) -> dict[str, Any]:
        kw = self.kwargs[layer]
        if p == 0:
            return kw
        kw = {k: (_slice_positions(v, _POSITIONAL[k], p) if k in _POSITIONAL else v) for k, v in kw.items()}
        assert self.kv is not None
        kw[self.cache_keys[layer]] = _PrefixKV(self.kv, p)
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
        """
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


# --------------------------------------------------------------------------- metrics

METRICS = ("fraction_recovered", "logit_diff")


class PatchMetric:
    """The per-example metric of a patched run.

    - ``"logit_diff"``: the logit difference (correct - incorrect for the clean prompt).
    - ``"fraction_recovered"``: ``(LD_patched[b] - LD_corrupt[b]) / (mean LD_clean - mean
      LD_corrupt)``. Its mean over examples is exactly the paper's
      ``fraction_recovered(mean LD_patched, mean LD_clean, mean LD_corrupt)``; subtracting
      each example's own corrupt value makes the per-example numbers paired (smaller
      standard errors) without changing the mean.
    - a callable ``metric(logits, ds) -> [batch]``, called with the logits ``[batch, pos,
      vocab]`` of one patched copy of the dataset.

    Rows are stacked copies of the dataset: row ``k * batch + b`` is example ``b``.
    """

    def __init__(
        self,
        metric: str | Callable[..., Tensor],
        ds: Any,
        clean_logits: Tensor,
        corrupt_logits: Tensor,
    ):
        self.ds = ds
        self.batch = ds.batch
        if callable(metric):
            self.fn = metric
            self.name = getattr(metric, "__name__", "custom")
            self.output = "all"
        elif metric in METRICS:
            self.fn = None
            self.name = metric
            self.output = "last"
        else:
            raise ValueError(f"metric={metric!r}: choose one of {list(METRICS)} or pass a callable(logits, ds)")
        self.clean_logits, self.corrupt_logits = clean_logits.detach(), corrupt_logits.detach()
        self.ld_clean = logit_diff(clean_logits, ds.answers).detach()
        self.ld_corrupt = logit_diff(corrupt_logits, ds.answers).detach()
        if self.name == "fraction_recovered":
            # raises a clear error when clean and corrupt do not differ
            fraction_recovered(self.ld_clean.mean(), self.ld_clean.mean(), self.ld_corrupt.mean())
        self.baselines = {
            "clean": self(clean_logits).detach(),
            "corrupt": self(corrupt_logits).detach(),
        }

    def __call__(self, logits: Float[Tensor, "rows pos vocab"]) -> Float[Tensor, " rows"]:
        rows = logits.shape[0]
        if rows % self.batch:
            raise ValueError(f"{rows} rows is not a whole number of copies of the {self.batch} examples")
        reps = rows // self.batch
        if self.fn is not None:
            outs = []
            for k in range(reps):
                out = torch.as_tensor(self.fn(logits[k * self.batch : (k + 1) * self.batch], self.ds))
                if out.shape != (self.batch,):
                    raise ValueError(
                        f"metric {self.name!r} must return one value per example, shape ({self.batch},), "
                        f"got {tuple(out.shape)}"
                    )
                outs.append(out.float())
            return torch.cat(outs)
        return self.from_ld(logit_diff(logits, self.ds.answers).view(reps, self.batch)).reshape(-1)

    def from_ld(self, ld: Float[Tensor, "*cells batch"]) -> Float[Tensor, "*cells batch"]:
        """A built-in metric from per-example logit differences (last axis = examples)."""
        if self.fn is not None:
            raise TypeError("from_ld only applies to the built-in metrics")
        if self.name == "logit_diff":
            return ld
        ld_corrupt = self.ld_corrupt.to(ld.device)
        corrupt = ld_corrupt.mean()
        return fraction_recovered(ld - ld_corrupt + corrupt, self.ld_clean.to(ld.device).mean(), corrupt)
