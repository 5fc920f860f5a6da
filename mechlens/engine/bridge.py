"""Every TransformerBridge internal mechlens uses, and nothing else has any.

The fast backend runs the bridge's blocks on their own. For that it needs the keyword
arguments the Hugging Face model hands each block (captured with forward pre-hooks on the
wrapped Hugging Face modules), stand-ins for the KV cache (to record keys and values, or to
prepend a prefix's), and the per-head q/k/v input forks. Weight steering and DIT need the
wrapped Hugging Face model and the bridge's hook bookkeeping. When TransformerLens changes
its internals, this is the one module to update; tests/test_engine.py fails if another
module uses a private bridge attribute.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CACHE_KEY", "POSITIONAL", "KwargCapture", "PrefixKV", "RecordKV", "slice_positions", "has_tensor",
    "split_qkv_input", "is_bridge", "hf_name", "hf_model", "drop_copied_capture_hooks",
]


def is_bridge(model: Any) -> bool:
    """A TransformerLens 4.x ``TransformerBridge``: its blocks wrap Hugging Face modules."""
    blocks = getattr(model, "blocks", None)
    return bool(blocks) and hasattr(blocks[0], "original_component")


def hf_name(name: str) -> str:
    """A parameter or buffer name without the bridge's ``._original_component`` wrappers (the
    Hugging Face name on a bridge; unchanged on a HookedTransformer)."""
    return name.replace("._original_component", "")


def hf_model(model: Any) -> Any:
    """The Hugging Face model a bridge wraps, or ``None`` for other models."""
    return getattr(model, "original_model", None)


def drop_copied_capture_hooks(new: Any) -> None:
    """Make a ``copy.deepcopy`` of a bridge independent of the original.

    A bridge that has run wires forward pre-hooks whose closures hold weak proxies to the
    *original* modules, so the copy would write its captured residuals into the original.
    Forget the copied handles (without ``handle.remove()``: a copied handle still points at
    the original's hook dict) and the hooks they registered; the copy re-wires its own
    capture hooks on its first forward pass.
    """
    stale: set[int] = set()
    for mod in new.modules():
        handles = vars(mod).get("_capture_hook_handles")
        if handles:
            stale |= {h.id for h in handles}
            handles.clear()
            mod._capture_hooks_wired = False
    if not stale:
        return
    for mod in new.modules():
        for attr in (
            "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
            "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
        ):
            d = getattr(mod, attr, None)
            if d:
                for i in stale:
                    d.pop(i, None)


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


CACHE_KEY = "__mechlens_cache_key__"
# Block arguments that index positions, and the axis that does.
POSITIONAL = {"position_ids": -1, "cache_position": -1, "position_embeddings": -2, "attention_mask": -2}


class PrefixKV:
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


def slice_positions(value: Any, axis: int, p: int) -> Any:
    if isinstance(value, tuple):
        return tuple(slice_positions(v, axis, p) for v in value)
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


class KwargCapture:
    """Forward pre-hooks on every block that record the keyword arguments it receives."""

    def __init__(self, model: Any):
        self.model = model
        self.kwargs: dict[int, dict[str, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> KwargCapture:
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
                    kw[CACHE_KEY] = k  # where a prefix KV stand-in can go
                else:
                    kw[k] = _batch_one(v, batch, k)
            if "use_cache" in kw:
                kw["use_cache"] = False
            out.append(kw)
        return out


class RecordKV:
    """Stands in for a KV cache in a full pass: records each layer's keys and values."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.kv[layer_idx] = (k.detach(), v.detach())
        return k, v


def has_tensor(v: Any) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, tuple) and any(isinstance(x, Tensor) for x in v))


@contextmanager
def split_qkv_input(model: Any) -> Iterator[None]:
    """Turn on the per-head q/k/v input forks (``hook_q_input`` ...), restoring the flags."""
    saved_split = bool(getattr(model.cfg, "use_split_qkv_input", False))
    saved_attn_in = bool(getattr(model.cfg, "use_attn_in", False))
    try:
        if saved_attn_in:
            model.set_use_attn_in(False)  # the two forks exclude each other
        if not saved_split:
            model.set_use_split_qkv_input(True)
        yield
    finally:
        model.set_use_split_qkv_input(saved_split)
        if saved_attn_in:
            model.set_use_attn_in(True)
