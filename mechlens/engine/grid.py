"""Grids of hook interventions, and the one batched caching run.

Interventions that are not patches from another run (moving along a direction, adding a
vector, ablating with a computed value) are hooks built per forward pass: :func:`run_grid`
runs any number of configurations of them over a dataset, stacked on the batch axis, and
returns the metric per configuration and example. :func:`cache_batched` caches only the
activations asked for, ``batch_size`` sequences at a time; :func:`padded_iter` runs sequences
of different lengths in right-padded batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from mechlens.engine.backend import resolve_backend
from mechlens.engine.batching import batches, pad_id, padded_batches, progress_iter
from mechlens.engine.fast import fast_runner_or_none, prefix_kv
from mechlens.engine.hooks import Hook, cached_run, first_block, first_true, hook_layer
from mechlens.hooks import hooked
from mechlens.metrics import logit_diff
from mechlens.models import model_device

__all__ = ["logit_diff_metric", "run_grid", "first_changed_position", "cache_iter", "cache_batched", "padded_iter"]


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
    backend: str = "hooks",
    output: str = "all",
    from_position: int = 0,
) -> Tensor:
    """``metric`` of every (configuration, example) run, ``[n_configs, batch]`` (float32, CPU).

    The ``n_configs x batch`` grid is run in forward passes of ``batch_size`` sequences: row
    ``r`` is configuration ``r // batch`` of example ``r % batch``. ``hooks(configs, examples)``
    gets the configuration and example index of each row of one pass and returns the hooks
    that implement the interventions for those rows; ``metric(logits, examples)`` maps the
    pass's logits to one value per row (:func:`logit_diff_metric`). Without ``hooks`` this is
    the plain batched run of the dataset.

    ``backend="fast"`` (TransformerBridge) runs the blocks on their own
    (:func:`~mechlens.engine.fast.block_runner`): a pass whose hooks all act in block ``L`` or
    later runs blocks ``0..L-1`` once per example of the pass (without hooks) and blocks
    ``L..n-1`` for every row, so an intervention late in the model costs only the layers it
    can change. ``output="last"`` hands ``metric`` the final position's logits only (``[rows,
    1, vocab]``; the fast backend then unembeds only that position). Both backends give the
    same numbers (to float rounding: the fast backend batches the rows differently).

    ``from_position``: the hooks change nothing before this position (they patch only from
    it on, or with values equal to the run's own there). With ``output="last"`` the fast
    backend then runs the hooked blocks on positions ``from_position..`` only, the earlier
    positions' keys and values taken from the unhooked run (attention is causal), and a
    hook inside those blocks sees only those positions: hooks on ``[batch, pos, ...]``
    activations index their position tensors from the end (``x[:, -act.shape[1]:]``), which
    is right on either backend (on attention patterns only the query axis is shortened).
    """
    if output not in ("all", "last"):
        raise ValueError(f"output={output!r}: choose 'all' or 'last'")
    if not isinstance(from_position, int) or not 0 <= from_position < tokens.shape[1]:
        raise ValueError(f"from_position={from_position!r} must be a position of the prompts (0..{tokens.shape[1] - 1})")
    asked, backend = backend, resolve_backend(model, backend)
    n = tokens.shape[0]
    grid_c = torch.arange(n_configs).repeat_interleave(n)
    grid_e = torch.arange(n).repeat(n_configs)
    out = torch.empty(n_configs * n)
    dev = model_device(model)
    runner = fast_runner_or_none(model, tokens.to(dev), asked) if backend == "fast" else None
    prefix_state: dict[Any, Any] = {}
    for sl in progress_iter(batches(n_configs * n, batch_size), progress, desc):
        c, e = grid_c[sl], grid_e[sl]
        hs = list(hooks(c, e)) if hooks is not None else []
        if runner is not None:
            n_layers = int(model.cfg.n_layers)
            start = first_block([name for name, _ in hs], n_layers)
            on_embed = [h for h in hs if hook_layer(h[0], n_layers) < 0]
            ex, rows = torch.unique(e, return_inverse=True)
            prefix = None
            if from_position and output == "last" and not on_embed:
                # the examples' keys and values before from_position, and their residual entering
                # block `start` from it, unhooked: kept while the next passes have the same examples
                if prefix_state.get("examples") != ex.tolist():
                    prefix_state.clear()
                    prefix_state["examples"] = ex.tolist()
                    prefix_state["runner"] = prefix_kv(model, tokens[ex].to(dev), from_position)
                    prefix_state["emb"] = model(tokens[ex].to(dev), stop_at_layer=0)[:, from_position:]
                prefix = prefix_state["runner"]
            if prefix is not None:
                if prefix_state.get("start") != start:
                    _, captured = prefix.run([(0, prefix_state["emb"])], output="none", capture=[start], stop=start,
                                             offset=from_position)
                    prefix_state["start"], prefix_state["x"] = start, captured[start]
                logits, _ = prefix.rows(rows).run([(start, prefix_state["x"][rows.to(dev)])], hooks=hs,
                                                  output=output, offset=from_position)
            elif start == 0:
                with hooked(model, on_embed):
                    x = model(tokens[e].to(dev), stop_at_layer=0)
                logits, _ = runner.run([(start, x)], hooks=hs, output=output)
            else:  # the unhooked prefix, once per example of this pass
                x = runner.residuals(tokens[ex].to(dev), [start])[start][rows.to(dev)]
                logits, _ = runner.run([(start, x)], hooks=hs, output=output)
            assert logits is not None
        else:
            with hooked(model, hs):
                logits = model(tokens[e].to(dev))
            if output == "last":
                logits = logits[:, -1:]
        out[sl] = metric(logits, e).detach().float().cpu()
    return out.view(n_configs, n)


def first_changed_position(
    clean_tokens: Tensor, corrupt_tokens: Tensor, mask: Bool[Tensor, "batch pos"] | Bool[Tensor, " pos"]
) -> int:
    """The first position a patch from one run of a clean/corrupt pair into the other can
    change: the first position of ``mask`` (where it patches, for any example) from the
    first token where the prompts differ on. Before that token both runs' activations are
    equal (attention is causal), so a patch there puts in the value already there. The
    last position when nothing can change. For :func:`run_grid`'s ``from_position``."""
    differs = (clean_tokens != corrupt_tokens).any(0).cpu()
    m = mask.cpu() if mask.ndim == 1 else mask.cpu().any(0)
    first = int(first_true(differs.cummax(0).values & m, 0))
    return first if first >= 0 else int(clean_tokens.shape[1]) - 1


def cache_iter(
    model: Any,
    tokens: Tensor,
    names: Sequence[str],
    *,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "caching",
    stop_at_layer: int | None = None,
) -> Iterator[tuple[slice, Tensor | None, dict[str, Tensor]]]:
    """The engine's caching mode: ``(rows, logits, activations at names)`` for each pass of
    ``batch_size`` sequences, so a method can reduce each batch at once instead of holding
    the activations of the whole dataset. ``logits`` is ``None`` with ``stop_at_layer``."""
    dev = model_device(model)
    for sl in progress_iter(batches(len(tokens), batch_size), progress, desc):
        out, cache = cached_run(model, tokens[sl].to(dev), names, stop_at_layer=stop_at_layer)
        yield sl, out, cache
        del cache, out


def padded_iter(
    model: Any,
    seqs: Sequence[Tensor],
    names: Sequence[str] = (),
    *,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "running",
    stop_at_layer: int | None = None,
) -> Iterator[tuple[list[int], Tensor, Tensor | None, dict[str, Tensor]]]:
    """The engine's run of sequences of different lengths, right-padded ``batch_size`` at a
    time (:func:`~mechlens.engine.batching.padded_batches`, shortest first): ``(indices, last,
    logits, activations at names)`` per pass, ``last`` the position of each row's last real
    token. ``logits`` is ``None`` with ``stop_at_layer``."""
    dev = model_device(model)
    passes = list(padded_batches(seqs, batch_size, pad_id(model)))
    for idx, toks, last in progress_iter(passes, progress, desc):
        out, cache = cached_run(model, toks.to(dev), names, stop_at_layer=stop_at_layer)
        yield idx, last, out, cache
        del cache, out


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
    stop = stop_at_layer if answers is None else None
    for sl, out, cache in cache_iter(model, tokens, names, batch_size=batch_size, stop_at_layer=stop):
        for n in names:
            acts[n].append(cache[n])
        if answers is not None:
            assert out is not None
            lds.append(logit_diff(out, answers[sl].to(out.device)).detach().float().cpu())
        del out, cache  # before the next pass: a batch's logits are [b, pos, vocab]
    return {n: torch.cat(v) for n, v in acts.items()}, (torch.cat(lds) if lds else None)
