"""What mechlens needs from a model, and the names that differ between model classes.

mechlens runs on TransformerLens models: the ``TransformerBridge`` of TransformerLens 4.x
(what :func:`mechlens.load_model` returns, in compatibility mode) and the
``HookedTransformer`` of TransformerLens 3.x. Both satisfy :class:`TransformerLensModel`;
code outside this module and :mod:`mechlens.engine.bridge` (every bridge internal the fast
backend and weight editing need) uses only that contract and standard hook names.
Hook names that differ between the two classes are resolved here.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["TransformerLensModel", "check_model", "has_hooked_transformer", "is_bridge", "qkv_input_hook", "hf_name"]


@runtime_checkable
class TransformerLensModel(Protocol):
    """The model contract: a config, tokenization, hooked runs and the standard hook names
    (``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_z``, ...)."""

    cfg: Any
    blocks: Any

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...
    def to_str_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...
    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...
    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...
    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...


_NEEDED = ("cfg", "blocks", "to_tokens", "to_str_tokens", "run_with_cache", "run_with_hooks", "hooks", "hook_dict")


def check_model(model: Any) -> Any:
    """Return ``model`` if it has what mechlens needs; else a clear error naming what it lacks."""
    missing = [a for a in _NEEDED if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"mechlens needs a TransformerLens model (a TransformerBridge from mechlens.load_model, "
            f"or a HookedTransformer); this {type(model).__name__} has no {', '.join(missing)}"
        )
    return model


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens has ``HookedTransformer`` (3.x; 4.x removed it)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def is_bridge(model: Any) -> bool:
    """A TransformerLens 4.x ``TransformerBridge`` (see :mod:`mechlens.engine.bridge`)."""
    from mechlens.engine.bridge import (
        is_bridge as bridge_check,  # the one module with bridge internals
    )

    return bridge_check(model)


def qkv_input_hook(model: Any, layer: int, which: str) -> str:
    """The per-head q/k/v input hook of ``layer`` (with ``use_split_qkv_input`` on):
    ``blocks.L.attn.hook_q_input`` on a bridge, ``blocks.L.hook_q_input`` on a HookedTransformer."""
    if which not in ("q", "k", "v"):
        raise ValueError(f"which={which!r}: choose 'q', 'k' or 'v'")
    return f"blocks.{layer}.attn.hook_{which}_input" if is_bridge(model) else f"blocks.{layer}.hook_{which}_input"


def hf_name(name: str) -> str:
    """A parameter or buffer name as the Hugging Face model names it (see :mod:`mechlens.engine.bridge`)."""
    from mechlens.engine.bridge import hf_name as bridge_name

    return bridge_name(name)
