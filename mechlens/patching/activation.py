"""Exact activation patching, batched, skipping the layers a patch cannot change.

**The method.** Run the model on a *corrupt* prompt ("... was terrible ...") where it gives
the wrong answer, and replace (patch) one activation with its value from the *clean* run
("... was great ..."). If the answer comes back, that activation carries what the clean
prompt adds. Sweeping the patch over layers, positions and heads localises the
computation (Meng et al. 2022; Wang et al. 2022; Tigges et al. 2023 for sentiment).
``mode="noise"`` does the reverse: run clean, patch in corrupt activations, and see what
breaks the answer.

**How to read the result.** With the default metric, ``fraction_recovered``, a cell's value
is ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)``: 0 = patch did nothing, 1 = clean
behaviour fully restored (not clipped). ``result.per_example`` keeps one value per
prompt, so every cell has a standard error and a bootstrap interval.

**Why it is fast.** A patch at layer ``L`` cannot change anything before ``L``, so each
patched run starts from the residual stream cached at layer ``L`` and runs only blocks
``L..n-1`` (then the final norm and, at the last position only, the unembedding). Many
patch configurations (positions, heads, layers) share one forward pass, stacked on the
batch axis; a configuration's rows join the pass at its own layer. The numbers equal
``transformer_lens.patching`` on the same model (tested to 1e-4).

Example::

    from mechlens.models import load_model
    from mechlens.data import toy_movie_review
    from mechlens.patching import activation_patch

    model = load_model("smollm2-135m")
    ds = toy_movie_review(model, "train")
    res = activation_patch(model, ds, "resid_pre")           # (layer, pos) grid
    res.plot(ci=True)
    heads = activation_patch(model, ds, "z", positions="all")  # (layer, head) grid
    heads.top(5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.engine import (
    Patch,
    PatchMetric,
    base_run,
    cached_run,
    check_mode,
    copies_per_pass,
    first_true,
    overhead_tokens,
    patch_mask,
    patch_rows,
    plan_passes,
    prepare_dataset,
    progress_iter,
    resolve_backend,
    run_with_patches,
)
from mechlens.engine.sites import (
    Site,
    get_site,
    resolve_heads,
    resolve_layers,
    resolve_positions,
    sweep_axes,
)
from mechlens.model_protocol import check_model
from mechlens.patching.result import PatchResult
from mechlens.results import provenance

__all__ = ["activation_patch", "patch_mask", "patch_rows"]


def activation_patch(
    model: Any,
    ds: Any,
    site: str | Site,
    *,
    metric: str | Callable[..., Tensor] = "fraction_recovered",
    mode: str = "denoise",
    layers: int | Iterable[int] | None = None,
    positions: None | str | int | Sequence[int | str] = None,
    heads: int | Iterable[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> PatchResult:
    """Patch one site at every (layer, position[, head]) and measure the metric.

    Args:
        model: a TransformerLens bridge (``mechlens.models.load_model``).
        ds: a :class:`~mechlens.data.ContrastDataset`.
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``, ``"mlp_out"``,
            or per head ``"z"``, ``"q"``, ``"k"``, ``"v"``, ``"pattern"`` (see
            :mod:`mechlens.engine.sites`).
        metric: ``"fraction_recovered"`` (default), ``"logit_diff"``, or ``metric(logits, ds)
            -> [batch]`` called on the logits ``[batch, pos, vocab]`` of each patched copy.
        mode: ``"denoise"`` (run corrupt, patch in clean) or ``"noise"`` (run clean, patch
            in corrupt).
        layers: layers to sweep (default all).
        positions: ``None`` each position separately, ``"all"`` all at once, an index or a
            position name (``"ADJ"``), or a list of them (see :mod:`mechlens.engine.sites`).
        heads: head sites only: heads to sweep (default all; ``k``/``v`` count key/value heads).
        batch_size: sequences per forward pass (default 128; a pass holds ``batch_size //
            len(ds)`` patch configurations).
        progress: show a progress bar.
        backend: ``"fast"`` (TransformerBridge: run only the layers and positions a patch
            can change), ``"hooks"`` (full ``run_with_hooks`` passes; any TransformerLens
            model, ``HookedTransformer`` included) or ``"auto"`` (fast where it applies; see
            :mod:`mechlens.engine`). Both give the same numbers.

    Returns:
        A :class:`PatchResult` with axes ``("layer", "pos"[, "head"])``, or without ``"pos"``
        when ``positions`` is ``"all"``, an int or a name.

    Note ``resid_mid`` is patched as the residual stream itself (the MLP *and* the skip
    connection see the patched value). TransformerLens' ``get_act_patch_resid_mid`` on a
    ``TransformerBridge`` hooks the MLP-norm input only, so its numbers differ.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    s = get_site(model, site)
    check_mode(mode)
    ds = prepare_dataset(model, ds)
    layer_list = resolve_layers(model, layers)
    head_list = resolve_heads(model, s, heads)
    pos = resolve_positions(model, ds, positions)
    n = model.cfg.n_layers
    # The base run holds the clean and the corrupt prompts together: a dataset larger than
    # half a pass runs in chunks of examples, each normalised by the whole dataset's means,
    # so no pass holds more than batch_size sequences and the numbers are the same.
    parts, means = PatchMetric.example_parts(model, ds, metric, batch_size)
    outs, bases = [], []
    for part in progress_iter(parts, progress and len(parts) > 1, f"patching {s.name}, examples"):
        sub = ds if len(parts) == 1 else ds[list(part)]
        sub_pos = pos if len(parts) == 1 else dataclasses.replace(pos, masks=pos.masks[:, part.start : part.stop])
        out, pm = _patch_part(model, sub, s, metric, mode, layer_list, head_list, sub_pos, batch_size,
                              progress and len(parts) == 1, backend, means)
        outs.append(out)
        bases.append(pm.baselines)
    per_example = torch.cat(outs, dim=1)
    b = ds.batch
    axes, labels, shape = sweep_axes(layer_list, pos, head_list, s.per_head)
    return PatchResult(
        per_example=per_example.view(*shape, b),
        axes=axes,
        labels=labels,
        metric=pm.name,
        site=s.name,
        mode=mode,
        method="activation",
        **provenance(model, ds, args=args),
        baselines={k: torch.cat([bl[k].float().cpu() for bl in bases]) for k in bases[0]},
        meta={"positions": pos.description if not pos.has_axis else "per entry", "n_layers": n},
    )


def _patch_part(
    model: Any, ds: Any, s: Site, metric: Any, mode: str, layer_list: list[int], head_list: list[int], pos: Any,
    batch_size: int | None, progress: bool, backend: str, means: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, PatchMetric]:
    """Every configuration on the examples of ``ds`` (one chunk of the dataset, or all of it):
    ``([n_configs, batch], the metric)``."""
    b = ds.batch
    k_max = copies_per_pass(batch_size, b)

    # Hook names: what the source run provides, what the base (patched) run starts from.
    src_names = {s.hook_name(layer) for layer in layer_list}
    if s.name == "resid_post":
        start_names = {s.hook_name(layer) for layer in layer_list}
    else:
        start_names = {f"blocks.{layer}.hook_resid_pre" for layer in layer_list}
    tokens = torch.cat([ds.clean_tokens, ds.corrupt_tokens])
    run = None
    if resolve_backend(model, backend) == "fast":
        try:
            run = base_run(model, tokens, src_names | start_names)
        except NotImplementedError:
            if backend != "auto":
                raise
            # "auto": the blocks cannot run on their own here; the hooks backend gives the same numbers
    if run is not None:
        logits, cache = run.logits, run.cache
    else:
        logits, cache = cached_run(model, tokens, src_names | start_names)
    clean = {k: v[:b] for k, v in cache.items()}
    corrupt = {k: v[b:] for k, v in cache.items()}
    base, source = (corrupt, clean) if mode == "denoise" else (clean, corrupt)
    pm = PatchMetric(metric, ds, logits[:b], logits[b:], means=means)

    # One configuration per cell, in (layer, pos, head) order: the order of the result.
    n_heads = s.n_heads(model)
    head_onehot = torch.eye(max(n_heads, 1), dtype=torch.bool, device=ds.device)
    configs = [
        (layer, p, h)
        for layer in layer_list
        for p in range(len(pos.masks))
        for h in (head_list if s.per_head else [None])
    ]
    # A configuration whose source values equal the base values (e.g. positions before the
    # first token where clean and corrupt differ: attention is causal) changes nothing:
    # its result is the base run's, exactly, and it needs no forward pass.
    first = _first_changes(s, configs, layer_list, pos.masks, base, source)
    per_example = torch.empty(len(configs), b)
    base_metric = pm(_base_logits(pm, mode)).detach().float().cpu()
    per_example[[f is None for f in first]] = base_metric
    todo = [i for i in range(len(configs)) if first[i] is not None]
    if run is None:
        patches = [_patches(s, configs[i], pos.masks, head_onehot, base, source) for i in todo]
        base_tokens = ds.corrupt_tokens if mode == "denoise" else ds.clean_tokens
        per_example[todo] = run_with_patches(
            model, base_tokens, patches, pm, configs_per_pass=k_max, progress=progress, desc=f"patching {s.name}"
        )
    else:
        _run_fast(model, run, s, pm, mode, ds, configs, todo, first, pos, head_onehot, base, source, k_max,
                  progress, per_example)
    return per_example, pm


def _patches(
    s: Site, config: tuple, masks: Tensor, head_onehot: Tensor, base: dict[str, Tensor], source: dict[str, Tensor]
) -> list[Patch]:
    """The hooks backend's patch for one (layer, position entry, head) configuration."""
    layer, p, h = config
    mask = patch_mask(masks[[p]], head_onehot[[h]] if s.per_head else None, s.layout)[0]
    if s.name == "resid_mid":
        # as in the fast path: attn_out := source resid_mid - resid_pre patches the residual itself
        pre = f"blocks.{layer}.hook_resid_pre"
        return [Patch(f"blocks.{layer}.hook_attn_out", mask, source[s.hook_name(layer)] - base[pre])]
    return [Patch(s.hook_name(layer), mask, source[s.hook_name(layer)])]


def _run_fast(
    model: Any, run: Any, s: Site, pm: PatchMetric, mode: str, ds: Any, configs: list[tuple], todo: list[int],
    first_changes: list[int | None], pos: Any, head_onehot: Tensor, base: dict[str, Tensor],
    source: dict[str, Tensor], k_max: int, progress: bool, per_example: Tensor,
) -> None:
    """The fast backend: fills ``per_example[todo]`` running only the blocks and positions
    each configuration can change, many configurations per pass."""
    b, n = ds.batch, model.cfg.n_layers
    runner = run.runner(model, slice(b, None) if mode == "denoise" else slice(0, b))
    # Positions before a configuration's first changed position are unchanged too, so a pass
    # can start there, with the base run's keys and values for the earlier positions.
    first = {i: first_changes[i] if runner.can_skip_positions else 0 for i in todo}
    shift = 1 if s.name == "resid_post" else 0
    plan = plan_passes(
        [first[i] for i in todo],
        [configs[i][0] + shift for i in todo],
        n_layers=n, seq_len=ds.seq_len, batch=b, max_configs=k_max, overhead_tokens=overhead_tokens(model),
    )

    with torch.no_grad():
        for chunk in progress_iter(plan, progress, f"patching {s.name}"):
            ids = sorted((todo[i] for i in chunk), key=lambda i: (configs[i][0], i))  # rows join by layer
            off = min(first[i] for i in ids)
            joins: list[tuple[int, Tensor]] = []
            hooks = []
            offset = 0
            for layer in sorted({configs[i][0] for i in ids}):
                group = [configs[i] for i in ids if configs[i][0] == layer]
                k = len(group)
                pmask = pos.masks[[c[1] for c in group]][:, :, off:]
                hmask = head_onehot[[c[2] for c in group]] if s.per_head else None
                mask = patch_mask(pmask, hmask, s.layout)
                if s.name in ("resid_pre", "resid_post"):
                    name = s.hook_name(layer)
                    start = layer if s.name == "resid_pre" else layer + 1
                    b_act = base[name][:, off:]
                    rows = patch_rows(b_act.repeat(k, 1, 1), 0, k, b, mask, source[name][:, off:])
                    joins.append((start, rows))
                else:
                    pre = f"blocks.{layer}.hook_resid_pre"
                    joins.append((layer, base[pre][:, off:].repeat(k, 1, 1)))
                    if s.name == "resid_mid":
                        # Patch the residual itself: attn_out := clean_mid - resid_pre, so both
                        # the MLP and the skip connection see clean resid_mid.
                        hook_name = f"blocks.{layer}.hook_attn_out"
                        src = source[s.hook_name(layer)] - base[pre]
                    else:
                        hook_name, src = s.hook_name(layer), source[s.hook_name(layer)]
                    src = src[:, :, off:] if s.layout == "bhqk" else src[:, off:]
                    hooks.append((hook_name, _make_hook(offset, k, b, mask, src)))
                offset += k * b
            out, _ = runner.run(joins, hooks=hooks, output=pm.output, offset=off)
            assert out is not None
            if pm.output == "all" and off:
                # a custom metric sees full-length logits: earlier positions are the base run's
                out = torch.cat([_base_logits(pm, mode)[:, :off].repeat(len(ids), 1, 1), out], dim=1)
            per_example[ids] = pm(out).detach().float().cpu().view(len(ids), b)


def _first_changes(
    s: Site, configs: list[tuple], layer_list: list[int], masks: Tensor, base: dict[str, Tensor],
    source: dict[str, Tensor],
) -> list[int | None]:
    """Per configuration, the first position where it patches in a value unlike the one
    already there, or ``None`` where it changes nothing."""
    found: dict[int, list] = {}
    for layer in layer_list:
        name = s.hook_name(layer)
        differs = (base[name] != source[name]).any(-1)  # [batch, pos] / [batch, pos, head] / [batch, head, dest]
        if s.layout == "bhqk":
            differs = differs.transpose(1, 2)
        changed = (masks & differs[None]) if s.layout == "bpd" else (masks[..., None] & differs[None])
        changed = changed.any(1)  # [entry, pos] / [entry, pos, head]
        found[layer] = first_true(changed, 1).tolist()  # [entry] / [entry][head]; -1 for none
    out = []
    for layer, p, h in configs:
        f = found[layer][p] if h is None else found[layer][p][h]
        out.append(None if f < 0 else f)
    return out


def _base_logits(pm: PatchMetric, mode: str) -> Tensor:
    return pm.corrupt_logits if mode == "denoise" else pm.clean_logits


def _make_hook(offset: int, k: int, b: int, mask: Tensor, src: Float[Tensor, "batch ..."]) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        return patch_rows(act, offset, k, b, mask, src)

    return hook
