"""The summarization motif: sentiment gathered at a comma, then read from there.

Tigges et al. (2023) found that a model does not only move sentiment straight from the
sentiment words ("perfect", "enjoyed") to the final position: it also *summarises* it at
positions with no sentiment of their own, such as the comma after a clause, and later
heads read the summary there. :func:`summarization_motif` measures this on any contrast
dataset with a ``"COMMA"`` position, four ways:

1. **Who reads the comma.** The heads that attend most from the final position to the
   comma (mean attention probability over the clean prompts).
2. **Patching splits** (``mode="noise"``: run the clean prompts, put in the corrupt
   prompt's residual stream at some positions *at every layer*). Each split is reported as
   the *LD change* ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``:

   - ``whole prompt``: every position; the run *is* the corrupt run, so -100% by
     construction (a consistency check);
   - ``before comma, comma frozen``: the positions before the comma (on ToyMovieReview the
     sentiment word ADJ), while the comma keeps its clean residual stream at every layer:
     the effect that reaches the answer *without* passing through the comma;
   - ``before comma``: the same positions, comma free to update (their total effect);
   - ``comma only``: just the comma's residual stream: the effect of the summary alone.

   If ``comma only`` is large, and ``before comma, comma frozen`` is much smaller than
   ``before comma``, the sentiment of the first clause travels through the comma.
3. **Irrelevant-context sweep.** Rebuild the dataset with ``N`` tokens of neutral text
   between the review and the question (``toy_movie_review(model, split, filler=N)``) and
   compare the comma's importance with the sentiment word's as ``N`` grows: the splits
   above, and exact activation patching (:func:`mechlens.patching.activation_patch`,
   ``resid_pre``, denoising) of the ADJ and COMMA positions at every layer. The paper
   found that the further the answer is from the sentiment word, the more the model relies
   on the summary.
4. **Directional ablation on SST-style text** (:func:`mechlens.directions.ablate`): remove
   the sentiment direction (mean-ablation of its component, at every layer by default) at
   the commas only versus at every position, and the same for random directions. If the
   commas-only ablation does a sizeable part of the all-positions damage, the summaries
   matter on natural text too. The default data is ``mechlens/data/mini_sst.tsv``, 64
   positive and 64 negative one-sentence reviews with commas written for mechlens; SST
   prompts come in many token lengths, so they form one dataset per length
   (:func:`mini_sst`) and the numbers are pooled over them.

Example::

    from mechlens.models import load_model
    from mechlens.data import toy_movie_review
    from mechlens.circuits import summarization_motif

    model = load_model("smollm2-135m")
    res = summarization_motif(model, toy_movie_review(model, "test", filler=16))
    res.splits_table(); res.sweep_table(); res.ablation_table()
    res.plot()
"""

from __future__ import annotations

import importlib.resources
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechlens.circuits._util import (
    Head,
    check_dataset,
    head_label,
    pct,
    resolve_direction,
)
from mechlens.data.contrast import ContrastDataset
from mechlens.data.sentiment import toy_movie_review
from mechlens.data.sst import SST_TEMPLATE, read_sst_tsv, sst
from mechlens.engine import (
    cache_batched,
    first_changed_position,
    logit_diff_metric,
    progress_bar,
    resolve_backend,
    rows_per_pass,
    run_grid,
)
from mechlens.metrics import accuracy
from mechlens.models import model_name as _model_name
from mechlens.results import PatchSetResult, Result, provenance

__all__ = [
    "SPLITS",
    "MotifResult",
    "summarization_motif",
    "split_masks",
    "patch_positions",
    "mini_sst",
    "MINI_SST_PATH",
]

SPLITS = ("whole prompt", "before comma, comma frozen", "before comma", "comma only")
MINI_SST_PATH = importlib.resources.files("mechlens.data") / "mini_sst.tsv"


# --------------------------------------------------------------------------- data


def mini_sst(
    model: Any,
    *,
    template: str = SST_TEMPLATE,
    answers: list[tuple[str, str]] | None = None,
    min_pairs: int = 1,
    path: str | None = None,
) -> list[ContrastDataset]:
    """The bundled SST-style reviews as contrast datasets, one per prompt token length.

    Every sentence has at least one comma (``ds.masks["COMMA"]`` marks them all). Positive
    and negative prompts of the same length are paired as in :func:`mechlens.data.sst`;
    lengths with fewer than ``min_pairs`` pairs are left out. ``template`` and ``answers``
    (``(positive, negative)`` single-token words, default ``" positive"``/``" negative"``) are
    passed to :func:`mechlens.data.sst`.
    """
    path = str(path or MINI_SST_PATH)
    lengths: dict[int, list[int]] = {}
    for text, label in read_sst_tsv(path):
        n = model.to_tokens(template.format(text=text)).shape[-1]
        lengths.setdefault(n, [0, 0])[label] += 1
    out = []
    for n in sorted(lengths):
        if min(lengths[n]) >= max(1, min_pairs):
            ds = sst(model, path, template=template, answers=answers, length=n)
            ds.name = f"mini_sst/len{n}"
            out.append(ds)
    if not out:
        raise ValueError(f"{path}: no token length has {min_pairs} positive/negative pairs for this tokenizer")
    return out


# --------------------------------------------------------------------------- patching splits


def split_masks(ds: ContrastDataset) -> dict[str, tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]]:
    """For each split: ``(patched, frozen)`` position masks (see the module docstring)."""
    check_dataset(ds, need=("COMMA",), binary=False)
    idx = torch.arange(ds.seq_len)[None, :]
    comma = ds.positions["COMMA"].cpu()[:, None]
    before, at = idx < comma, idx == comma
    every = torch.ones(ds.batch, ds.seq_len, dtype=torch.bool)
    none = torch.zeros_like(every)
    before, at = before.expand_as(every).clone(), at.expand_as(every).clone()
    return {
        "whole prompt": (every, none),
        "before comma, comma frozen": (before, at),
        "before comma": (before, none),
        "comma only": (at, none),
    }


@torch.no_grad()
def patch_positions(
    model: Any,
    ds: ContrastDataset,
    configs: Sequence[tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]],
    *,
    batch_size: int | None = None,
    progress: bool = False,
    backend: str = "auto",
) -> PatchSetResult:
    """Run the clean prompts with, at every layer, the residual stream at ``patched``
    positions set to the corrupt run's and at ``frozen`` positions set to the clean run's.

    Returns a :class:`~mechlens.results.PatchSetResult`: ``per_example`` ``[config, batch]``
    the logit difference under each configuration, ``baselines["clean"]`` / ``["corrupt"]``
    the unpatched ones. All configurations run stacked on the batch axis (``batch_size``
    sequences per pass); ``backend``: ``"auto"`` (``"fast"`` on a TransformerBridge: only the
    final position is unembedded), ``"fast"`` or ``"hooks"``, the same numbers.
    """
    check_dataset(ds, model=model, binary=False)
    resolve_backend(model, backend)
    rows = rows_per_pass(batch_size)
    n = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    clean, ld_clean = cache_batched(model, ds.clean_tokens, names, answers=ds.answers, batch_size=rows)
    corrupt, ld_corr = cache_batched(model, ds.corrupt_tokens, names, answers=ds.answers, batch_size=rows)
    patched = torch.stack([p.cpu() for p, _ in configs])
    frozen = torch.stack([f.cpu() for _, f in configs])
    if (patched & frozen).any():
        raise ValueError("a position cannot be both patched and frozen")

    def make_hooks(c: Tensor, e: Tensor) -> list:
        p, f = patched[c, e], frozen[c, e]

        def hook_for(name: str):
            def hook(h: Tensor, hook: Any = None) -> Tensor:
                dev, at = h.device, slice(-h.shape[1], None)  # the last positions only with from_position
                out = torch.where(f[:, at, None].to(dev), clean[name][e][:, at].to(dev, h.dtype), h)
                return torch.where(p[:, at, None].to(dev), corrupt[name][e][:, at].to(dev, h.dtype), out)

            return hook

        return [(name, hook_for(name)) for name in names]

    # nothing changes before the first patched position from where clean and corrupt differ:
    # the frozen positions before it already hold the clean values
    start = first_changed_position(ds.clean_tokens, ds.corrupt_tokens, patched.flatten(0, 1))
    ld = run_grid(model, ds.clean_tokens, logit_diff_metric(ds.answers), n_configs=len(configs), hooks=make_hooks,
                  batch_size=rows, progress=progress, desc="patching positions", backend=backend, output="last",
                  from_position=start)
    return PatchSetResult(
        per_example=ld, axes=("config",), labels={"config": [f"config {i}" for i in range(len(configs))]},
        metric="logit_diff", **provenance(model, ds, batch_size=batch_size),
        baselines={"clean": ld_clean, "corrupt": ld_corr},
    )


def _change(ld: Tensor, clean: Tensor, corrupt: Tensor) -> float:
    """(LD_patched - LD_clean) / (LD_clean - LD_corrupt), on the means."""
    gap = float(clean.mean() - corrupt.mean())
    if gap == 0:
        raise ValueError("clean and corrupt logit differences are equal: the dataset has no effect to split")
    return float((ld.mean() - clean.mean()) / gap)


# --------------------------------------------------------------------------- result


@dataclass(repr=False)
class MotifResult(Result):
    """Everything :func:`summarization_motif` measured.

    Attributes:
        comma_attention: ``[layer, head]`` mean attention from the final position to the comma.
        top_heads: the ``top_k`` heads by ``comma_attention``.
        split_names: the patching splits (:data:`SPLITS`).
        split_ld: ``[split, batch]`` logit differences of the patched runs; ``ld_clean``,
            ``ld_corrupt`` ``[batch]`` the unpatched ones.
        filler, sweep_change: irrelevant-context sweep: ``[filler, split]`` LD change of
            each split with ``filler[i]`` neutral tokens inserted.
        sweep_layers, sweep_positions, sweep_patch: ``[filler, layer, position]`` fraction
            of LD recovered by activation patching ``resid_pre`` at ADJ / COMMA.
        ablation: rows ``{direction, positions, ld_change, accuracy_before, accuracy_after,
            n_examples}``: the sentiment direction and each random direction ablated at the
            commas and at every position.
        direction: where the sentiment direction came from (method, layer, site).
    """

    comma_attention: Float[Tensor, "layer head"]
    top_heads: list[Head]
    split_names: list[str]
    split_ld: Float[Tensor, "split batch"]
    ld_clean: Float[Tensor, " batch"]
    ld_corrupt: Float[Tensor, " batch"]
    filler: list[int] = field(default_factory=list)
    sweep_change: Float[Tensor, "filler split"] = field(default_factory=lambda: torch.zeros(0, len(SPLITS)))
    sweep_layers: list[int] = field(default_factory=list)
    sweep_positions: list[str] = field(default_factory=lambda: ["ADJ", "COMMA"])
    sweep_patch: Float[Tensor, "filler layer position"] = field(default_factory=lambda: torch.zeros(0, 0, 2))
    ablation: list[dict[str, Any]] = field(default_factory=list)
    direction: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ numbers
    @property
    def split_change(self) -> dict[str, float]:
        """Split name -> LD change (fraction; -1 = the whole clean-corrupt gap)."""
        return {s: _change(self.split_ld[i], self.ld_clean, self.ld_corrupt) for i, s in enumerate(self.split_names)}

    def heads_table(self) -> pd.DataFrame:
        """Heads ranked by attention from END to the comma."""
        att = self.comma_attention
        order = att.flatten().argsort(descending=True)
        n_h = att.shape[1]
        rows = [
            {"head": head_label((int(i) // n_h, int(i) % n_h)), "layer": int(i) // n_h, "head_index": int(i) % n_h,
             "attention_to_comma": float(att.flatten()[i])}
            for i in order
        ]
        return pd.DataFrame(rows)

    def splits_table(self) -> pd.DataFrame:
        sc = self.split_change
        return pd.DataFrame(
            [{"split": s, "ld_change": sc[s], "ld_change_pct": 100 * sc[s], "ld_mean": float(self.split_ld[i].mean())}
             for i, s in enumerate(self.split_names)]
        )

    def sweep_table(self) -> pd.DataFrame:
        """One row per filler length: split LD changes and best-layer activation patching."""
        rows = []
        for i, n in enumerate(self.filler):
            row: dict[str, Any] = {"filler": n}
            for j, s in enumerate(self.split_names):
                row[s] = float(self.sweep_change[i, j])
            for k, p in enumerate(self.sweep_positions):
                curve = self.sweep_patch[i, :, k]
                if len(curve):
                    best = int(curve.argmax())
                    row[f"{p} best layer"] = self.sweep_layers[best]
                    row[f"{p} max recovered"] = float(curve[best])
            comma = row.get("comma only", math.nan)
            direct = row.get("before comma, comma frozen", math.nan)
            row["comma / ADJ-direct"] = comma / direct if direct else math.nan
            rows.append(row)
        return pd.DataFrame(rows)

    def ablation_table(self, summary: bool = True) -> pd.DataFrame:
        """Directional ablation rows; ``summary=True`` folds the random directions into mean and std."""
        df = pd.DataFrame(self.ablation)
        if not summary or df.empty:
            return df
        is_rand = df["direction"].str.startswith("random")
        real = df[~is_rand].copy()
        real["ld_change_std"] = 0.0
        real["n_directions"] = 1
        rand = (
            df[is_rand]
            .groupby("position", sort=False)
            .agg(
                ld_change=("ld_change", "mean"),
                ld_change_std=("ld_change", "std"),
                accuracy_before=("accuracy_before", "mean"),
                accuracy_after=("accuracy_after", "mean"),
                n_examples=("n_examples", "first"),
                n_directions=("ld_change", "size"),
            )
            .reset_index()
        )
        rand.insert(0, "direction", "random")
        return pd.concat([real, rand], ignore_index=True)[
            ["direction", "position", "ld_change", "ld_change_std", "accuracy_before", "accuracy_after",
             "n_examples", "n_directions"]
        ]

    def to_dataframe(self) -> pd.DataFrame:
        """All numbers in long form: ``analysis``, ``name``, ``filler``, ``layer``, ``metric``, ``value``."""
        rows: list[dict[str, Any]] = []
        h = self.heads_table()
        for r in h.itertuples():
            rows.append({"analysis": "comma_attention", "name": r.head, "layer": r.layer,
                         "metric": "attention", "value": r.attention_to_comma})
        for s, v in self.split_change.items():
            rows.append({"analysis": "split", "name": s, "metric": "ld_change", "value": v})
        for i, n in enumerate(self.filler):
            for j, s in enumerate(self.split_names):
                rows.append({"analysis": "sweep_split", "name": s, "filler": n, "metric": "ld_change",
                             "value": float(self.sweep_change[i, j])})
            for k, p in enumerate(self.sweep_positions):
                for li, layer in enumerate(self.sweep_layers):
                    rows.append({"analysis": "sweep_patch", "name": p, "filler": n, "layer": layer,
                                 "metric": "fraction_recovered", "value": float(self.sweep_patch[i, li, k])})
        for r in self.ablation:
            for m in ("ld_change", "accuracy_before", "accuracy_after"):
                rows.append({"analysis": "ablation", "name": f"{r['direction']} @ {r['position']}",
                             "metric": m, "value": r[m]})
        return pd.DataFrame(rows, columns=["analysis", "name", "filler", "layer", "metric", "value"])

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"top_comma_heads": [head_label(h) for h in self.top_heads]}
        out.update({f"split: {k}": v for k, v in self.split_change.items()})
        if self.ablation:
            t = self.ablation_table()
            for r in t.itertuples():
                out[f"ablation {r.direction} @ {r.position}: ld_change"] = r.ld_change
                out[f"ablation {r.direction} @ {r.position}: accuracy_after"] = r.accuracy_after
        return out

    def _summary_lines(self) -> list[str]:
        sc = ", ".join(f"{k}: {pct(v)}" for k, v in self.split_change.items())
        return [
            f"top comma heads {[head_label(h) for h in self.top_heads]}",
            f"splits [{sc}]",
            f"filler={self.filler}, ablation rows={len(self.ablation)}",
        ]

    # ------------------------------------------------------------------ plot
    def plot(self) -> Any:
        """Four panels: attention to the comma per head, the patching splits, the
        irrelevant-context sweep, and the directional ablations."""
        from mechlens.viz.circuits import plot_motif

        return plot_motif(self)


# --------------------------------------------------------------------------- the analysis


def summarization_motif(
    model: Any,
    ds: ContrastDataset,
    *,
    direction: Any = None,
    top_k: int = 5,
    n_filler: Sequence[int] = (0, 8, 16, 32),
    filler_dataset: Callable[[int], ContrastDataset] | None = None,
    layers: Sequence[int] | None = None,
    ablation_ds: ContrastDataset | Sequence[ContrastDataset] | None = None,
    ablation: bool = True,
    ablation_layers: str | int | Sequence[int] = "all",
    ablation_how: str = "mean",
    n_random: int = 5,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> MotifResult:
    """Measure the summarization motif (see the module docstring for the method).

    Args:
        model: a mechlens/TransformerLens model.
        ds: a contrast dataset with a ``"COMMA"`` position (one per prompt), e.g.
            ``toy_movie_review(model, "test", filler=16)``; its corrupt prompts should differ
            before the comma, or the "before comma" splits are zero by construction.
        direction: the sentiment direction (a :class:`~mechlens.directions.Direction` or a
            ``[d_model]`` vector); default: ``mean_diff`` fitted on ``ds`` at ADJ at the
            middle layer.
        top_k: how many comma-reading heads to list in ``top_heads``.
        n_filler: filler lengths for the irrelevant-context sweep (``()`` skips it).
        filler_dataset: ``N -> dataset`` for the sweep; default ``toy_movie_review(model,
            split, filler=N)`` with the split of ``ds`` (``"test"`` when unknown).
        layers: layers of the filler sweep's activation patching (default every layer).
        ablation_ds: dataset(s) with comma masks for the directional ablation; default
            :func:`mini_sst` (the bundled SST-style reviews).
        ablation: ``False`` skips the directional ablation.
        ablation_layers: the directional ablation's ``layers`` (``"all"``, an int or a list).
        ablation_how: the directional ablation's ``how`` (``"mean"``, ``"zero"`` or
            ``"resample"``; see :func:`mechlens.directions.ablate`).
        n_random: random directions for the ablation control.
        seed: seeds the random directions (and resample ablation).
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show progress bars.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge), ``"fast"`` or
            ``"hooks"``, for every patched and ablated run; the same numbers.

    Returns:
        :class:`MotifResult`.
    """
    from mechlens.directions import Direction, ablate_each, random_directions
    from mechlens.patching import activation_patch

    check_dataset(ds, need=("COMMA",), binary=False, model=model)
    resolve_backend(model, backend)
    rows = rows_per_pass(batch_size)
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int")
    if not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random={n_random!r} must be a non-negative int")
    fillers = [int(n) for n in n_filler]
    if any(n < 0 for n in fillers):
        raise ValueError(f"n_filler={list(n_filler)!r}: filler lengths must be >= 0")
    if ablation_how not in ("mean", "zero", "resample"):
        raise ValueError(f"ablation_how={ablation_how!r}: choose 'mean', 'zero' or 'resample'")
    before = torch.arange(ds.seq_len)[None] < ds.positions["COMMA"].cpu()[:, None]
    differs_before = bool(((ds.clean_tokens.cpu() != ds.corrupt_tokens.cpu()) & before).any())
    if not differs_before:
        warnings.warn(
            f"dataset {ds.name!r}: clean and corrupt prompts are identical before the comma, so the "
            "'before comma' splits are 0 by construction; use a dataset whose corruption is before the comma",
            stacklevel=2,
        )
    steps = 2 + len(fillers) + (1 if ablation else 0)
    bar = progress_bar(steps, progress, "summarization motif", leave=True)

    # 1. heads reading the comma from END
    n_l = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_l)]
    pats, _ = cache_batched(model, ds.clean_tokens, names, answers=ds.answers, batch_size=rows)
    b = torch.arange(ds.batch)
    comma = ds.positions["COMMA"].cpu()
    att = torch.stack([pats[n][:, :, -1, :].cpu()[b, :, comma].mean(0) for n in names]).float()
    del pats
    top = att.flatten().topk(min(top_k, att.numel())).indices
    top_heads = [(int(i) // att.shape[1], int(i) % att.shape[1]) for i in top]
    bar.update(1)

    # 2. patching splits
    masks = split_masks(ds)
    split = patch_positions(model, ds, list(masks.values()), batch_size=rows, backend=backend)
    split_ld, ld_clean, ld_corr = split.per_example, split.baselines["clean"], split.baselines["corrupt"]
    bar.update(1)

    # 3. irrelevant-context sweep
    if filler_dataset is None:
        split = ds.meta.get("split", "test") if ds.name.startswith("toy_movie_review") else "test"

        def filler_dataset(n: int) -> ContrastDataset:
            return toy_movie_review(model, split, filler=n)

    sweep_change = torch.zeros(len(fillers), len(SPLITS))
    layer_list = list(range(n_l)) if layers is None else sorted({int(x) for x in layers})
    sweep_patch = torch.zeros(len(fillers), len(layer_list), 2)
    for i, n in enumerate(fillers):
        dsn = filler_dataset(n)
        check_dataset(dsn, f"filler_dataset({n})", need=("ADJ", "COMMA"), binary=False, model=model)
        split_n = patch_positions(model, dsn, list(split_masks(dsn).values()), batch_size=rows, backend=backend)
        ld_n, c_n, k_n = split_n.per_example, split_n.baselines["clean"], split_n.baselines["corrupt"]
        sweep_change[i] = torch.tensor([_change(ld_n[j], c_n, k_n) for j in range(len(SPLITS))])
        res = activation_patch(
            model, dsn, "resid_pre", positions=["ADJ", "COMMA"], layers=layer_list, mode="denoise",
            batch_size=rows, progress=False, backend=backend,
        )
        sweep_patch[i] = res.values.float().cpu()
        bar.update(1)

    # 4. directional ablation at commas vs everywhere, against random directions
    d = resolve_direction(model, ds, direction, batch_size=rows)
    table: list[dict[str, Any]] = []
    abl_name = ""
    if ablation:
        datasets = mini_sst(model) if ablation_ds is None else (
            [ablation_ds] if isinstance(ablation_ds, ContrastDataset) else list(ablation_ds)
        )
        for j, a in enumerate(datasets):
            check_dataset(a, f"ablation_ds[{j}]", model=model)
            if "COMMA" not in a.masks and "COMMA" not in a.positions:
                raise ValueError(f"ablation_ds[{j}] ({a.name!r}) has no 'COMMA' mask or position")
        abl_name = "mini_sst" if ablation_ds is None else ",".join(sorted({a.name.split("/")[0] for a in datasets}))
        dirs: list[tuple[str, Any]] = [("sentiment", d)]
        for r, vec in enumerate(random_directions(model.cfg.d_model, n_random, seed=seed)):
            dirs.append((f"random {r}", Direction(vector=vec, method="random", layer=d.layer, site=d.site, position="all")))
        wheres = ("COMMA", "all")
        # per dataset, one clean run serves every (direction, position) pair
        runs = [ablate_each(model, a, [dvec for _, dvec in dirs], positions=wheres, how=ablation_how,
                            layers=ablation_layers, seed=seed, batch_size=rows, progress=False, backend=backend)
                for a in datasets]
        for i, (dname, where) in enumerate((dname, where) for dname, _ in dirs for where in wheres):
            lb = torch.cat([run[i].ld_before for run in runs])
            la = torch.cat([run[i].ld_after for run in runs])
            lab = torch.cat([run[i].class_labels for run in runs])
            table.append({
                "direction": dname,
                "position": where,
                "ld_change": float(la.mean() / lb.mean() - 1),
                "accuracy_before": accuracy(lb, lab),
                "accuracy_after": accuracy(la, lab),
                "n_examples": len(lb),
            })
        bar.update(1)
    bar.close()
    return MotifResult(
        comma_attention=att,
        top_heads=top_heads,
        split_names=list(SPLITS),
        split_ld=split_ld,
        ld_clean=ld_clean,
        ld_corrupt=ld_corr,
        filler=fillers,
        sweep_change=sweep_change,
        sweep_layers=layer_list,
        sweep_positions=["ADJ", "COMMA"],
        sweep_patch=sweep_patch,
        ablation=table,
        direction={"method": d.method, "layer": d.layer, "site": d.site, "position": d.position},
        model_name=_model_name(model),
        dataset=ds.name,
        fingerprint=ds.fingerprint(),
        meta={
            "differs_before_comma": differs_before,
            "ablation_data": abl_name,
            "ablation_layers": ablation_layers if isinstance(ablation_layers, (str, int)) else list(ablation_layers),
            "ablation_how": ablation_how,
            "n_random": n_random,
            "seed": seed,
        },
    )
