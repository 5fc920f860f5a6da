"""Gradient mode: the one place that runs forward *and backward* passes.

Attribution patching, edge attribution patching (EAP) and its integrated-gradients variants
(EAP-IG) all need the same thing from a pass: the activations at some hooks, the gradient of
the summed metric at other hooks, and the metric itself. :func:`grad_run` gives exactly that,
batched like :func:`~mechlens.engine.run_grid`: the ``n_configs x n`` grid of (configuration,
example) rows runs in passes of ``batch_size`` sequences, and ``hooks(configs, examples)``
adds the interventions of each row (an interpolated input for integrated gradients, for
instance; :func:`interpolate_hook` builds one).

Rows never interact in a pass (a causal model runs every sequence on its own), so the
gradient of ``metric.sum()`` at a row's activation is the gradient of that row's metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechlens.engine.backend import resolve_backend
from mechlens.engine.batching import batches, progress_iter
from mechlens.engine.fast import block_runner
from mechlens.engine.hooks import Hook, hook_layer, saver
from mechlens.hooks import hooked
from mechlens.models import model_device

__all__ = ["GradBatch", "grad_run", "interpolate_hook", "ig_alphas", "train_forward"]


@dataclass
class GradBatch:
    """One pass of :func:`grad_run`.

    Attributes:
        configs: configuration index of each row ``[rows]``.
        examples: example index (into ``tokens``) of each row ``[rows]``.
        metric: the metric of each row ``[rows]`` (detached, on the model's device).
        logits: the pass's logits (detached).
        saved: activation at every ``save`` hook (detached), ``[rows, ...]``.
        grads: ``d metric.sum() / d activation`` at every ``grad_at`` hook, ``[rows, ...]``
            (zeros where the metric does not depend on it and ``allow_unused``).
    """

    configs: Tensor
    examples: Tensor
    metric: Tensor
    logits: Tensor
    saved: dict[str, Tensor]
    grads: dict[str, Tensor]


def ig_alphas(steps: int) -> list[float]:
    """Interpolation points of integrated gradients with ``steps`` steps: ``k / steps`` for
    ``k = 1..steps`` (the right Riemann sum: one step is the plain gradient at the clean point)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"ig_steps={steps!r} must be an int >= 1 (1 = plain gradients)")
    return [k / steps for k in range(1, steps + 1)]


def interpolate_hook(name: str, clean: Tensor, corrupt: Tensor, alpha: Tensor) -> Hook:
    """A hook at ``name`` that replaces each row's activation by ``corrupt + alpha * (clean -
    corrupt)`` (``clean``/``corrupt`` ``[rows, ...]``, ``alpha`` ``[rows]``). Rows with
    ``alpha == 1`` keep the run's own activation untouched (bit for bit), so one step of
    integrated gradients is the plain gradient."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        a = alpha.to(act.device, act.dtype).view(-1, *([1] * (act.ndim - 1)))
        mixed = corrupt.to(act.dtype) + a * (clean.to(act.dtype) - corrupt.to(act.dtype))
        return torch.where(a == 1, act, mixed)

    return (name, hook)


def train_forward(
    model: Any,
    tokens: Tensor,
    *,
    start_layer: int = 0,
    backend: str = "auto",
    output: str = "last",
    batch_size: int | None = None,
) -> Callable[[Tensor, Sequence[Hook]], Tensor]:
    """The forward pass of a training loop whose interventions all act in block
    ``start_layer`` or later: ``forward(examples, hooks) -> logits`` of those rows of
    ``tokens`` with ``hooks`` attached, differentiable (call it under ``torch.enable_grad``).

    On the fast backend (``"auto"`` on a TransformerBridge) the residual stream entering
    ``start_layer`` is computed once for every example (without gradients, ``batch_size``
    sequences per pass) and each call runs only blocks ``start_layer..n-1``; with
    ``output="last"`` only the final position is unembedded (``[rows, 1, vocab]``). On the
    hooks backend each call is a full ``model(tokens[examples])`` with the hooks attached.
    Both give the same logits at the final position.
    """
    if output not in ("all", "last"):
        raise ValueError(f"output={output!r}: choose 'all' or 'last'")
    backend = resolve_backend(model, backend)
    n_layers = int(model.cfg.n_layers)
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < n_layers:
        raise ValueError(f"start_layer={start_layer!r} must be a block in 0..{n_layers - 1}")
    dev = model_device(model)
    if backend == "hooks":

        def forward_hooks(examples: Tensor, hooks: Sequence[Hook]) -> Tensor:
            with hooked(model, list(hooks)):
                logits = model(tokens[examples].to(dev))
            return logits[:, -1:] if output == "last" else logits

        return forward_hooks
    runner = block_runner(model, tokens.to(dev))
    resid = torch.cat([runner.residuals(tokens[sl].to(dev), [start_layer])[start_layer]
                       for sl in batches(len(tokens), batch_size)])

    def forward_fast(examples: Tensor, hooks: Sequence[Hook]) -> Tensor:
        logits, _ = runner.run([(start_layer, resid[examples.to(resid.device)])], hooks=list(hooks), output=output)
        assert logits is not None
        return logits

    return forward_fast


def _grad_hook(saved: dict[str, Tensor] | None, leaves: dict[str, Tensor], name: str) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        if saved is not None:
            saved[name] = act.detach()
        # a node that only this reader uses (its gradient is the reader's); with frozen
        # weights nothing upstream needs a gradient, so the graph starts here
        out = act.clone() if act.requires_grad else act.detach().requires_grad_(True)
        leaves[name] = out
        return out

    return hook


def grad_run(
    model: Any,
    tokens: Tensor,
    metric: Callable[[Tensor, Tensor], Tensor],
    *,
    save: Sequence[str] = (),
    grad_at: Sequence[str] = (),
    n_configs: int = 1,
    hooks: Callable[[Tensor, Tensor], Sequence[Hook]] | None = None,
    batch_size: int | None = None,
    allow_unused: bool = False,
    progress: bool = False,
    desc: str = "gradients",
    backend: str = "hooks",
    start_layer: Sequence[int] | None = None,
    output: str = "all",
) -> Iterator[GradBatch]:
    """Forward and backward passes over the ``n_configs x len(tokens)`` grid, one
    :class:`GradBatch` per pass.

    Row ``r`` of the grid is configuration ``r // n`` of example ``r % n``; passes hold
    ``batch_size`` rows (``None``: ``DEFAULT_BATCH_SIZE``), so memory is bounded whatever the
    grid. In each pass ``hooks(configs, examples)`` (run before the saving and gradient hooks
    at the same name) adds the rows' interventions, ``metric(logits, examples) -> [rows]`` is
    differentiated (``metric.sum()``, so each row gets its own gradient), and the activations
    at ``save`` (detached) and the gradients at ``grad_at`` come back.

    Backends (:func:`~mechlens.engine.resolve_backend` picks ``"auto"``):

    - ``"hooks"``: full forward passes of the model.
    - ``"fast"`` (TransformerBridge): the blocks run on their own
      (:func:`~mechlens.engine.fast.block_runner`). With ``start_layer`` (per configuration,
      the first block it changes) a pass starts at its rows' earliest block from the clean
      residual there (cached once per call, so call it per chunk of examples to bound
      memory), and the backward pass stops there too; list configurations in block order so
      that passes do not mix early and late starts. Hooks and gradients before a pass's
      first block do not fire: ``grads`` lacks them (their gradient is zero for every row
      that starts later).

    ``output="last"`` hands ``metric`` the logits of the final position only (``[rows, 1,
    vocab]``; the fast backend then skips the unembedding of every other position).

    Raises:
        RuntimeError: a ``grad_at`` hook did not fire, or (without ``allow_unused``) the
            metric does not depend on it.
    """
    if output not in ("all", "last"):
        raise ValueError(f"output={output!r}: choose 'all' or 'last'")
    backend = resolve_backend(model, backend)
    n = int(tokens.shape[0])
    grid_c = torch.arange(n_configs).repeat_interleave(n)
    grid_e = torch.arange(n).repeat(n_configs)
    dev = model_device(model)
    n_layers = int(model.cfg.n_layers)
    starts = torch.zeros(n_configs, dtype=torch.long) if start_layer is None else torch.as_tensor(start_layer)
    if starts.shape != (n_configs,) or bool((starts < 0).any()) or bool((starts >= n_layers).any()):
        raise ValueError(f"start_layer must give one block in 0..{n_layers - 1} per configuration ({n_configs})")
    runner = None
    base: dict[int, Tensor] = {}
    if backend == "fast":
        runner = block_runner(model, tokens.to(dev))
        later = sorted(set(starts.tolist()) - {0})
        if later:  # the clean residual where later configurations start, from the runner itself
            base = runner.residuals(tokens.to(dev), later)
    grad_names = list(dict.fromkeys(grad_at))
    save_only = [nm for nm in dict.fromkeys(save) if nm not in grad_names]
    for sl in progress_iter(batches(n_configs * n, batch_size), progress, desc):
        c, e = grid_c[sl], grid_e[sl]
        first = int(starts[c].min())
        saved: dict[str, Tensor] = {}
        leaves: dict[str, Tensor] = {}
        hs: list[Hook] = list(hooks(c, e)) if hooks is not None else []
        hs += [(nm, saver(saved, nm)) for nm in save_only]
        hs += [(nm, _grad_hook(saved if nm in save else None, leaves, nm)) for nm in grad_names]
        with torch.enable_grad():
            if runner is None:
                with hooked(model, hs):
                    logits = model(tokens[e].to(dev))
                if output == "last":
                    logits = logits[:, -1:]
            else:
                x = model(tokens[e].to(dev), stop_at_layer=0).detach() if first == 0 else base[first][e.to(dev)]
                logits, _ = runner.run([(first, x)], hooks=hs, output=output)
                assert logits is not None
            y = torch.as_tensor(metric(logits, e))
            if y.shape != (len(e),):
                raise ValueError(f"metric must return one value per example, shape ({len(e)},), got {tuple(y.shape)}")
            missing = [nm for nm in grad_names if nm not in leaves and (runner is None or hook_layer(nm, n_layers) >= first)]
            if missing:
                raise RuntimeError(
                    f"{missing[:3]} did not fire: this model has no such hook point in its forward pass"
                )
            fired = [nm for nm in grad_names if nm in leaves]
            grads = torch.autograd.grad(y.sum(), [leaves[nm] for nm in fired], allow_unused=True) if fired else ()
        out: dict[str, Tensor] = {}
        for nm, g in zip(fired, grads):
            if g is None:
                if not allow_unused:
                    raise RuntimeError(f"no gradient reached {nm}: the metric does not depend on that activation")
                g = torch.zeros_like(leaves[nm])
            out[nm] = g
        yield GradBatch(c, e, y.detach(), logits.detach(), saved, out)
        del leaves, grads, out, saved
