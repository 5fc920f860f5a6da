"""Reading the residual stream in the output vocabulary: logit lens and direct logit attribution.

**The logit lens** (nostalgebraist 2020). The residual stream after every block lives in the
same space as the final residual, so it can be decoded the way the model decodes the final
one: apply the final norm (``ln_final``, with the norm's scale computed on that residual, as
the model would) and the unembedding. :func:`logit_lens` reads the answer logit difference
(correct minus incorrect) this way after every layer and at every position: where along the
depth the answer becomes readable, and where in the prompt. After the last layer it is the
model's own logit difference. :func:`top_tokens` lists the tokens the lens reads.

**Direct logit attribution** (Elhage et al. 2021; Wang et al. 2022). The final residual at
the last position is a sum of what every component wrote into it: the token (and position)
embeddings, every attention head (its output ``z @ W_O``), the attention output biases and
every MLP. The final norm is linear once its scale is fixed, so with the scale *taken from
the run* each component's contribution to the logit difference is
``norm(component) . (W_U[:, correct] - W_U[:, incorrect])``, where ``norm`` subtracts the mean
over ``d_model`` (LayerNorm only), divides by the run's final-norm scale and multiplies by the
norm's weight (TransformerLens's ``ActivationCache.apply_ln_to_stack`` / ``logit_attrs``
semantics). The contributions, plus the constant from the norm's and the unembedding's
biases, sum *exactly* to the logit difference of the run. A component's direct effect is
only part of its total effect: its output also changes later components (see activation
patching and ablation for total effects).

They return a :class:`LogitLensResult` and a :class:`DLAResult`: the result core
(:class:`~mechlens.results.Measurement`, ``metric="logit_diff"``, per-example values, so
``.values``, ``.stderr()``, ``.plot()``, ``.to_dataframe()`` and ``save`` / ``load`` work as
for every sweep) with fields named for what each holds.

Example::

    from mechlens.models import load_model
    from mechlens.data import ioi
    from mechlens.lens import logit_lens, direct_logit_attribution

    model = load_model("smollm2-135m")
    ds = ioi(model, n_prompts=32)
    logit_lens(model, ds).plot()                            # (layer, pos) heatmap
    logit_lens(model, ds, positions="END").plot()           # one curve over layers
    direct_logit_attribution(model, ds, group="heads").top(5)   # name movers
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.engine import cache_iter, cached_run, prepare_dataset
from mechlens.engine.sites import resolve_layers, resolve_positions
from mechlens.model_protocol import check_model
from mechlens.results import Measurement, provenance
from mechlens.validate import check_batch_size

__all__ = [
    "LogitLensResult", "DLAResult", "logit_lens", "top_tokens", "direct_logit_attribution", "answer_direction",
    "final_norm_params",
]

GROUPS = ("components", "heads", "layers")


@dataclass(kw_only=True, repr=False)
class LogitLensResult(Measurement):
    """What :func:`logit_lens` reads: the logit difference per layer (and position) and example.

    ``site`` is the residual stream read (``"resid_post"``: after each block), ``positions``
    describes the positions asked for, ``n_layers`` the model's depth, ``baselines["clean"]``
    the model's own logit difference per example.
    """

    LEGACY = ("PatchResult", "logit_lens", {"positions": "meta.positions", "n_layers": "meta.n_layers"})

    site: str = "resid_post"
    positions: str = ""
    n_layers: int = 0
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)

    def _title(self) -> str:
        return f"logit lens ({self.site}) on {self.dataset or 'dataset'}"

    def _summary_lines(self) -> list[str]:
        return [f"logit lens after each of {len(self.labels['layer'])} layers ({self.site})",
                *super()._summary_lines()]


@dataclass(kw_only=True, repr=False)
class DLAResult(Measurement):
    """What :func:`direct_logit_attribution` measures: each component's direct contribution to
    the logit difference at ``position`` (``"END"``), per example.

    ``group`` is how components were grouped (axes ``("component",)``, ``("layer", "head")``
    or ``("layer", "sublayer")``), ``final_norm`` the final norm's kind (``"LN"`` or
    ``"RMS"``), ``n_layers`` the model's depth, ``baselines["clean"]`` the run's logit
    difference per example (with ``group="components"`` and every layer, the components sum
    to it exactly).
    """

    LEGACY = ("PatchResult", "dla", {"group": "meta.group", "final_norm": "meta.final_norm",
                                     "n_layers": "meta.n_layers", "position": "site"})

    group: str = "components"
    position: str = "END"
    final_norm: str = ""
    n_layers: int = 0
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)

    def _title(self) -> str:
        return f"direct logit attribution ({self.group}, {self.position}) on {self.dataset or 'dataset'}"

    def _summary_lines(self) -> list[str]:
        return [f"direct logit attribution of {self.group} at {self.position}", *super()._summary_lines()]


def answer_direction(model: Any, answers: Tensor) -> tuple[Tensor, Tensor]:
    """Per example, the unembedding direction of the logit difference and its bias term.

    ``answers`` ``[batch, n_pairs, 2]`` -> (``[batch, d_model]`` = mean over pairs of
    ``W_U[:, correct]`` minus mean of ``W_U[:, incorrect]``, ``[batch]`` the same for ``b_U``).
    """
    w_u = model.W_U
    dirs = w_u[:, answers[..., 0]].mean(-1) - w_u[:, answers[..., 1]].mean(-1)  # [d, batch]
    b_u = getattr(model, "b_U", None)
    if b_u is None:
        bias = torch.zeros(answers.shape[0], device=w_u.device, dtype=w_u.dtype)
    else:
        bias = b_u[answers[..., 0]].mean(-1) - b_u[answers[..., 1]].mean(-1)
    return dirs.T, bias


def final_norm_params(model: Any) -> tuple[bool, Tensor | None, Tensor | None]:
    """The final norm as (subtracts the mean?, weight or None, bias or None)."""
    kind = str(getattr(model.cfg, "normalization_type", "LN") or "")
    centre = kind.upper().startswith("LN")
    ln = model.ln_final
    w = getattr(ln, "w", None)
    b = getattr(ln, "b", None)
    return centre, (w if isinstance(w, Tensor) else None), (b if isinstance(b, Tensor) else None)


def _single_positions(model: Any, ds: Any, positions: Any) -> Any:
    if isinstance(positions, str) and positions.lower() == "all":
        raise ValueError("positions='all' has no meaning for the logit lens: give None (every position), "
                         "an index, a position name such as 'END', or a list of them")
    pos = resolve_positions(model, ds, positions)
    if not bool((pos.masks.sum(-1) == 1).all()):
        raise ValueError(f"positions={positions!r}: each entry must be one position per example "
                         "(a name such as 'END' or an index), not a mask of several")
    return pos


@torch.no_grad()
def logit_lens(
    model: Any,
    ds: Any,
    *,
    positions: None | str | int | Sequence[int | str] = None,
    layers: int | Iterable[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> LogitLensResult:
    """The answer logit difference read from the residual stream after each layer.

    The residual after block ``L`` (``blocks.L.hook_resid_post``) of the *clean* prompts is
    passed through the model's final norm and unembedding; the result is the logit
    difference ``correct - incorrect`` (``ds.answers``, averaged over pairs) at each position.

    Args:
        model: a TransformerLens model.
        ds: a :class:`~mechlens.data.ContrastDataset` (only the clean prompts are run).
        positions: ``None`` every position (a ``"pos"`` axis), an index or a position name
            (``"END"``; no ``"pos"`` axis), or a list of them (a ``"pos"`` axis).
        layers: the layers to read after (default all).
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show a progress bar over batches.

    Returns:
        A :class:`LogitLensResult` with axes ``("layer", "pos")`` or ``("layer",)``,
        ``metric="logit_diff"``; ``baselines["clean"]`` is the model's own logit difference,
        equal to the lens after the last layer at ``"END"``.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    check_batch_size(batch_size)
    ds = prepare_dataset(model, ds)
    layer_list = resolve_layers(model, layers)
    pos = _single_positions(model, ds, positions)
    idx = pos.masks.float().argmax(-1)  # [entry, batch]
    names = [f"blocks.{layer}.hook_resid_post" for layer in layer_list]
    out = torch.empty(len(layer_list), len(pos.masks), ds.batch)
    real = torch.empty(ds.batch)
    for sl, logits, cache in cache_iter(model, ds.clean_tokens, names, batch_size=batch_size, progress=progress,
                                        desc="logit lens"):
        d, bias = answer_direction(model, ds.answers[sl])
        from mechlens.metrics import logit_diff

        real[sl] = logit_diff(logits, ds.answers[sl]).float().cpu()
        rows = torch.arange(sl.stop - sl.start, device=d.device)
        for i, name in enumerate(names):
            resid = cache[name]  # [b, pos, d]
            picked = resid[rows[None, :], idx[:, sl]]  # [entry, b, d]
            normed = model.ln_final(picked)
            ld = (normed * d[None]).sum(-1) + bias[None]
            out[i, :, sl] = ld.float().cpu()
        del cache, logits  # before the next pass: a batch's logits are [b, pos, vocab]
    per_example = out if pos.has_axis else out[:, 0]
    axes = ("layer", "pos") if pos.has_axis else ("layer",)
    labels: dict[str, list] = {"layer": layer_list}
    if pos.has_axis:
        labels["pos"] = pos.labels
    return LogitLensResult(
        per_example=per_example.contiguous(), axes=axes, labels=labels, metric="logit_diff",
        positions=pos.description, n_layers=int(model.cfg.n_layers), baselines={"clean": real},
        **provenance(model, ds, args=args),
    )


@torch.no_grad()
def top_tokens(
    model: Any,
    ds: Any,
    *,
    layers: int | Iterable[int] | None = None,
    position: int | str = "END",
    example: int = 0,
    k: int = 5,
) -> pd.DataFrame:
    """The ``k`` tokens the logit lens reads after each layer, for one clean prompt.

    Returns a DataFrame with columns ``layer``, ``rank``, ``token``, ``logit``, ``prob``.
    """
    check_model(model)
    ds = prepare_dataset(model, ds)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int")
    if isinstance(example, bool) or not isinstance(example, int) or not -ds.batch <= example < ds.batch:
        raise ValueError(f"example={example!r} is out of range: the dataset has examples 0..{ds.batch - 1}")
    if isinstance(position, (list, tuple)) or position is None:
        raise ValueError(f"position={position!r} must be one index or one position name")
    layer_list = resolve_layers(model, layers)
    sub = ds[example % ds.batch]
    p = int(_single_positions(model, sub, position).masks[0, 0].float().argmax())
    names = [f"blocks.{layer}.hook_resid_post" for layer in layer_list]
    cache = cached_run(model, sub.clean_tokens, names)[1]
    rows = []
    for layer, name in zip(layer_list, names):
        logits = model.unembed(model.ln_final(cache[name][:, p : p + 1]))[0, 0].float()
        probs = logits.softmax(-1)
        top = logits.topk(k)
        for r, (v, t) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            rows.append({"layer": layer, "rank": r, "token": model.to_string([t]), "logit": v,
                         "prob": float(probs[t])})
    return pd.DataFrame(rows)


def _attn_bias(attn: Any) -> Tensor | None:
    b = getattr(attn, "b_O", None)
    return b if isinstance(b, Tensor) else None


@torch.no_grad()
def direct_logit_attribution(
    model: Any,
    ds: Any,
    *,
    group: str = "components",
    layers: int | Iterable[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> DLAResult:
    """The direct contribution of each component to the logit difference at the final position.

    Each component's output at the final position is normed with the run's own final-norm
    scale (frozen: centred for LayerNorm, divided by the scale, times the norm's weight) and
    projected on the logit-difference direction ``W_U[:, correct] - W_U[:, incorrect]``.

    Args:
        model: a TransformerLens model.
        ds: a :class:`~mechlens.data.ContrastDataset` (the clean prompts are run).
        group: ``"components"`` (default): one ``"component"`` axis with ``embed``,
            ``pos_embed`` (absolute position embeddings only), per layer ``L{l}H{h}`` for
            every head, ``L{l} attn bias`` (where the model has one) and ``L{l} mlp``, and
            ``bias`` (the final norm's and the unembedding's bias terms); these sum exactly
            to the run's logit difference. ``"heads"``: axes ``("layer", "head")``, heads
            only. ``"layers"``: axes ``("layer", "sublayer")`` with ``attn`` (all heads and
            the bias) and ``mlp``.
        layers: layers to report (default all; ``"components"`` then omits the others, so the
            sum is exact only with every layer).
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show a progress bar over batches.

    Returns:
        A :class:`DLAResult` with ``metric="logit_diff"``; ``baselines["clean"]`` is the
        run's logit difference.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    check_batch_size(batch_size)
    if group not in GROUPS:
        raise ValueError(f"group={group!r}: choose one of {list(GROUPS)}")
    ds = prepare_dataset(model, ds)
    layer_list = resolve_layers(model, layers)
    n_heads = int(model.cfg.n_heads)
    centre, w, b = final_norm_params(model)
    has_pos = "hook_pos_embed" in model.hook_dict
    names = {"ln_final.hook_scale", "blocks.0.hook_resid_pre"} | ({"hook_pos_embed"} if has_pos else set())
    for layer in layer_list:
        names |= {f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"}

    comp_labels: list[str] = []
    chunks: list[list[Tensor]] = []
    real = torch.empty(ds.batch)
    for sl, logits, cache in cache_iter(model, ds.clean_tokens, names, batch_size=batch_size, progress=progress,
                                        desc="direct logit attribution"):
        from mechlens.metrics import logit_diff

        real[sl] = logit_diff(logits, ds.answers[sl]).float().cpu()
        end = ds.positions["END"][sl]
        rows = torch.arange(end.shape[0], device=end.device)
        d, u_bias = answer_direction(model, ds.answers[sl])  # [b, d], [b]
        dw = d * w if w is not None else d
        scale = cache["ln_final.hook_scale"][rows, end]  # [b, 1]

        def proj(x: Tensor, scale: Tensor = scale, dw: Tensor = dw) -> Tensor:  # [..., b, d] -> [..., b]
            if centre:
                x = x - x.mean(-1, keepdim=True)
            return ((x / scale) * dw).sum(-1)

        labels, parts = [], []
        fired = getattr(cache, "cache_dict", cache)
        pos_emb = fired["hook_pos_embed"][rows, end] if has_pos and "hook_pos_embed" in fired else None
        if pos_emb is not None and pos_emb.shape[-1] != d.shape[-1]:
            pos_emb = None
        embed = cache["blocks.0.hook_resid_pre"][rows, end]
        if pos_emb is not None:
            embed = embed - pos_emb
        labels.append("embed")
        parts.append(proj(embed)[None])
        if pos_emb is not None:
            labels.append("pos_embed")
            parts.append(proj(pos_emb)[None])
        for layer in layer_list:
            attn = model.blocks[layer].attn
            z = cache[f"blocks.{layer}.attn.hook_z"][rows, end]  # [b, h, d_head]
            heads = torch.einsum("bhe,hem->hbm", z, attn.W_O.to(z.dtype))
            labels += [f"L{layer}H{h}" for h in range(n_heads)]
            parts.append(proj(heads))
            bo = _attn_bias(attn)
            if bo is not None:
                labels.append(f"L{layer} attn bias")
                parts.append(proj(bo.expand_as(embed))[None])
            labels.append(f"L{layer} mlp")
            parts.append(proj(cache[f"blocks.{layer}.hook_mlp_out"][rows, end])[None])
        const = u_bias + ((d * b).sum(-1) if b is not None else 0)
        labels.append("bias")
        parts.append(const[None])
        comp_labels = labels
        chunks.append(torch.cat(parts).float().cpu())
        del cache, logits  # before the next pass: a batch's logits are [b, pos, vocab]
    comps = torch.cat(chunks, dim=1)  # [component, batch]
    idx = {lab: i for i, lab in enumerate(comp_labels)}
    if group == "components":
        per_example, axes, labels_out = comps, ("component",), {"component": comp_labels}
    elif group == "heads":
        per_example = torch.stack(
            [comps[[idx[f"L{layer}H{h}"] for h in range(n_heads)]] for layer in layer_list]
        )
        axes, labels_out = ("layer", "head"), {"layer": layer_list, "head": list(range(n_heads))}
    else:
        rows_out = []
        for layer in layer_list:
            attn_rows = [idx[f"L{layer}H{h}"] for h in range(n_heads)]
            if f"L{layer} attn bias" in idx:
                attn_rows.append(idx[f"L{layer} attn bias"])
            rows_out.append(torch.stack([comps[attn_rows].sum(0), comps[idx[f"L{layer} mlp"]]]))
        per_example = torch.stack(rows_out)
        axes, labels_out = ("layer", "sublayer"), {"layer": layer_list, "sublayer": ["attn", "mlp"]}
    return DLAResult(
        per_example=per_example.contiguous(), axes=axes, labels=labels_out, metric="logit_diff", group=group,
        final_norm="LN" if centre else "RMS", n_layers=int(model.cfg.n_layers), baselines={"clean": real},
        **provenance(model, ds, args=args),
    )
