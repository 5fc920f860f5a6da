"""Faithfulness curves of edge scorings, with the MIB benchmark's CPR and CMD.

**What is measured** (Mueller et al. 2025, "MIB: a Mechanistic Interpretability Benchmark",
arXiv 2504.13151, circuit-localization track). A scoring ranks the model's edges (EAP,
EAP-IG, or any ``[sender, receiver]`` scores a user supplies). For each circuit size — a
fraction of all edges — keep the top edges by ``|score|`` and patch every other edge from the
corrupt run, exactly (:func:`~mechlens.circuits.eap.pruned_run`). The faithfulness of the
circuit is

    f = (M(circuit) - M(empty)) / (M(full) - M(empty))

with ``M`` the mean metric over the prompts (logit difference), ``M(full)`` the clean run (no
edge patched) and ``M(empty)`` the corrupt run (every edge patched). The curve of ``f`` over
circuit sizes gives

- **CPR** (circuit performance ratio): the area under the curve; higher is better;
- **CMD** (circuit-model distance): the area between the curve and 1, ``|1 - f|``; lower is
  better.

**Where we follow MIB** (its ``evaluate_area_under_curve``): the size grid (fractions 0.001,
0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1 of the edges, ``k = int(fraction *
n_edges)``), the normalisation by the empty and full circuits (means over prompts before
dividing), the trapezoidal rule on the linear fraction axis, ``|score|`` ranking, and
patching from the counterfactual (corrupt) prompts.

**Where we do not**: MIB prunes edges that no longer connect the input to the logits after
taking the top ``k`` (``apply_topn(prune=True)``); we keep the top ``k`` edges as they are (a
dangling kept edge carries the value it has in the patched run, so it changes nothing where
MIB would drop it, but the count of edges differs). ``n_edges`` counts the real edges of
:func:`~mechlens.circuits.eap.eap_nodes` (receivers are q/k/v per head, MLPs, logits). We add
random edge sets of every size (``n_random`` draws) as the floor a ranking must beat, with
their CPR/CMD spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechlens.circuits.eap import EdgeScores, eap_nodes, pruned_run
from mechlens.engine import prepare_dataset
from mechlens.model_protocol import check_model
from mechlens.results import Measurement, provenance
from mechlens.validate import check_batch_size

__all__ = ["MIB_FRACTIONS", "FaithfulnessCurve", "faithfulness_curve", "cpr_cmd", "edge_ranking", "node_ranking"]

LEVELS = ("edges", "nodes")

#: The circuit sizes of the MIB circuit track, as fractions of all edges.
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def cpr_cmd(fractions: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """CPR (area under the curve) and CMD (area of ``|1 - f|``) by the trapezoidal rule over
    the circuit-size fractions, as MIB computes them."""
    cpr = cmd = 0.0
    for i in range(len(fractions) - 1):
        w = fractions[i + 1] - fractions[i]
        cpr += w * (faithfulness[i] + faithfulness[i + 1]) / 2
        cmd += w * (abs(1 - faithfulness[i]) + abs(1 - faithfulness[i + 1])) / 2
    return cpr, cmd


def edge_ranking(model: Any, scores: EdgeScores | Tensor) -> Tensor:
    """Real edges' flat indices, by ``|score|`` descending (ties in index order)."""
    senders, receivers, valid = eap_nodes(model)
    mask = torch.tensor(valid)
    vals = scores.values if isinstance(scores, Measurement) else torch.as_tensor(scores)
    if tuple(vals.shape) != tuple(mask.shape):
        raise ValueError(f"scores must be [sender, receiver] = {tuple(mask.shape)} for this model, got "
                         f"{tuple(vals.shape)}; compute them with edge_attribution_patch on this model")
    order = torch.argsort(vals.detach().float().cpu().abs().masked_fill(~mask, -1.0).flatten(), descending=True,
                          stable=True)
    return order[: int(mask.sum())]


def node_ranking(model: Any, scores: EdgeScores | Tensor) -> Tensor:
    """Sender (node) indices by ``|score|`` descending (ties in index order). ``scores`` is a
    ``[sender]`` tensor, or edge scores ``[sender, receiver]`` summed over each sender's
    outgoing edges (for EAP that sum is the node's attribution-patching score)."""
    senders, _, valid = eap_nodes(model)
    vals = scores.values if isinstance(scores, Measurement) else torch.as_tensor(scores)
    vals = vals.detach().float().cpu()
    if vals.ndim == 2:
        edge_ranking(model, vals)  # checks the shape
        vals = (vals * torch.tensor(valid)).sum(1)
    if tuple(vals.shape) != (len(senders),):
        raise ValueError(f"node scores must be [sender] = ({len(senders)},) or edge scores [sender, receiver] for "
                         f"this model, got {tuple(vals.shape)}")
    return torch.argsort(vals.abs(), descending=True, stable=True)


@dataclass(kw_only=True)
class FaithfulnessCurve(Measurement):
    """Faithfulness of the top edges of each scoring over circuit sizes (MIB's CPR and CMD).

    ``per_example`` ``[scoring, fraction, batch]`` is the metric (logit difference) of the
    pruned runs; ``faithfulness[scoring]`` the normalised curve (means over prompts);
    ``level`` says whether the circuits were sets of edges or of nodes (``n_nodes`` of them);
    ``cpr`` / ``cmd`` per scoring; ``random`` holds, per random draw, the curve, CPR and CMD
    (scoring ``"random"`` in ``per_example`` is the mean over draws).
    """

    fractions: list[float] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    n_edges: int = 0
    level: str = "edges"
    n_nodes: int = 0
    clean: float = 0.0
    corrupt: float = 0.0
    faithfulness: dict[str, list[float]] = field(default_factory=dict)
    cpr: dict[str, float] = field(default_factory=dict)
    cmd: dict[str, float] = field(default_factory=dict)
    random: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """One row per scoring: CPR, CMD (random: mean and std over draws)."""
        import pandas as pd

        rows = [{"scoring": s, "CPR": self.cpr[s], "CMD": self.cmd[s]} for s in self.cpr]
        df = pd.DataFrame(rows)
        if self.random:
            df["CPR std"] = [self.random["cpr_std"] if s == "random" else 0.0 for s in self.cpr]
            df["CMD std"] = [self.random["cmd_std"] if s == "random" else 0.0 for s in self.cpr]
        return df

    def plot(self, ci: bool = False, *, title: str | None = None) -> Any:  # noqa: ARG002 - Measurement's signature
        """The faithfulness curves (log fraction axis), random edges as mean +- std band."""
        from mechlens.viz.circuits import plot_faithfulness

        return plot_faithfulness(self, title=title)

    def _summary_lines(self) -> list[str]:
        size = f"{self.n_nodes} nodes" if self.level == "nodes" else f"{self.n_edges} edges"
        return [f"faithfulness over {len(self.fractions)} circuit sizes of {size}"] + [
            f"{s}: CPR {self.cpr[s]:.3f}, CMD {self.cmd[s]:.3f}" for s in self.cpr
        ]


def faithfulness_curve(
    model: Any,
    ds: Any,
    scores: EdgeScores | Tensor | Mapping[str, EdgeScores | Tensor],
    *,
    fractions: Sequence[float] = MIB_FRACTIONS,
    n_random: int = 5,
    seed: int = 0,
    level: str = "edges",
    batch_size: int | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> FaithfulnessCurve:
    """Faithfulness curve, CPR and CMD of one or several edge scorings (MIB's definitions).

    Args:
        model: the model the scores were computed on.
        ds: a :class:`~mechlens.data.ContrastDataset` (the clean and corrupt prompts).
        scores: an :func:`~mechlens.circuits.edge_attribution_patch` result, a ``[sender,
            receiver]`` tensor, or a mapping name -> either (several scorings, one curve each).
        fractions: circuit sizes as fractions of all edges, increasing, in (0, 1] (default:
            MIB's grid).
        n_random: random edge sets per size (seeded by ``seed``); 0 for none.
        level: ``"edges"`` (MIB's circuits of edges) or ``"nodes"``: circuits of components
            (the senders: the embedding, every head, every MLP), ranked by node scores
            (``[sender]``, or edge scores summed over each sender's outgoing edges); a node
            outside the circuit has every outgoing edge patched, i.e. its output replaced by
            its corrupt output for every reader; ``fractions`` are then of the nodes.
        batch_size: sequences per forward pass; all (scoring, size) configurations run on
            the engine's grid, stacked on the batch axis.
        backend: ``"auto"``, ``"fast"`` or ``"hooks"`` (:mod:`mechlens.engine`); the same numbers.
        progress: progress bar over passes.

    Returns:
        A :class:`FaithfulnessCurve` (``.table()``, ``.plot()``).
    """
    args = {"fractions": list(fractions), "n_random": n_random, "seed": seed, "level": level,
            "batch_size": batch_size}
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: choose one of {list(LEVELS)}")
    check_model(model)
    check_batch_size(batch_size)
    ds = prepare_dataset(model, ds)
    fracs = [float(f) for f in fractions]
    if not fracs or any(not 0 < f <= 1 for f in fracs) or fracs != sorted(set(fracs)):
        raise ValueError(f"fractions={list(fractions)!r}: give increasing fractions of the edges in (0, 1]")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random={n_random!r} must be an int >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")
    named = dict(scores) if isinstance(scores, Mapping) else {"scores": scores}
    if not named or "random" in named:
        raise ValueError("scores: give one scoring or a non-empty mapping name -> scores (the name 'random' is taken)")
    senders, _, valid = eap_nodes(model)
    mask = torch.tensor(valid)
    n_edges = int(mask.sum())
    n_items = n_edges if level == "edges" else len(senders)
    ks = [int(f * n_items) for f in fracs]
    # what a circuit is made of: real edges (flat indices) or senders
    items = mask.flatten().nonzero().flatten() if level == "edges" else torch.arange(len(senders))
    ranking = edge_ranking if level == "edges" else node_ranking

    def pruned_of(kept: Tensor) -> Tensor:
        if level == "nodes":
            pruned = mask.clone()
            pruned[kept] = False  # a kept node's outgoing edges stay clean
            return pruned
        pruned = mask.clone().flatten()
        pruned[kept] = False
        return pruned.view(mask.shape)

    configs = [torch.ones_like(mask), torch.zeros_like(mask)]  # empty circuit, full model
    for sc in named.values():
        order = ranking(model, sc)
        configs += [pruned_of(order[:k]) for k in ks]
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_random):
        perm = items[torch.randperm(n_items, generator=g)]  # nested sets: one draw grows with k
        configs += [pruned_of(perm[:k]) for k in ks]
    ys = pruned_run(model, ds, torch.stack(configs), batch_size=batch_size, progress=progress, backend=backend)
    empty, full = ys[0], ys[1]
    m_empty, m_full = float(empty.mean()), float(full.mean())
    if abs(m_full - m_empty) < 1e-8:
        raise ValueError("the clean and corrupt runs give the same mean metric: faithfulness is undefined")

    def faith(curve: Tensor) -> list[float]:
        return [(float(c.mean()) - m_empty) / (m_full - m_empty) for c in curve]

    per = ys[2:2 + len(named) * len(ks)].view(len(named), len(ks), ds.batch)
    out: dict[str, list[float]] = {}
    cpr: dict[str, float] = {}
    cmd: dict[str, float] = {}
    for i, name in enumerate(named):
        out[name] = faith(per[i])
        cpr[name], cmd[name] = cpr_cmd(fracs, out[name])
    rows = [per]
    random: dict[str, Any] = {}
    if n_random:
        rnd = ys[2 + len(named) * len(ks):].view(n_random, len(ks), ds.batch)
        curves = [faith(rnd[r]) for r in range(n_random)]
        areas = [cpr_cmd(fracs, c) for c in curves]
        mean_curve = [sum(c[j] for c in curves) / n_random for j in range(len(ks))]
        out["random"] = mean_curve
        cprs = torch.tensor([a[0] for a in areas])
        cmds = torch.tensor([a[1] for a in areas])
        cpr["random"], cmd["random"] = float(cprs.mean()), float(cmds.mean())
        random = {"n": n_random, "seed": seed, "curves": curves, "cpr": cprs.tolist(), "cmd": cmds.tolist(),
                  "cpr_std": float(cprs.std()) if n_random > 1 else 0.0,
                  "cmd_std": float(cmds.std()) if n_random > 1 else 0.0}
        rows.append(rnd.mean(0, keepdim=True))
    per_example = torch.cat(rows)
    names = [*named, *(["random"] if n_random else [])]
    return FaithfulnessCurve(
        per_example=per_example, axes=("scoring", "fraction"), labels={"scoring": names, "fraction": fracs},
        metric="logit_diff", **provenance(model, ds, args=args),
        fractions=fracs, ks=ks, n_edges=n_edges, level=level, n_nodes=len(senders), clean=m_full, corrupt=m_empty, faithfulness=out, cpr=cpr, cmd=cmd,
        random=random,
    )
