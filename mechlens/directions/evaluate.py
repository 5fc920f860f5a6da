"""Evaluating directions: every method at every layer, judged by directional patching.

For each layer, fit each method's direction on the *train* split (at ``position``), then
directional-patch it clean -> corrupt on the *test* split (held-out words) at that layer
and (by default) every position. The table holds, per method x layer:

- ``ld_recovered``: fraction of the clean-corrupt logit-difference gap restored (x100 in
  the paper's "% LD recovered"); ``logit_flip``: fraction of the centred-accuracy gap closed;
- a random baseline: the same numbers for ``n_random`` seeded random unit vectors
  (reported as their mean; a real direction must beat it by far);
- the cosine similarity between methods' directions at each layer (do the methods agree?).

How to read it: a layer where some direction recovers most of the logit difference while
random ones recover ~0 is a layer where sentiment is (causally) one-dimensional; methods
agreeing there (high cosines) says the correlational methods found the causal direction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.data.contrast import ContrastDataset
from mechlens.directions.fit import (
    METHODS,
    SITES,
    Direction,
    _check_position,
    _layers_arg,
    collect_activations,
    fit,
    hook_name,
    random_directions,
)
from mechlens.directions.interventions import patched_logit_diffs
from mechlens.engine import cache_batched, progress_iter, resolve_backend
from mechlens.metrics import fraction_recovered, logit_flip
from mechlens.models import model_name as _model_name
from mechlens.results import Result
from mechlens.validate import check_batch_size, check_binary_labels, check_count, check_dataset

__all__ = ["DirectionEvaluation", "evaluate"]


@dataclass(repr=False)
class DirectionEvaluation(Result):
    """Method x layer table of directional-patching scores, with a random baseline and cosines.

    Attributes:
        methods, layers: the axes.
        ld_recovered, logit_flip: ``[method, layer]`` (fractions; x100 for percent).
        random_ld_recovered, random_logit_flip: ``[n_random, layer]``.
        cosine: ``[layer, method, method]`` cosine similarity of the directions.
        vectors: ``[method, layer, d_model]`` the fitted unit directions.
        ld_clean, ld_corrupt: mean test logit differences of the clean and corrupt runs.
    """

    methods: list[str]
    layers: list[int]
    ld_recovered: Float[Tensor, "method layer"]
    logit_flip: Float[Tensor, "method layer"]
    random_ld_recovered: Float[Tensor, "n_random layer"]
    random_logit_flip: Float[Tensor, "n_random layer"]
    cosine: Float[Tensor, "layer method method"]
    vectors: Float[Tensor, "method layer d_model"]
    ld_clean: float
    ld_corrupt: float
    position: str = "ADJ"
    site: str = "resid_pre"
    patch_position: str = "all"
    train_fingerprint: str = ""
    test_fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    # the axis a sweep can split (mechlens.scale): the tensors whose dimensions name "layer"
    # are concatenated along it; the timings add up
    LABEL_FIELDS: ClassVar[dict[str, str]] = {"layer": "layers"}
    SUMMED_META: ClassVar[tuple[str, ...]] = ("fit_seconds", "total_seconds")

    # ------------------------------------------------------------------ accessors
    def _mi(self, method: str) -> int:
        if method not in self.methods:
            raise KeyError(f"method {method!r} was not evaluated; methods are {self.methods}")
        return self.methods.index(method)

    def _li(self, layer: int) -> int:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not evaluated; layers are {self.layers}")
        return self.layers.index(layer)

    def direction(self, method: str, layer: int) -> Direction:
        """The fitted direction of ``method`` at ``layer``."""
        return Direction(
            vector=self.vectors[self._mi(method), self._li(layer)].clone(),
            method=method,
            layer=layer,
            site=self.site,
            position=self.position,
            model_name=self.model_name,
            fingerprint=self.train_fingerprint,
        )

    def best(self, metric: str = "ld_recovered") -> dict[str, Any]:
        """The (method, layer) with the highest ``metric`` and the numbers there."""
        table = self._metric(metric)
        i = int(table.argmax())
        mi, li = divmod(i, table.shape[1])
        layer = self.layers[li]
        return {
            "method": self.methods[mi],
            "layer": layer,
            "ld_recovered": float(self.ld_recovered[mi, li]),
            "logit_flip": float(self.logit_flip[mi, li]),
            "random_ld_recovered": float(self.random_ld_recovered[:, li].mean()),
            "mean_pairwise_cosine": self.mean_pairwise_cosine(layer),
        }

    def _metric(self, metric: str) -> Tensor:
        if metric not in ("ld_recovered", "logit_flip"):
            raise ValueError(f"metric={metric!r}: choose 'ld_recovered' or 'logit_flip'")
        return getattr(self, metric)

    def mean_pairwise_cosine(self, layer: int) -> float:
        """Mean cosine over distinct method pairs at ``layer`` (nan with one method)."""
        c = self.cosine[self._li(layer)]
        k = c.shape[0]
        if k < 2:
            return float("nan")
        off = ~torch.eye(k, dtype=torch.bool)
        return float(c[off].mean())

    # ------------------------------------------------------------------ tables
    def to_dataframe(self) -> Any:
        """Long table: one row per (method, layer), random baseline as method ``"random"``."""
        import pandas as pd

        rows = []
        for mi, method in enumerate(self.methods):
            for li, layer in enumerate(self.layers):
                rows.append(
                    {
                        "method": method,
                        "layer": layer,
                        "ld_recovered": float(self.ld_recovered[mi, li]),
                        "ld_recovered_pct": 100 * float(self.ld_recovered[mi, li]),
                        "logit_flip": float(self.logit_flip[mi, li]),
                    }
                )
        for li, layer in enumerate(self.layers):
            r = float(self.random_ld_recovered[:, li].mean())
            rows.append(
                {
                    "method": "random",
                    "layer": layer,
                    "ld_recovered": r,
                    "ld_recovered_pct": 100 * r,
                    "logit_flip": float(self.random_logit_flip[:, li].mean()),
                }
            )
        return pd.DataFrame(rows)

    def table(self, metric: str = "ld_recovered_pct") -> Any:
        """Wide table: layers as rows, methods (and ``random``) as columns."""
        df = self.to_dataframe()
        if metric not in df.columns:
            raise ValueError(f"metric={metric!r}: choose one of {list(df.columns[2:])}")
        cols = self.methods + ["random"]
        return df.pivot(index="layer", columns="method", values=metric)[cols]

    def cosine_dataframe(self, layer: int) -> Any:
        import pandas as pd

        return pd.DataFrame(self.cosine[self._li(layer)].numpy(), index=self.methods, columns=self.methods)

    def to_markdown(self, digits: int = 1) -> str:
        """The full table as Markdown: % LD recovered and logit flip (%) per method, per layer."""
        ld = self.table("ld_recovered_pct")
        flip = self.table("logit_flip") * 100
        head = ["layer"] + [f"{m} LD%" for m in ld.columns] + [f"{m} flip%" for m in flip.columns] + ["mean cos"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for layer in ld.index:
            vals = [f"{v:.{digits}f}" for v in ld.loc[layer]] + [f"{v:.0f}" for v in flip.loc[layer]]
            lines.append(f"| {layer} | " + " | ".join(vals) + f" | {self.mean_pairwise_cosine(int(layer)):.2f} |")
        return "\n".join(lines)

    # ------------------------------------------------------------------ plots
    def plot(self, layer: int | None = None) -> Any:
        """Three panels: % LD recovered over layers, logit flip over layers (random dashed),
        and the methods' cosine matrix at ``layer`` (default: the best layer)."""
        from mechlens.viz.directions import plot_direction_evaluation

        return plot_direction_evaluation(self, layer)

    def _summary_lines(self) -> list[str]:
        b = self.best()
        return [
            f"methods={self.methods}, layers={self.layers[0]}..{self.layers[-1]} ({len(self.layers)})",
            f"best={b['method']}@{b['layer']} {100 * b['ld_recovered']:.1f}% LD recovered, "
            f"random {100 * b['random_ld_recovered']:.2f}%",
        ]


def evaluate(
    model: Any,
    train_ds: ContrastDataset,
    test_ds: ContrastDataset,
    *,
    methods: Sequence[str] = METHODS,
    layers: int | Sequence[int] | None = None,
    position: Any = "ADJ",
    site: str = "resid_pre",
    patch_position: Any = "all",
    n_random: int = 5,
    seed: int = 0,
    das: dict[str, Any] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> DirectionEvaluation:
    """Fit every method at every layer on ``train_ds``, directional-patch on ``test_ds``.

    Args:
        methods: any of ``mean_diff``, ``kmeans``, ``logistic``, ``pca``, ``das``.
        layers: layers to sweep (default: all).
        position, site: where directions are fitted (see :func:`mechlens.directions.fit`).
        patch_position: where the test patch is applied, together (default ``"all"``; a
            name, a list of names or a mask: :meth:`ContrastDataset.position_mask`).
        n_random: number of seeded random unit vectors for the baseline.
        seed: seeds every fit and the random directions.
        das: DAS options (see :func:`mechlens.directions.fit`).
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show progress bars.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge, where the patched runs
            start at the layer patched), ``"fast"`` or ``"hooks"``; the same numbers.
    """
    train_ds = check_dataset(train_ds, model, "train_ds")
    test_ds = check_dataset(test_ds, model, "test_ds")
    check_batch_size(batch_size)
    check_count(n_random, "n_random", minimum=1)
    resolve_backend(model, backend)
    check_binary_labels(train_ds, "train_ds")
    check_binary_labels(test_ds, "test_ds")
    _check_position(train_ds, position)
    if site not in SITES:
        raise ValueError(f"site={site!r} is not supported; choose one of {SITES}")
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods={methods!r}: choose a non-empty subset of {METHODS}")
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1 for the random baseline, got {n_random}")
    layer_list = _layers_arg(model, layers)
    _check_position(test_ds, patch_position, "patch_position")
    mask, patch_label = test_ds.position_mask(patch_position).cpu(), test_ds.position_label(patch_position)
    t0 = time.time()

    train_acts, train_y = collect_activations(
        model, train_ds, layer_list, position=position, site=site, batch_size=batch_size
    )
    names = [hook_name(layer, site) for layer in layer_list]
    clean_acts, ld_clean = cache_batched(model, test_ds.clean_tokens, names, batch_size=batch_size, answers=test_ds.answers)
    _, ld_corr = cache_batched(model, test_ds.corrupt_tokens, [], batch_size=batch_size, answers=test_ds.answers)
    ld_clean, ld_corr = ld_clean.float().cpu(), ld_corr.float().cpu()
    labels = test_ds.labels.cpu()
    randoms = random_directions(model.cfg.d_model, n_random, seed=seed)

    k, n_l = len(methods), len(layer_list)
    rec = torch.zeros(k, n_l)
    flip = torch.zeros(k, n_l)
    rrec = torch.zeros(n_random, n_l)
    rflip = torch.zeros(n_random, n_l)
    vecs = torch.zeros(k, n_l, model.cfg.d_model)
    cos = torch.zeros(n_l, k, k)
    fit_seconds: dict[str, float] = {m: 0.0 for m in methods}

    def score(ld: Tensor) -> tuple[float, float]:
        return (
            float(fraction_recovered(ld.mean(), ld_clean.mean(), ld_corr.mean())),
            logit_flip(ld, ld_clean, ld_corr, labels),
        )

    for li, layer in enumerate(progress_iter(layer_list, progress, "layers", leave=True)):
        for mi, method in enumerate(methods):
            t = time.time()
            d = fit(
                model, train_ds, method, layer, position=position, site=site, seed=seed,
                das=das, acts=(train_acts[layer], train_y), progress=progress, backend=backend,
            )
            fit_seconds[method] += time.time() - t
            vecs[mi, li] = d.vector
        cos[li] = vecs[:, li] @ vecs[:, li].T
        all_dirs = torch.cat([vecs[:, li], randoms])
        lds = patched_logit_diffs(
            model, test_ds, all_dirs, {names[li]: clean_acts[names[li]]}, mask, batch_size=batch_size,
            progress=progress, desc=f"patching layer {layer}", backend=backend,
        )
        for j in range(len(all_dirs)):
            r, f = score(lds[j])
            if j < k:
                rec[j, li], flip[j, li] = r, f
            else:
                rrec[j - k, li], rflip[j - k, li] = r, f

    return DirectionEvaluation(
        methods=methods,
        layers=layer_list,
        ld_recovered=rec,
        logit_flip=flip,
        random_ld_recovered=rrec,
        random_logit_flip=rflip,
        cosine=cos,
        vectors=vecs,
        ld_clean=float(ld_clean.mean()),
        ld_corrupt=float(ld_corr.mean()),
        model_name=_model_name(model),
        position=train_ds.position_label(position),
        site=site,
        patch_position=patch_label,
        dataset=test_ds.name,
        fingerprint=test_ds.fingerprint(),
        train_fingerprint=train_ds.fingerprint(),
        test_fingerprint=test_ds.fingerprint(),
        meta={
            "seed": seed,
            "n_random": n_random,
            "train": train_ds.name,
            "test": test_ds.name,
            "n_train": train_ds.batch,
            "n_test": test_ds.batch,
            "das": dict(das or {}),
            "fit_seconds": fit_seconds,
            "total_seconds": time.time() - t0,
        },
    )
