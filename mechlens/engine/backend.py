"""Choosing a backend: ``"fast"`` (TransformerBridge, run only what a patch can change) or
``"hooks"`` (any TransformerLens model, full ``run_with_hooks`` passes)."""

from __future__ import annotations

from typing import Any

from mechlens.model_protocol import check_model, is_bridge

__all__ = ["BACKENDS", "resolve_backend"]

BACKENDS = ("auto", "fast", "hooks")


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
