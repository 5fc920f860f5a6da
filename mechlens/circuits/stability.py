"""Stability of a circuit under resampling of the prompts and across templates.

A circuit found on one set of prompts is only worth reporting if a similar set of prompts
gives a similar circuit. :func:`circuit_stability` scores the edges (EAP or EAP-IG) on
``n_resamples`` bootstrap resamples of the prompts (drawn with replacement, seeded), takes
each resample's top ``k`` edges by ``|score|`` and reports

- the Jaccard overlap ``|A & B| / |A | B|`` of the top-``k`` sets over every pair of
  resamples: its mean, and a 95% interval for that mean from a bootstrap over the resamples
  (resampling the resamples and averaging the distinct pairs, 1000 draws);
- the spread of CPR and CMD (:mod:`mechlens.circuits.faithfulness`) of each resample's
  ranking, all measured on the full prompt set (so only the ranking varies);
- where the dataset records a template per prompt (``ds.meta["template_index"]``, as
  :func:`mechlens.data.ioi` does), the same top-``k`` overlap between the circuits found on
  each template's prompts alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mechlens.circuits.eap import EAP_METHODS, edge_attribution_patch
from mechlens.circuits.faithfulness import MIB_FRACTIONS, edge_ranking, faithfulness_curve
from mechlens.engine import prepare_dataset, progress_iter
from mechlens.model_protocol import check_model
from mechlens.results import Result, provenance

__all__ = ["CircuitStability", "circuit_stability", "jaccard"]


def jaccard(a: set, b: set) -> float:
    """``|a & b| / |a | b|`` (1 for two empty sets)."""
    return len(a & b) / len(a | b) if (a or b) else 1.0


def _mean_ci(matrix: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the off-diagonal pairs, and a 95% bootstrap interval over the resamples."""
    n = len(matrix)
    iu = np.triu_indices(n, 1)
    mean = float(matrix[iu].mean())
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        sub = matrix[np.ix_(idx, idx)]
        off = idx[:, None] != idx[None, :]  # a resample drawn twice is not a pair
        if off.any():
            stats.append(float(sub[off].mean()))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return mean, float(lo), float(hi)


@dataclass(kw_only=True)
class CircuitStability(Result):
    """Top-``k`` edge overlap across bootstrap resamples (and templates), and CPR spread."""

    method: str = "eap"
    k: int = 20
    n_resamples: int = 0
    top_edges: list[list[str]] = field(default_factory=list)
    jaccard: list[list[float]] = field(default_factory=list)
    jaccard_mean: float = 0.0
    jaccard_ci: tuple[float, float] = (0.0, 0.0)
    cpr: list[float] = field(default_factory=list)
    cmd: list[float] = field(default_factory=list)
    templates: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """One row: the overlap with its interval, and CPR / CMD mean and std over resamples."""
        import pandas as pd

        row: dict[str, Any] = {"method": self.method, "k": self.k, "resamples": self.n_resamples,
                               "jaccard": self.jaccard_mean, "ci_low": self.jaccard_ci[0],
                               "ci_high": self.jaccard_ci[1]}
        if self.cpr:
            row |= {"CPR mean": float(np.mean(self.cpr)), "CPR std": float(np.std(self.cpr, ddof=1)),
                    "CMD mean": float(np.mean(self.cmd)), "CMD std": float(np.std(self.cmd, ddof=1))}
        if self.templates:
            row["template jaccard"] = self.templates["jaccard_mean"]
        return pd.DataFrame([row])

    def _summary_lines(self) -> list[str]:
        lines = [f"{self.method}: top-{self.k} edge Jaccard over {self.n_resamples} resamples "
                 f"{self.jaccard_mean:.3f} [{self.jaccard_ci[0]:.3f}, {self.jaccard_ci[1]:.3f}]"]
        if self.cpr:
            lines.append(f"CPR {np.mean(self.cpr):.3f} +- {np.std(self.cpr, ddof=1):.3f} (std over resamples)")
        if self.templates:
            lines.append(f"across {len(self.templates['names'])} templates: Jaccard {self.templates['jaccard_mean']:.3f}")
        return lines


def circuit_stability(
    model: Any,
    ds: Any,
    *,
    method: str = "eap",
    ig_steps: int | None = None,
    k: int = 20,
    n_resamples: int = 10,
    seed: int = 0,
    by_template: bool = True,
    faithfulness: bool = True,
    fractions: Any = MIB_FRACTIONS,
    batch_size: int | None = None,
    progress: bool = True,
) -> CircuitStability:
    """Top-``k`` edge overlap of ``method``'s circuits over bootstrap resamples of ``ds``.

    Args:
        method: the edge scoring (:func:`~mechlens.circuits.edge_attribution_patch`'s ``method``).
        ig_steps: its integration steps (:func:`~mechlens.circuits.edge_attribution_patch`).
        k: circuit size compared (edges with the largest ``|score|``).
        n_resamples: bootstrap resamples of the prompts (with replacement; at least 2).
        seed: seeds the resamples.
        by_template: also compare the circuits of each template's prompts (when the dataset
            records ``meta["template_index"]`` and has at least two templates).
        faithfulness: also measure each resample's CPR / CMD on the full ``ds`` (one
            :func:`~mechlens.circuits.faithfulness_curve` run, all rankings sharing passes).
        fractions: the circuit sizes of those curves.
        batch_size: sequences per forward/backward pass.
        progress: progress bar over resamples.
    """
    args = dict(locals())
    check_model(model)
    ds = prepare_dataset(model, ds)
    if method not in EAP_METHODS:
        raise ValueError(f"method={method!r}: choose one of {list(EAP_METHODS)}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 2:
        raise ValueError(f"n_resamples={n_resamples!r} must be an int >= 2 (overlap needs pairs)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an int >= 1")
    g = torch.Generator().manual_seed(seed)

    def score(sub: Any) -> Any:
        return edge_attribution_patch(model, sub, method=method, ig_steps=ig_steps, batch_size=batch_size,
                                      progress=False)

    def top(edges: Any) -> tuple[list[str], Any]:
        order = edge_ranking(model, edges)[:k]
        senders, receivers = edges.labels["sender"], edges.labels["receiver"]
        nr = len(receivers)
        return [f"{senders[int(i) // nr]}->{receivers[int(i) % nr]}" for i in order], edges

    tops, scorings = [], {}
    for r in progress_iter(range(n_resamples), progress, "bootstrap resamples"):
        idx = torch.randint(0, ds.batch, (ds.batch,), generator=g)
        t, edges = top(score(ds[idx]))
        tops.append(t)
        scorings[f"resample {r}"] = edges.values
    sets = [set(t) for t in tops]
    mat = np.array([[jaccard(a, b) for b in sets] for a in sets])
    mean, lo, hi = _mean_ci(mat, seed=seed)
    cpr: list[float] = []
    cmd: list[float] = []
    if faithfulness:
        fc = faithfulness_curve(model, ds, scorings, fractions=fractions, n_random=0, batch_size=batch_size,
                                progress=progress)
        cpr = [fc.cpr[s] for s in scorings]
        cmd = [fc.cmd[s] for s in scorings]
    templates: dict[str, Any] = {}
    which = ds.meta.get("template_index") if by_template else None
    if which is not None and len(set(which)) >= 2 and len(which) == ds.batch:
        names = sorted(set(int(t) for t in which))
        t_sets = []
        for t in names:
            sel = [i for i, w in enumerate(which) if int(w) == t]
            t_sets.append(set(top(score(ds[sel]))[0]))
        pairs = [jaccard(a, b) for a, b in itertools.combinations(t_sets, 2)]
        templates = {"names": [str(ds.meta.get("templates", names)[t]) if ds.meta.get("templates") else str(t)
                               for t in names],
                     "top_edges": [sorted(s) for s in t_sets], "jaccard_pairs": pairs,
                     "jaccard_mean": float(np.mean(pairs))}
    return CircuitStability(
        **provenance(model, ds, args=args), method=method, k=k, n_resamples=n_resamples, top_edges=tops,
        jaccard=mat.tolist(), jaccard_mean=mean, jaccard_ci=(lo, hi), cpr=cpr, cmd=cmd, templates=templates,
    )
