"""Sentiment circuit discovery: which attention heads carry sentiment to the answer, and how.

Following Tigges et al. (2023, the circuit half) and the path-patching method of Wang et al.
(2022), :func:`discover_sentiment_circuit` builds a small circuit of attention heads for a
sentiment contrast dataset (ToyMovieReview: "I thought this movie was perfect, I loved
it. Conclusion: This movie is" -> " great" vs " terrible"):

1. **Direct heads.** Path patching from every head to the final residual stream
   (:func:`mechlens.patching.path_patch`, senders ``"all_heads"``, receiver
   ``"resid_final"``, ``mode="denoise"``): the corrupt prompts run with one head's output
   taken from the clean run and every other head frozen at its corrupt value, so only the
   head's *direct* effect on the logits (through the MLPs above it) counts; the effect is
   the fraction of the logit difference it recovers. Heads are ranked by the size of the
   effect; the ``top_k`` are the circuit's direct heads.
2. **Intermediate movers.** Path patching from every head below them to the query/key/value
   inputs of the direct heads: heads that change *what the direct heads read* (typically by
   moving sentiment into the positions the direct heads attend to). The ``n_movers`` strongest
   heads below the direct heads join the circuit.
3. **Roles.** For every head: where the final position attends (each named position of the
   dataset, ADJ / VRB / COMMA, versus everything else; the first token, an attention sink in
   most models, is reported apart), whether it *writes* the sentiment direction (its output
   ``z @ W_O`` projected on the direction: half the gap between positive and negative
   prompts, with a Welch t-statistic, at each named position; > 0 = it pushes the prompt's
   own sentiment), and whether it *reads* it (its OV circuit applied to the direction:
   ``cos(OV(d), d)``, as a z-score against random directions; positive = it copies
   sentiment, negative = it inverts it). A role sentence flags writes with ``|t| >= 3`` and
   OV scores with ``|z| >= 3``.
4. **Faithfulness.** Run the corrupt prompts and patch in the clean outputs (``hook_z``) of
   only the circuit's heads, only at the given positions (default ``ADJ`` and ``VRB``, the
   paper's choice, plus ``END``, where the direct heads write): the full outputs, and only
   their component along the sentiment direction (each head's ``z @ W_O`` projected on the
   direction, with the difference added to the attention output). Reported as the fraction
   of logit difference recovered and the logit flip, next to the same numbers for
   ``n_random`` random head sets of the same size (mean and standard deviation). A faithful
   circuit recovers far more than random heads.

How to read the :class:`Circuit`: ``heads`` lists the circuit (direct heads first),
``roles`` says in words what each does, ``to_dataframe()`` has every number for every head,
``faithfulness_table()`` the validation, and ``plot()`` draws the circuit graph with the
path-patching heatmaps.

Example::

    from mechlens.models import load_model
    from mechlens.data import toy_movie_review
    from mechlens.circuits import discover_sentiment_circuit

    model = load_model("smollm2-135m")
    circuit = discover_sentiment_circuit(model, toy_movie_review(model, "train"), top_k=5,
                                         faithfulness_ds=toy_movie_review(model, "test"))
    circuit.roles
    circuit.faithfulness_table()
    circuit.plot()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechlens.circuits._util import (
    Head,
    check_dataset,
    check_heads,
    head_label,
    resolve_direction,
    safe_flip,
    unit_vector,
)
from mechlens.data.contrast import ContrastDataset
from mechlens.engine import (
    cache_batched,
    first_changed_position,
    logit_diff_metric,
    progress_bar,
    resolve_backend,
    rows_per_pass,
    run_grid,
)
from mechlens.metrics import fraction_recovered
from mechlens.models import model_device
from mechlens.models import model_name as _model_name
from mechlens.results import PatchSetResult, Result, provenance

__all__ = ["Circuit", "discover_sentiment_circuit", "patch_heads", "head_roles", "ov_direction_scores"]

# A role's "reads"/"writes" flags need this many standard errors / random-direction stds.
ROLE_THRESHOLD = 3.0


# --------------------------------------------------------------------------- head patching


@torch.no_grad()
def patch_heads(
    model: Any,
    ds: ContrastDataset,
    head_sets: Sequence[Sequence[Head]],
    *,
    position: str | Sequence[str] = ("ADJ", "VRB"),
    component: str = "full",
    direction: Any = None,
    progress: bool = False,
    batch_size: int | None = None,
    backend: str = "auto",
) -> PatchSetResult:
    """Run the corrupt prompts with the clean outputs of each set of heads patched in.

    Args:
        head_sets: one list of ``(layer, head)`` per configuration; all run stacked on the
            batch axis.
        position: the (query) positions of the heads patched, together: a name, a list of
            names, or ``"all"`` (:meth:`ContrastDataset.position_mask`).
        component: ``"full"`` replaces the heads' ``hook_z`` by the clean values;
            ``"direction"`` patches only the component of each head's output ``z @ W_O``
            along ``direction`` (added to ``hook_attn_out``, so everything else of the head
            stays corrupt).
        direction: a Direction or ``[d_model]`` vector (needed for ``"direction"``).
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge, where each pass runs
            from the first layer it patches and unembeds only the final position), ``"fast"``
            or ``"hooks"``; the same numbers.

    Returns:
        A :class:`~mechlens.results.PatchSetResult`: ``per_example`` ``[config, batch]`` the
        logit difference with each set patched (labels: the heads, ``"L3H2+L5H1"``),
        ``baselines["clean"]`` / ``["corrupt"]`` the unpatched logit differences.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    if component not in ("full", "direction"):
        raise ValueError(f"component={component!r}: choose 'full' or 'direction'")
    if component == "direction" and direction is None:
        raise ValueError("component='direction' needs direction= (a Direction or a [d_model] vector)")
    check_dataset(ds, model=model, binary=False)
    resolve_backend(model, backend)
    rows = rows_per_pass(batch_size)
    sets = [check_heads(model, s, what=f"head_sets[{i}]") for i, s in enumerate(head_sets)]
    if not sets:
        raise ValueError("head_sets is empty: give at least one set of heads")
    pos_mask = ds.position_mask(position).cpu()
    layers = sorted({layer for s in sets for layer, _ in s})
    runs = _HeadRuns(model, ds, layers, rows, backend)
    d = unit_vector(resolve_direction(model, ds, direction, batch_size=rows)) if component == "direction" else None
    ld = runs.patch(sets, pos_mask, component, d, progress)
    return PatchSetResult(
        per_example=ld, axes=("config",), labels={"config": ["+".join(f"L{a}H{b}" for a, b in s) for s in sets]},
        metric="logit_diff", **provenance(model, ds, args={k: v for k, v in args.items() if k != "direction"}),
        baselines={"clean": runs.ld_clean, "corrupt": runs.ld_corrupt},
        meta={"position": str(position), "component": component},
    )


class _HeadRuns:
    """The clean run's ``hook_z`` at some layers, cached once, and the patched corrupt runs."""

    def __init__(self, model: Any, ds: ContrastDataset, layers: Sequence[int], rows: int, backend: str = "auto"):
        self.model, self.ds, self.rows, self.backend = model, ds, rows, backend
        self.z_names = {layer: f"blocks.{layer}.attn.hook_z" for layer in layers}
        self.clean, self.ld_clean = cache_batched(model, ds.clean_tokens, list(self.z_names.values()), answers=ds.answers, batch_size=rows)
        _, self.ld_corrupt = cache_batched(model, ds.corrupt_tokens, [], answers=ds.answers, batch_size=rows)

    @torch.no_grad()
    def patch(
        self, sets: list[list[Head]], pos_mask: Bool[Tensor, "batch pos"], component: str,
        d: Float[Tensor, " d_model"] | None, progress: bool = False,
    ) -> Float[Tensor, "set batch"]:
        model, clean = self.model, self.clean
        n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
        head_mask = torch.zeros(len(sets), n_l, n_h, dtype=torch.bool)
        for i, s in enumerate(sets):
            for layer, h in s:
                if layer not in self.z_names:
                    raise ValueError(f"layer {layer} was not cached")
                head_mask[i, layer, h] = True
        layers = sorted({layer for s in sets for layer, _ in s})
        u: dict[int, Tensor] = {}
        if component == "direction":
            assert d is not None
            # u[h] = W_O[h] @ d: a head's output projected on d is z . u[h]
            u = {layer: model.blocks[layer].attn.W_O.detach().float().cpu() @ d for layer in layers}

        def make_hooks(c: Tensor, e: Tensor) -> list:
            hooks = []
            pm = pos_mask[e]  # [rows, pos]
            for layer in layers:
                zn = self.z_names[layer]
                hm = head_mask[c, layer]  # [rows, head]
                if not hm.any():
                    continue
                # on the fast backend the hooks see positions from_position.. only: index from the end
                if component == "full":

                    def z_hook(z: Tensor, hook: Any = None, zn: str = zn, hm: Tensor = hm) -> Tensor:
                        at = slice(-z.shape[1], None)
                        m = (pm[:, at, None] & hm[:, None, :])[..., None].to(z.device)
                        return torch.where(m, clean[zn][e][:, at].to(z.device, z.dtype), z)

                    hooks.append((zn, z_hook))
                else:
                    seen: dict[str, Tensor] = {}

                    def record(z: Tensor, hook: Any = None, seen: dict = seen) -> Tensor:
                        seen["z"] = z
                        return z

                    def add_along(out: Tensor, hook: Any = None, zn: str = zn, hm: Tensor = hm, layer: int = layer,
                                  seen: dict = seen) -> Tensor:
                        at = slice(-out.shape[1], None)
                        diff = clean[zn][e][:, at].to(out.device, out.dtype) - seen["z"]
                        proj = torch.einsum("rphd,hd->rph", diff, u[layer].to(out.device, out.dtype))
                        m = (pm[:, at, None] & hm[:, None, :]).to(out.device, out.dtype)
                        coef = (proj * m).sum(-1)
                        return out + coef[..., None] * d.to(out.device, out.dtype)

                    hooks.append((zn, record))
                    hooks.append((f"blocks.{layer}.hook_attn_out", add_along))
            return hooks

        ds = self.ds
        start = first_changed_position(ds.clean_tokens, ds.corrupt_tokens, pos_mask)
        return run_grid(model, ds.corrupt_tokens, logit_diff_metric(ds.answers), n_configs=len(sets), hooks=make_hooks,
                        batch_size=self.rows, progress=progress, desc="patching heads", backend=self.backend,
                        output="last", from_position=start)


# --------------------------------------------------------------------------- roles


@torch.no_grad()
def ov_direction_scores(
    model: Any, direction: Any, *, n_random: int = 64, seed: int = 0
) -> tuple[Float[Tensor, "layer head"], Float[Tensor, "layer head"]]:
    """How each head's OV circuit maps the direction ``d``: ``(cos, z)``.

    ``cos[l, h] = cos(OV(d), d)`` where ``OV(x) = norm1(x) W_V W_O`` (the layer's own input
    norm, its bias cancelled by using ``(norm(d) - norm(-d)) / 2``); ``z`` is that cosine
    standardised against ``n_random`` random unit directions through the same head. ``z >> 0``:
    the head copies the direction from where it attends to where it writes; ``z << 0``: it
    inverts it.
    """
    from mechlens.directions import random_directions

    d = unit_vector(direction)
    vecs = torch.cat([d[None], random_directions(d.numel(), n_random, seed=seed)])  # [1+R, d_model]
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    n_kv = int(getattr(model.cfg, "n_key_value_heads", None) or n_h)
    cos = torch.zeros(n_l, n_h)
    zs = torch.zeros(n_l, n_h)
    for layer in range(n_l):
        ln = model.blocks[layer].ln1
        w = next(ln.parameters(), None)  # the layer's device on a model split over GPUs
        x = vecs.to(w.device if w is not None else model_device(model))[:, None, :]
        normed = ((ln(x) - ln(-x)) / 2)[:, 0].float().cpu()  # [1+R, d_model]
        W_V = model.blocks[layer].attn.W_V.detach().float().cpu()  # [n_kv, d_model, d_head]
        W_O = model.blocks[layer].attn.W_O.detach().float().cpu()  # [n_h, d_head, d_model]
        for h in range(n_h):
            kv = h // (n_h // n_kv)
            ov = normed @ W_V[kv] @ W_O[h]  # [1+R, d_model]
            c = torch.nn.functional.cosine_similarity(ov, vecs, dim=-1)
            cos[layer, h] = c[0]
            rand = c[1:]
            zs[layer, h] = (c[0] - rand.mean()) / rand.std().clamp(min=1e-6)
    return cos, zs


@torch.no_grad()
def head_roles(
    model: Any, ds: ContrastDataset, direction: Any, *, batch_size: int | None = None
) -> dict[str, Any]:
    """Attention from END to each named position, and label-signed direction writes per head.

    Returns a dict with ``attention`` ``[layer, head, target]`` (targets: the named
    positions other than END, then ``"first"`` (position 0) and ``"other"``),
    ``targets``, ``writes`` ``[layer, head, position]`` (half the difference between the mean
    of ``(z @ W_O) . d`` on positive and on negative clean prompts, at each named position:
    > 0 means the head writes the prompt's sentiment along ``d``), ``writes_t`` (its Welch
    t-statistic), ``write_positions``, and ``attention_by_position`` ``[layer, head, pos]``
    (mean attention from END to each absolute position; with ``position_labels``, one label
    per position from the first prompt, meaningful when the prompts share a template).
    """
    check_dataset(ds, model=model)
    rows = rows_per_pass(batch_size)
    n_l = model.cfg.n_layers
    d = unit_vector(direction)
    if d.numel() != model.cfg.d_model:
        raise ValueError(f"direction has {d.numel()} components but the model's d_model is {model.cfg.d_model}")
    p_names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_l)]
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_l)]
    acts, _ = cache_batched(model, ds.clean_tokens, p_names + z_names, answers=ds.answers, batch_size=rows)
    b = torch.arange(ds.batch)
    named = [p for p in ds.positions if p != "END"]
    targets = named + ["first", "other"]
    write_positions = named + ["END"]
    pos_ex = ds.labels.cpu() == 1
    if pos_ex.all() or not pos_ex.any():
        raise ValueError(f"dataset {ds.name!r} needs both positive and negative clean prompts to score writes")
    att, att_pos, writes, writes_t = [], [], [], []
    for layer in range(n_l):
        pat = acts[p_names[layer]].float().cpu()  # [b, H, q, k]
        end_row = pat[b, :, ds.positions["END"].cpu(), :]  # [b, H, k]
        att_pos.append(end_row.mean(0))
        cols = []
        used = torch.zeros_like(end_row, dtype=torch.bool)
        for p in named:
            idx = ds.positions[p].cpu()
            cols.append(end_row[b, :, idx].mean(0))
            used[b, :, idx] = True
        first = end_row[:, :, 0]
        used[:, :, 0] = True
        cols.append(first.mean(0))
        cols.append((end_row * ~used).sum(-1).mean(0))
        att.append(torch.stack(cols, -1))
        z = acts[z_names[layer]].float().cpu()  # [b, pos, H, d_head]
        u = model.blocks[layer].attn.W_O.detach().float().cpu() @ d  # [H, d_head]
        proj = torch.einsum("bphd,hd->bph", z, u)  # [b, pos, H]
        w, t = [], []
        for p in write_positions:
            v = proj[b, ds.positions[p].cpu()]  # [b, H]
            a, c = v[pos_ex], v[~pos_ex]
            # half the gap between positive and negative prompts (a constant bias cancels), Welch t
            w.append((a.mean(0) - c.mean(0)) / 2)
            se = (a.var(0) / len(a) + c.var(0) / len(c)).sqrt().clamp(min=1e-8) if min(len(a), len(c)) > 1 \
                else torch.full_like(a[0], float("nan"))
            t.append((a.mean(0) - c.mean(0)) / se)
        writes.append(torch.stack(w, -1))
        writes_t.append(torch.stack(t, -1))
    return {
        "attention": torch.stack(att),
        "targets": targets,
        "writes": torch.stack(writes),
        "writes_t": torch.stack(writes_t),
        "write_positions": write_positions,
        "attention_by_position": torch.stack(att_pos),
        "position_labels": ds.position_labels(model),
    }


def _role_text(kind: str, att_pos: Tensor, labels: list[str], writes: Tensor, writes_t: Tensor,
               write_positions: list[str], ov_z: float) -> str:
    parts = [kind]
    # where END attends most, apart from the first token (an attention sink in most models)
    if len(att_pos) > 1:
        top = att_pos[1:].topk(min(2, len(att_pos) - 1))
        where = ", ".join(f"{labels[int(i) + 1].split(': ', 1)[-1]} {float(v):.2f}" for v, i in zip(top.values, top.indices))
        parts.append(f"END attends {where} (first token {float(att_pos[0]):.2f})")
    # direct heads matter where they write into the answer: END; movers wherever they write most
    j = write_positions.index("END") if kind == "direct" else int(writes_t.nan_to_num().abs().argmax())
    tj = float(writes_t[j])
    if abs(tj) >= ROLE_THRESHOLD:
        parts.append(f"writes {'+' if writes[j] > 0 else '-'}sentiment at {write_positions[j]} (t={tj:+.1f})")
    else:
        parts.append(f"no clear write along the direction at {write_positions[j]} (t={tj:+.1f})")
    if ov_z >= ROLE_THRESHOLD:
        parts.append(f"OV copies the direction (z={ov_z:+.1f})")
    elif ov_z <= -ROLE_THRESHOLD:
        parts.append(f"OV inverts the direction (z={ov_z:+.1f})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- result


@dataclass(repr=False)
class Circuit(Result):
    """A sentiment circuit found by :func:`discover_sentiment_circuit`.

    Attributes:
        heads: the circuit, ``(layer, head)``: direct heads by ``|direct_effect|``, then movers.
        kinds: head label (``"L17H5"``) -> ``"direct"`` or ``"mover"``.
        roles: head label -> a sentence: kind, where END attends, direction read/write.
        direct_effect: ``[layer, head]`` path patching head -> final residual stream.
        mover_effect: ``[layer, head]`` path patching head -> q/k/v of the direct heads.
        path_metric: what the two effect maps measure (from the path-patching result).
        attention, attention_targets: ``[layer, head, target]`` mean attention from END to
            each named position, the first token and everything else.
        attention_by_position, position_labels: ``[layer, head, pos]`` mean attention from
            END to each position, and the positions' token labels (first prompt).
        writes, writes_t, write_positions: ``[layer, head, position]`` label-signed
            projection of each head's output on the direction, and its t-statistic.
        ov_cos, ov_z: ``[layer, head]`` OV circuit applied to the direction (see
            :func:`ov_direction_scores`).
        faithfulness: rows ``{heads, component, positions, ld_recovered, logit_flip, draw}``
            for the circuit and each random head set.
        ld_clean, ld_corrupt: mean logit differences of the faithfulness dataset.
    """

    heads: list[Head]
    kinds: dict[str, str]
    roles: dict[str, str]
    direct_effect: Float[Tensor, "layer head"]
    mover_effect: Float[Tensor, "layer head"]
    attention: Float[Tensor, "layer head target"]
    attention_targets: list[str]
    writes: Float[Tensor, "layer head position"]
    writes_t: Float[Tensor, "layer head position"]
    write_positions: list[str]
    ov_cos: Float[Tensor, "layer head"]
    ov_z: Float[Tensor, "layer head"]
    attention_by_position: Float[Tensor, "layer head pos"] = field(default_factory=lambda: torch.zeros(0, 0, 0))
    position_labels: list[str] = field(default_factory=list)
    faithfulness: list[dict[str, Any]] = field(default_factory=list)
    ld_clean: float = 0.0
    ld_corrupt: float = 0.0
    path_metric: str = ""
    direction: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def direct_heads(self) -> list[Head]:
        return [h for h in self.heads if self.kinds[head_label(h)] == "direct"]

    @property
    def movers(self) -> list[Head]:
        return [h for h in self.heads if self.kinds[head_label(h)] == "mover"]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per head of the model: effects, attention, direction scores, circuit membership."""
        n_l, n_h = self.direct_effect.shape
        rows = []
        for layer in range(n_l):
            for h in range(n_h):
                lab = head_label((layer, h))
                row: dict[str, Any] = {
                    "head": lab, "layer": layer, "head_index": h,
                    "direct_effect": float(self.direct_effect[layer, h]),
                    "mover_effect": float(self.mover_effect[layer, h]),
                }
                for i, t in enumerate(self.attention_targets):
                    row[f"attn_END_to_{t}"] = float(self.attention[layer, h, i])
                for i, p in enumerate(self.write_positions):
                    row[f"writes_at_{p}"] = float(self.writes[layer, h, i])
                    row[f"writes_t_at_{p}"] = float(self.writes_t[layer, h, i])
                row["ov_cos"] = float(self.ov_cos[layer, h])
                row["ov_z"] = float(self.ov_z[layer, h])
                row["kind"] = self.kinds.get(lab, "")
                row["role"] = self.roles.get(lab, "")
                rows.append(row)
        df = pd.DataFrame(rows)
        df["in_circuit"] = df["kind"] != ""
        return df

    def heads_table(self) -> pd.DataFrame:
        """Only the circuit's heads, in circuit order."""
        df = self.to_dataframe().set_index("head")
        return df.loc[[head_label(h) for h in self.heads]].reset_index()

    def faithfulness_table(self, summary: bool = True) -> pd.DataFrame:
        """Circuit vs random head sets; ``summary=True`` gives mean and std over random draws."""
        df = pd.DataFrame(self.faithfulness)
        if not summary or df.empty:
            return df
        out = (
            df.groupby(["positions", "component", "heads"], sort=False)
            .agg(ld_recovered=("ld_recovered", "mean"), ld_recovered_std=("ld_recovered", "std"),
                 logit_flip=("logit_flip", "mean"), logit_flip_std=("logit_flip", "std"),
                 n=("ld_recovered", "size"))
            .reset_index()
        )
        return out.fillna({"ld_recovered_std": 0.0, "logit_flip_std": 0.0})

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"heads": [head_label(h) for h in self.heads]}
        for r in self.faithfulness_table().itertuples():
            key = f"{r.heads} {r.component} @ {r.positions}"
            out[f"{key}: ld_recovered"] = r.ld_recovered
            out[f"{key}: logit_flip"] = r.logit_flip
        return out

    def _summary_lines(self) -> list[str]:
        return [
            f"direct heads {[head_label(h) for h in self.direct_heads]}",
            f"movers {[head_label(h) for h in self.movers]}",
        ]

    # ------------------------------------------------------------------ plots
    def plot(self) -> Any:
        """The circuit graph (heads by layer, mover -> direct -> logits edges), the two
        path-patching heatmaps and the faithfulness bars."""
        from mechlens.viz.circuits import plot_circuit

        return plot_circuit(self)

    def _draw_graph(self, ax: Any) -> None:
        """Nodes per layer (matplotlib only): movers -> direct heads -> logits."""
        n_l = self.direct_effect.shape[0]
        pos: dict[str, tuple[float, float]] = {}
        by_layer: dict[int, list[Head]] = {}
        for h in self.heads:
            by_layer.setdefault(h[0], []).append(h)
        # heads in nearby layers would overlap: step through three columns, bottom to top
        column = 0
        for layer in sorted(by_layer):
            hs = by_layer[layer]
            for i, h in enumerate(hs):
                x = (column % 3 - 1) * 1.5 + (i - (len(hs) - 1) / 2) * 0.4
                pos[head_label(h)] = (x, layer)
                column += 1
        pos["logits"] = (0.0, n_l + 0.5)
        width = max([abs(x) for x, _ in pos.values()] + [1.0])
        directs, movers = self.direct_heads, self.movers
        for m in movers:
            for d in directs:
                if d[0] > m[0]:
                    (x0, y0), (x1, y1) = pos[head_label(m)], pos[head_label(d)]
                    ax.annotate("", (x1, y1), (x0, y0),
                                arrowprops={"arrowstyle": "->", "color": "tab:blue", "alpha": 0.5,
                                            "lw": 1 + 3 * abs(float(self.mover_effect[m])) / max(
                                                1e-8, float(self.mover_effect.abs().max()))})
        top = max(1e-8, float(self.direct_effect.abs().max()))
        for d in directs:
            (x0, y0), (x1, y1) = pos[head_label(d)], pos["logits"]
            ax.annotate("", (x1, y1), (x0, y0),
                        arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.6,
                                    "lw": 1 + 3 * abs(float(self.direct_effect[d])) / top})
        for lab, (x, y) in pos.items():
            kind = self.kinds.get(lab, "logits")
            color = {"direct": "mistyrose", "mover": "lightblue"}.get(kind, "lightgrey")
            text = lab
            if lab != "logits":
                li, hi = int(lab[1:].split("H")[0]), int(lab.split("H")[1])
                att = self.attention_by_position[li, hi]
                if len(att) > 1 and self.position_labels:
                    j = int(att[1:].argmax()) + 1
                    text = f"{lab}\n->{self.position_labels[j].split(': ', 1)[-1]}"
            ax.text(x, y, text, ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "facecolor": color, "edgecolor": "black"})
        ax.set_xlim(-width - 1, width + 1)
        low = min((h[0] for h in self.heads), default=0)
        ax.set_ylim(low - 1.5, n_l + 1.5)
        ax.set_yticks(range(low, n_l, max(1, (n_l - low) // 15)))
        ax.set_ylabel("layer")
        ax.set_xticks([])
        ax.set_title("circuit: movers (blue) -> direct heads (red) -> logits")


# --------------------------------------------------------------------------- discovery


def _effect_grid(res: Any, n_l: int, n_h: int) -> Float[Tensor, "layer head"]:
    """A ``("layer", "head")`` path-patching result as a full ``[layer, head]`` tensor (0 for
    layers that were not swept)."""
    out = torch.zeros(n_l, n_h)
    vals = res.values.detach().float().cpu()
    for i, layer in enumerate(res.labels["layer"]):
        for j, h in enumerate(res.labels["head"]):
            out[int(layer), int(h)] = vals[i, j]
    return out


def _receivers(model: Any, heads: Sequence[Head], inputs: Sequence[str]) -> list[tuple[int, int, str]]:
    """q/k/v receivers of ``heads``; on grouped-query models k/v index the key/value head."""
    n_h = model.cfg.n_heads
    n_kv = int(getattr(model.cfg, "n_key_value_heads", None) or n_h)
    out = []
    for layer, h in heads:
        for x in inputs:
            out.append((layer, h if x == "q" else h // (n_h // n_kv), x))
    return sorted(set(out))


def discover_sentiment_circuit(
    model: Any,
    ds: ContrastDataset,
    *,
    direction: Any = None,
    top_k: int = 5,
    n_movers: int = 3,
    mover_inputs: Sequence[str] = ("q", "k", "v"),
    faithfulness_ds: ContrastDataset | None = None,
    positions: Sequence[str | Sequence[str]] = (("ADJ", "VRB"), ("ADJ", "VRB", "END")),
    n_random: int = 20,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> Circuit:
    """Find and validate a sentiment circuit of attention heads (see the module docstring).

    Args:
        model: a mechlens/TransformerLens model.
        ds: a sentiment contrast dataset with 0/1 labels (e.g. ``toy_movie_review(model,
            "train")``); discovery (path patching) runs on it.
        direction: the sentiment direction (Direction or ``[d_model]`` vector); default
            ``mean_diff`` fitted on ``ds`` at ADJ at the middle layer.
        top_k: number of direct heads.
        n_movers: number of intermediate movers (0 skips the second path-patching pass).
        mover_inputs: which inputs of the direct heads are receivers for the movers.
        faithfulness_ds: where the faithfulness is measured (default ``ds``; held-out words,
            ``toy_movie_review(model, "test")``, are the stricter test).
        positions: one or more position sets at which the circuit's heads are patched for
            the faithfulness table (each a name or a tuple of names; ``"all"`` for every
            position).
        n_random: random head sets of the circuit's size per position set.
        seed: seeds the random head sets and the random directions of the OV score.
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``, 128).
        progress: show progress bars.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge), ``"fast"`` or
            ``"hooks"``, for the path patching and the head-patching runs; the same numbers.

    Returns:
        :class:`Circuit`.
    """
    from mechlens.patching import path_patch

    check_dataset(ds, model=model)
    resolve_backend(model, backend)
    fds = ds if faithfulness_ds is None else faithfulness_ds
    check_dataset(fds, "faithfulness_ds", model=model)
    rows = rows_per_pass(batch_size)
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(top_k, int) or not 1 <= top_k <= n_l * n_h:
        raise ValueError(f"top_k={top_k!r} must be an int in 1..{n_l * n_h}")
    if not isinstance(n_movers, int) or n_movers < 0:
        raise ValueError(f"n_movers={n_movers!r} must be a non-negative int")
    bad = [x for x in mover_inputs if x not in ("q", "k", "v")]
    if bad or not mover_inputs:
        raise ValueError(f"mover_inputs={list(mover_inputs)!r}: choose from 'q', 'k', 'v'")
    if not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random={n_random!r} must be a non-negative int")
    pos_sets = [p if isinstance(p, str) else tuple(p) for p in positions]
    if not pos_sets:
        raise ValueError("positions is empty: give at least one position set, e.g. [('ADJ', 'VRB')]")
    for p in pos_sets:
        fds.position_mask(p)  # validates the names

    bar = progress_bar(5, progress, "sentiment circuit", leave=True)
    d = resolve_direction(model, ds, direction, batch_size=rows)
    bar.update(1)

    # 1. direct heads: path patching every head -> final residual stream
    direct_res = path_patch(model, ds, "all_heads", "resid_final", batch_size=batch_size, progress=progress,
                            backend=backend)
    direct = _effect_grid(direct_res, n_l, n_h)
    order = direct.abs().flatten().argsort(descending=True)
    direct_heads = [(int(i) // n_h, int(i) % n_h) for i in order[:top_k]]
    bar.update(1)

    # 2. movers: path patching every head -> q/k/v of the direct heads
    mover = torch.zeros(n_l, n_h)
    movers: list[Head] = []
    if n_movers:
        top_layer = max(layer for layer, _ in direct_heads)
        if top_layer > 0:  # only heads below a receiver can reach it
            mover_res = path_patch(model, ds, "all_heads", _receivers(model, direct_heads, mover_inputs),
                                   layers=list(range(top_layer)), batch_size=batch_size, progress=progress,
                                   backend=backend)
            mover = _effect_grid(mover_res, n_l, n_h)
        ok = torch.zeros(n_l, n_h, dtype=torch.bool)
        ok[:top_layer] = True
        for layer, h in direct_heads:
            ok[layer, h] = False
        score = torch.where(ok, mover.abs(), torch.full_like(mover, -1.0))
        for i in score.flatten().argsort(descending=True)[:n_movers]:
            if score.flatten()[i] > 0:
                movers.append((int(i) // n_h, int(i) % n_h))
    bar.update(1)

    # 3. roles
    roles_data = head_roles(model, ds, d, batch_size=rows)
    ov_cos, ov_z = ov_direction_scores(model, d, seed=seed)
    heads = direct_heads + movers
    kinds = {head_label(h): "direct" for h in direct_heads}
    kinds.update({head_label(h): "mover" for h in movers})
    roles = {
        head_label(h): _role_text(
            kinds[head_label(h)], roles_data["attention_by_position"][h], roles_data["position_labels"],
            roles_data["writes"][h], roles_data["writes_t"][h], roles_data["write_positions"], float(ov_z[h]),
        )
        for h in heads
    }
    bar.update(1)

    # 4. faithfulness: circuit vs random head sets of the same size
    g = torch.Generator().manual_seed(seed)
    random_sets = [
        [(int(i) // n_h, int(i) % n_h) for i in torch.randperm(n_l * n_h, generator=g)[: len(heads)]]
        for _ in range(n_random)
    ]
    table: list[dict[str, Any]] = []
    runs = _HeadRuns(model, fds, range(n_l), rows, backend)
    ld_c, ld_k = runs.ld_clean, runs.ld_corrupt
    d_unit = unit_vector(d)
    for p in pos_sets:
        label = p if isinstance(p, str) else "+".join(p)
        pos_mask = fds.position_mask(p).cpu()
        for component in ("full", "direction"):
            ld = runs.patch([heads] + random_sets, pos_mask, component, d_unit)
            for k in range(ld.shape[0]):
                table.append({
                    "heads": "circuit" if k == 0 else "random",
                    "component": component,
                    "positions": label,
                    "ld_recovered": float(fraction_recovered(ld[k].mean(), ld_c.mean(), ld_k.mean())),
                    "logit_flip": safe_flip(ld[k], ld_c, ld_k, fds.labels.cpu()),
                    "draw": k - 1,
                })
    bar.update(1)
    bar.close()
    return Circuit(
        heads=heads,
        kinds=kinds,
        roles=roles,
        direct_effect=direct,
        mover_effect=mover,
        attention=roles_data["attention"].float(),
        attention_targets=roles_data["targets"],
        attention_by_position=roles_data["attention_by_position"].float(),
        position_labels=roles_data["position_labels"],
        writes=roles_data["writes"].float(),
        writes_t=roles_data["writes_t"].float(),
        write_positions=roles_data["write_positions"],
        ov_cos=ov_cos,
        ov_z=ov_z,
        faithfulness=table,
        ld_clean=float(ld_c.mean()),
        ld_corrupt=float(ld_k.mean()),
        path_metric=str(getattr(direct_res, "metric", "")),
        direction={"method": d.method, "layer": d.layer, "site": d.site, "position": d.position},
        model_name=_model_name(model),
        dataset=ds.name,
        fingerprint=ds.fingerprint(),
        meta={
            "faithfulness_dataset": fds.name,
            "top_k": top_k,
            "n_movers": n_movers,
            "mover_inputs": list(mover_inputs),
            "n_random": n_random,
            "seed": seed,
        },
    )
