"""Edge attribution patching (EAP): a first-order score for every edge of the model's graph.

**The method** (Syed, Rager and Conmy 2023, "Attribution patching outperforms automated
circuit discovery"; the edge semantics of ``auto-circuit``). Read the model as a graph:
*upstream nodes* write into the residual stream (the embeddings, every attention head
through ``z @ W_O``, every MLP), *downstream nodes* read from it (every head's query, key
and value input, every MLP's input, and the final residual that is unembedded). An edge
``u -> v`` exists when ``u`` writes before ``v`` reads. Patching the edge alone means: give
``v`` the input it would get if only ``u``'s output came from the corrupt run. To first
order the metric then changes by

    score(u -> v) = (a_u^corrupt - a_u^clean) . dM/d(input of v)

with the gradient taken on the clean run (``mode="noise"`` in patching terms: what breaks
when the corrupt value flows along this one edge). One corrupt forward pass and one clean
forward and backward pass give every edge at once. Summed over ``u``'s outgoing edges the
scores equal ``u``'s node attribution-patching score (the gradient of the residual stream
is the sum of the gradients of its readers), which the tests check.

**How to read the result.** An :class:`EdgeScores` with axes
``("sender", "receiver")`` and per-example scores ``[sender, receiver, batch]`` in metric
units (the change of the logit difference if the edge were patched; negative = the edge
carries what the clean prompt needs). Edges that do not exist (a receiver before its
sender) are 0; ``valid`` marks the real ones. ``result.top(20)`` lists the edges
with the largest ``|score|``: the candidate circuit. The approximation is linear: check the
edges that matter with path patching (:func:`mechlens.patching.path_patch`).

Node names: senders ``embed``, ``L{l}H{h}``, ``L{l} mlp``; receivers ``L{l}H{h}.q``,
``L{l}H{g}.k`` / ``.v`` (``g`` a key/value head on grouped-query models), ``L{l} mlp``,
``logits``.

Example::

    from mechlens.models import load_model
    from mechlens.data import ioi
    from mechlens.circuits import edge_attribution_patch

    model = load_model("smollm2-135m")
    ds = ioi(model, n_prompts=16)
    edges = edge_attribution_patch(model, ds, batch_size=8)
    edges.top(20)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechlens.engine import (
    Hook,
    batches,
    cached_run,
    grad_run,
    ig_alphas,
    interpolate_hook,
    logit_diff_metric,
    prepare_dataset,
    progress_bar,
    run_grid,
    split_qkv_input,
)
from mechlens.metrics import logit_diff
from mechlens.model_protocol import check_model, is_bridge, qkv_input_hook
from mechlens.results import Measurement, provenance
from mechlens.validate import check_batch_size

__all__ = [
    "EAP_METHODS", "INTERPOLATIONS", "EdgeScores", "EdgeFaithfulness", "edge_attribution_patch", "eap_ig", "eap_faithfulness",
    "eap_nodes", "pruned_run",
]


@dataclass(kw_only=True, repr=False)
class EdgeScores(Measurement):
    """Edge attribution scores of every ``sender -> receiver`` edge of the model's graph, per
    example (axes ``("sender", "receiver")``, labels the node names), in metric units.

    ``valid`` ``[sender, receiver]`` marks the edges that exist (a receiver after its sender;
    the others score 0), ``method`` is the scoring (``"eap"``, ``"eap-ig-inputs"``,
    ``"eap-ig-activations"``), ``ig_steps`` its integration steps, ``score`` says what a score
    is, ``baselines`` hold the clean and corrupt metric per example.
    """

    LEGACY = ("PatchResult", "eap", {"valid": "meta.valid", "method": "meta.attribution",
                                     "ig_steps": "meta.ig_steps", "score": "meta.score"})

    valid: Bool[Tensor, "sender receiver"]
    method: str = "eap"
    ig_steps: int = 1
    score: str = ""
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.valid = torch.as_tensor(self.valid, dtype=torch.bool)
        if tuple(self.valid.shape) != tuple(self.shape):
            raise ValueError(f"valid has shape {tuple(self.valid.shape)}; the scores are {tuple(self.shape)}")

    @property
    def n_edges(self) -> int:
        """The number of edges that exist."""
        return int(self.valid.sum())

    def _title(self) -> str:
        return f"{self.method} edge scores on {self.dataset or 'dataset'}"

    def _summary_lines(self) -> list[str]:
        steps = "" if self.method == "eap" else f", {self.ig_steps} steps"
        return [f"{self.method} scores of {self.n_edges} edges{steps}", *super()._summary_lines()]


@dataclass(kw_only=True, repr=False)
class EdgeFaithfulness(Measurement):
    """What :func:`eap_faithfulness` measures: the metric per example when only the top ``k``
    edges (axis ``"k"``) carry clean values.

    ``n_edges`` is the number of edges of the graph, ``ranking`` how edges were ranked,
    ``random`` (with ``n_random > 0``) the random edge sets of each size: ``"n"``, ``"seed"``,
    per ``k`` the mean over draws of the mean metric (``"mean"``), its standard deviation
    (``"std"``) and every draw's mean (``"draws"``, ``[k][draw]``); ``baselines`` hold the
    clean and corrupt metric.
    """

    LEGACY = ("PatchResult", "eap_faithfulness", {"n_edges": "meta.n_edges", "ranking": "meta.ranking",
                                                  "random": "meta.random"})

    n_edges: int
    ranking: str = "|mean score|"
    random: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)

    def _title(self) -> str:
        return f"{self.metric} with the top k of {self.n_edges} edges on {self.dataset or 'dataset'}"


def eap_nodes(model: Any) -> tuple[list[str], list[str], list[list[bool]]]:
    """Sender names, receiver names, and which (sender, receiver) edges exist."""
    n, h = int(model.cfg.n_layers), int(model.cfg.n_heads)
    kv = int(getattr(model.cfg, "n_key_value_heads", None) or h)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    senders: list[tuple[str, int, str]] = [("embed", -1, "embed")]
    receivers: list[tuple[str, int, str]] = []
    for layer in range(n):
        senders += [(f"L{layer}H{i}", layer, "head") for i in range(h)] + [(f"L{layer} mlp", layer, "mlp")]
        receivers += [(f"L{layer}H{i}.q", layer, "head") for i in range(h)]
        receivers += [(f"L{layer}H{i}.k", layer, "head") for i in range(kv)]
        receivers += [(f"L{layer}H{i}.v", layer, "head") for i in range(kv)]
        receivers.append((f"L{layer} mlp", layer, "mlp"))
    receivers.append(("logits", n, "logits"))

    def ok(s: tuple[str, int, str], r: tuple[str, int, str]) -> bool:
        if r[2] == "logits" or s[2] == "embed":
            return True
        if s[1] < r[1]:
            return True
        return s[1] == r[1] and s[2] == "head" and r[2] == "mlp" and not parallel

    valid = [[ok(s, r) for r in receivers] for s in senders]
    return [s[0] for s in senders], [r[0] for r in receivers], valid


def sender_writes(acts: dict[str, Tensor], w_o: Sequence[Tensor]) -> Tensor:
    """``[batch, sender, pos, d]``: each sender's write into the residual stream (the
    embedding, every head's ``z @ W_O``, every MLP's output) from the activations at
    ``blocks.0.hook_resid_pre``, ``hook_z`` and ``hook_mlp_out``; senders before positions, so
    a run of senders is a view and a sum over them one batched matrix product."""
    ups = [acts["blocks.0.hook_resid_pre"][:, None]]
    for layer, w in enumerate(w_o):
        z = acts[f"blocks.{layer}.attn.hook_z"]
        ups.append(torch.einsum("bphe,hem->bhpm", z, w.to(z.dtype)))
        ups.append(acts[f"blocks.{layer}.hook_mlp_out"][:, None])
    return torch.cat(ups, dim=1)


def _mlp_input_hook(model: Any, layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_in" if is_bridge(model) else f"blocks.{layer}.hook_mlp_in"


@contextmanager
def _forks(model: Any) -> Iterator[None]:
    """Per-head q/k/v input forks, and (HookedTransformer) the MLP input fork."""
    with ExitStack() as stack:
        stack.enter_context(split_qkv_input(model))
        if not is_bridge(model) and hasattr(model, "set_use_hook_mlp_in"):
            saved = bool(getattr(model.cfg, "use_hook_mlp_in", False))
            model.set_use_hook_mlp_in(True)
            stack.callback(model.set_use_hook_mlp_in, saved)
        yield


#: what EAP-IG interpolates: the input embeddings or each sender group's output
INTERPOLATIONS = ("inputs", "activations")
EAP_METHODS = ("eap", *(f"eap-ig-{i}" for i in INTERPOLATIONS))


def edge_attribution_patch(
    model: Any,
    ds: Any,
    *,
    metric: str | Callable[..., Tensor] = "logit_diff",
    method: str = "eap",
    ig_steps: int | None = None,
    batch_size: int | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> EdgeScores:
    """Score every edge ``sender -> receiver`` by ``(a_corrupt - a_clean) . dM/d(receiver input)``.

    ``method`` picks where the gradient is taken (the names of the MIB benchmark, Mueller et
    al. 2025, and of Hanna et al. 2024's EAP-IG code):

    - ``"eap"``: on the clean run (Syed et al. 2023); ``ig_steps`` must be 1.
    - ``"eap-ig-inputs"``: averaged over ``ig_steps`` runs whose input embeddings
      (``blocks.0.hook_resid_pre``) are interpolated, ``e_corrupt + alpha (e_clean -
      e_corrupt)`` for ``alpha = k / ig_steps``, ``k = 1..ig_steps`` (integrated gradients,
      Hanna et al. 2024). Summed over the embedding's outgoing edges the scores tend to
      ``M(corrupt) - M(clean)`` as ``ig_steps`` grows (completeness).
    - ``"eap-ig-activations"``: per sender group (the embedding, each layer's heads, each
      MLP), ``ig_steps`` runs in which only that group's output is interpolated between its
      corrupt and clean value; the edges out of the group use the gradients of those runs.
      Summed over a group's outgoing edges the scores tend to ``M(clean, group corrupted) -
      M(clean)``. MIB's reference code averages every edge over the runs of *all* groups; we
      use each group's own runs, which is what makes the group's edges complete.

    We use the right Riemann sum (``k = 1..ig_steps``) in both variants, so that
    ``ig_steps=1`` is exactly EAP (MIB's inputs variant uses ``k = 0..ig_steps-1``).

    Args:
        model: a TransformerLens model whose attention has per-head q/k/v input forks
            (``use_split_qkv_input``).
        ds: a :class:`~mechlens.data.ContrastDataset`.
        metric: ``"logit_diff"`` or a differentiable ``metric(logits, ds) -> [batch]``.
        method: ``"eap"``, ``"eap-ig-inputs"`` or ``"eap-ig-activations"``.
        ig_steps: integration steps (default 1 for ``"eap"``, 5 for the EAP-IG methods).
        batch_size: sequences per forward/backward pass (default
            ``mechlens.engine.DEFAULT_BATCH_SIZE``); integration steps are stacked on the
            batch axis up to this bound.
        backend: ``"auto"``, ``"fast"`` or ``"hooks"`` (:mod:`mechlens.engine`). On the fast
            backend the runs of ``"eap-ig-activations"`` start at the block of the group they
            interpolate (everything before it is the clean run), and with the logit
            difference only the final position is unembedded; the scores are the same.
        progress: show a progress bar over passes.

    Returns:
        An :class:`EdgeScores` with axes ``("sender", "receiver")``; ``valid`` marks the
        edges that exist, ``method`` and ``ig_steps`` say how they were scored, ``baselines``
        hold the clean and corrupt metric.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    check_batch_size(batch_size)
    if not callable(metric) and metric != "logit_diff":
        raise ValueError(f"metric={metric!r}: choose 'logit_diff' or a differentiable callable(logits, ds)")
    if method not in EAP_METHODS:
        raise ValueError(f"method={method!r}: choose one of {list(EAP_METHODS)}")
    steps = (1 if method == "eap" else 5) if ig_steps is None else ig_steps
    alphas = ig_alphas(steps)
    if method == "eap" and steps != 1:
        raise ValueError(f"ig_steps={steps}: method='eap' takes one gradient; use method='eap-ig-inputs' or "
                         "'eap-ig-activations' for integrated gradients")
    ds = prepare_dataset(model, ds)
    n, h = int(model.cfg.n_layers), int(model.cfg.n_heads)
    senders, receivers, valid = eap_nodes(model)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n)]
    mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(n)]
    value_names = ["blocks.0.hook_resid_pre", *z_names, *mlp_names]
    kv = int(getattr(model.cfg, "n_key_value_heads", None) or h)
    recv_names: list[tuple[str, int]] = []  # (hook, heads; 0 = one receiver) in receiver order, per layer
    for layer in range(n):
        recv_names += [(qkv_input_hook(model, layer, w), h if w == "q" else kv) for w in "qkv"]
        recv_names.append((_mlp_input_hook(model, layer), 0))
    recv_names.append((f"blocks.{n - 1}.hook_resid_post", 0))
    names = [nm for nm, _ in recv_names]
    w_o = [model.blocks[layer].attn.W_O.detach() for layer in range(n)]
    # sender groups (what "eap-ig-activations" interpolates together): output hook, senders
    groups: list[tuple[str, slice]] = [("blocks.0.hook_resid_pre", slice(0, 1))]
    for layer in range(n):
        first = 1 + layer * (h + 1)
        groups += [(z_names[layer], slice(first, first + h)), (mlp_names[layer], slice(first + h, first + h + 1))]
    # eap-ig-activations: every group's last step (alpha = 1) is the clean run, so configuration 0
    # is that one shared run and configuration 1 + g (steps - 1) + j is step j of group g
    n_configs = 1 if steps == 1 else (steps if method == "eap-ig-inputs" else 1 + (steps - 1) * len(groups))
    # the first block each configuration changes: a group's runs are the clean run before it
    start = [0] * n_configs if method != "eap-ig-activations" or steps == 1 else [0] + [
        max(0, (g - 1) // 2) for g in range(len(groups)) for _ in range(steps - 1)]

    def group_of(configs: Tensor) -> Tensor:
        """eap-ig-activations: the group each configuration interpolates (-1: the clean run)."""
        return torch.div(configs - 1, steps - 1, rounding_mode="floor")

    def fn(logits: Tensor, sub: Any) -> Tensor:
        y = logit_diff(logits, sub.answers) if not callable(metric) else torch.as_tensor(metric(logits, sub))
        if y.shape != (sub.batch,):
            raise ValueError(f"metric must return one value per example, shape ({sub.batch},), got {tuple(y.shape)}")
        return y

    def sender_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        """[b, n_senders, pos, d]: every sender's write into the residual stream, ``a`` minus ``b``."""
        return sender_writes({nm: a[nm] - b[nm] for nm in value_names}, w_o).float()

    def edge_scores(up: Tensor, g: Tensor) -> Tensor:
        """``[senders, receivers, b]``: ``up`` ``[b, senders, pos, d]`` dotted with the
        gradients ``g`` ``[b, pos, receivers, d]`` over positions and the model dimension."""
        b_, u_, p_, d_ = up.shape
        gt = g.permute(0, 2, 1, 3).reshape(b_, g.shape[2], p_ * d_)
        return torch.bmm(up.reshape(b_, u_, p_ * d_), gt.transpose(1, 2)).permute(1, 2, 0)

    scores = torch.zeros(len(senders), len(receivers), ds.batch)
    y_clean = torch.empty(ds.batch)
    y_corrupt = torch.empty(ds.batch)
    mask = torch.tensor(valid)
    # each receiver hook reads a prefix of the senders (they are in layer order): score only those
    spans: list[tuple[str, int, int, int]] = []  # (hook, first receiver, receivers, senders it reads)
    first_r = 0
    for nm, heads in recv_names:
        count = max(heads, 1)
        u = int(mask[:, first_r].sum())
        assert bool(mask[:u, first_r : first_r + count].all()) and not bool(mask[u:, first_r : first_r + count].any())
        spans.append((nm, first_r, count, u))
        first_r += count
    assert first_r == len(receivers)

    def grad_of(gb: Any, nm: str, heads: int) -> Tensor | None:
        """[rows, pos, receivers, d] at one hook (None where no block of the pass reached it)."""
        g = gb.grads.get(nm)
        return None if g is None else (g if heads else g[:, :, None]).float()

    chunks = batches(ds.batch, batch_size)
    bar = progress_bar(len(chunks) * len(batches(n_configs * (chunks[0].stop - chunks[0].start), batch_size)),
                       progress, "edge attribution" if steps == 1 else f"{method} ({steps} steps)")
    for sl in chunks:
        sub = ds[list(range(sl.start, sl.stop))]
        logits_k, corrupt = cached_run(model, sub.corrupt_tokens, value_names)
        y_corrupt[sl] = fn(logits_k, sub).detach().float().cpu()
        clean: dict[str, Tensor] = {}
        grad_sum: dict[str, Tensor] = {}
        if steps > 1:  # the clean values for the differences and the interpolation
            logits_c, clean = cached_run(model, sub.clean_tokens, value_names)
            y_clean[sl] = fn(logits_c, sub).detach().float().cpu()
            up_all = sender_diff(corrupt, clean)

        def interpolations(configs: Tensor, examples: Tensor, clean: dict[str, Tensor] = clean,
                           corrupt: dict[str, Tensor] = corrupt) -> list[Hook]:
            if steps == 1:
                return []
            if method == "eap-ig-inputs":
                nm = "blocks.0.hook_resid_pre"
                alpha = torch.tensor(alphas)[configs % steps]
                return [interpolate_hook(nm, clean[nm][examples], corrupt[nm][examples], alpha)]
            group = group_of(configs)
            alpha = torch.tensor(alphas)[(configs - 1).clamp(min=0) % (steps - 1)]
            return [
                interpolate_hook(nm, clean[nm][examples], corrupt[nm][examples], torch.where(group == g, alpha, 1.0))
                for g, (nm, _) in enumerate(groups) if bool((group == g).any())
            ]

        def rows_metric(logits: Tensor, examples: Tensor, sub: Any = sub) -> Tensor:
            return fn(logits, sub[examples.tolist()])

        with _forks(model):
            for gb in grad_run(model, sub.clean_tokens, rows_metric, save=value_names if steps == 1 else (),
                               grad_at=names, n_configs=n_configs, hooks=interpolations,
                               batch_size=batch_size, allow_unused=True, backend=backend, start_layer=start,
                               output="all" if callable(metric) else "last"):
                bar.update(1)
                if steps == 1:
                    y_clean[sl] = gb.metric.float().cpu()
                    up = sender_diff(corrupt, gb.saved)
                    for (nm, heads), (_, r0, count, u) in zip(recv_names, spans):
                        g = grad_of(gb, nm, heads)
                        assert g is not None
                        scores[:u, r0 : r0 + count, sl] = edge_scores(up[:, :u], g).cpu()
                elif method == "eap-ig-inputs":  # the differences are fixed: average the gradients first
                    for nm, heads in recv_names:
                        g = grad_of(gb, nm, heads)
                        assert g is not None
                        if nm not in grad_sum:
                            grad_sum[nm] = torch.zeros((sl.stop - sl.start, *g.shape[1:]), device=g.device)
                        grad_sum[nm].index_add_(0, gb.examples.to(g.device), g)
                else:  # a row's gradients score only the edges out of the group it interpolates
                    group = group_of(gb.configs)
                    # the shared clean run (-1) scores every group's edges
                    pairs = [(c, groups[g][1]) for c in group.unique().tolist()
                             for g in (range(len(groups)) if c < 0 else [c])]
                    for gi, sg in pairs:
                        rows = (group == gi).nonzero().flatten()
                        ex = gb.examples[rows]
                        up_g = up_all[:, sg][ex.to(up_all.device)]
                        for (nm, heads), (_, r0, count, u) in zip(recv_names, spans):
                            hi = min(sg.stop, u)
                            g = grad_of(gb, nm, heads)
                            if hi <= sg.start or g is None:  # the group cannot reach this receiver
                                continue
                            s_ = edge_scores(up_g[:, : hi - sg.start], g[rows.to(g.device)])
                            scores[sg.start : hi, r0 : r0 + count].index_add_(2, ex + sl.start, s_.cpu() / steps)
                del gb
            if method == "eap-ig-inputs" and steps > 1:
                for nm, r0, count, u in spans:
                    s_ = edge_scores(up_all[:, :u], grad_sum[nm] / steps)
                    scores[:u, r0 : r0 + count, sl] = s_.cpu()
        # let this chunk's runs go before the next chunk's: memory stays one chunk's
        logits_k = logits_c = corrupt = clean = grad_sum = up = up_all = g = s_ = None  # type: ignore[assignment]
    bar.close()
    assert scores.shape[1] == len(receivers) and h > 0
    return EdgeScores(
        per_example=scores, axes=("sender", "receiver"), labels={"sender": senders, "receiver": receivers},
        metric="logit_diff" if not callable(metric) else getattr(metric, "__name__", "custom"),
        valid=torch.tensor(valid), method=method, ig_steps=steps,
        score="(a_corrupt - a_clean) . dM/d(receiver input)" + (", clean run" if steps == 1 else
              f", gradient averaged over {steps} interpolation steps ({method})"),
        baselines={"clean": y_clean, "corrupt": y_corrupt}, **provenance(model, ds, args=args),
    )


def eap_ig(
    model: Any,
    ds: Any,
    *,
    interpolate: str = "inputs",
    ig_steps: int = 5,
    metric: str | Callable[..., Tensor] = "logit_diff",
    batch_size: int | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> EdgeScores:
    """EAP with integrated gradients (Hanna et al. 2024): :func:`edge_attribution_patch` with
    ``method="eap-ig-" + interpolate`` (``"inputs"`` or ``"activations"``, the two variants of
    the MIB benchmark) and ``ig_steps`` steps."""
    if interpolate not in INTERPOLATIONS:
        raise ValueError(f"interpolate={interpolate!r}: choose 'inputs' (the input embeddings) or 'activations' "
                         "(each sender group's output)")
    return edge_attribution_patch(model, ds, metric=metric, method=f"eap-ig-{interpolate}", ig_steps=ig_steps,
                                  batch_size=batch_size, backend=backend, progress=progress)


def eap_faithfulness(
    model: Any,
    ds: Any,
    edges: EdgeScores,
    ks: Sequence[int] | None = None,
    *,
    n_random: int = 0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> EdgeFaithfulness:
    """The metric when only the top ``k`` edges (by ``|score|``) carry clean values.

    Every other edge is patched exactly: each receiver's input gets, for every pruned edge
    ``u -> v``, ``a_u^corrupt - a_u`` added (``a_u`` the sender's output in this run). With
    ``k = 0`` the run is the corrupt run (every edge corrupted), with every edge kept it is
    the clean run; in between, how fast the curve rises shows how few edges carry the
    behaviour (Syed et al. 2023; Conmy et al. 2023).

    Args:
        edges: the result of :func:`edge_attribution_patch` on this model.
        ks: numbers of edges to keep (default: 0, 1, 2, 5, 10, 20, 50, ... up to all).
        n_random: also keep ``n_random`` random sets of ``k`` edges (drawn uniformly from the
            real edges, seeded by ``seed``) for every ``k``: the baseline a ranking must beat.
        seed: seeds the random edge sets.
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show a progress bar over ``ks``.

    Returns:
        An :class:`EdgeFaithfulness` with axis ``("k",)``: the metric (``logit_diff``) per
        example after keeping the top ``k`` edges; ``baselines`` hold the clean and corrupt
        values. With ``n_random > 0``, ``random`` holds, per ``k``, the mean over draws of the
        mean metric (``"mean"``), its standard deviation over draws (``"std"``) and every
        draw's mean (``"draws"``, ``[k][draw]``).
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    check_batch_size(batch_size)
    ds = prepare_dataset(model, ds)
    if not isinstance(edges, EdgeScores):
        raise TypeError(f"edges must be the EdgeScores of edge_attribution_patch, not {type(edges).__name__}")
    senders, receivers, valid = eap_nodes(model)
    if edges.labels["sender"] != senders or edges.labels["receiver"] != receivers:
        raise ValueError("edges were computed on a model with a different graph; rerun edge_attribution_patch")
    mask = torch.tensor(valid)
    n_valid = int(mask.sum())
    if ks is None:
        ks = sorted({min(k, n_valid) for k in [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, n_valid]})
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n_valid for k in ks):
        raise ValueError(f"ks={ks!r}: give ints between 0 and the number of edges ({n_valid})")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random={n_random!r} must be an int >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")
    score = edges.values.abs().masked_fill(~mask, -1.0).flatten()
    order = torch.argsort(score, descending=True, stable=True)
    valid_idx = mask.flatten().nonzero().flatten()

    def pruned_of(kept: Tensor) -> Tensor:
        pruned = mask.clone().flatten()
        pruned[kept] = False
        return pruned.view(mask.shape)  # [sender, receiver]: True = corrupted

    g = torch.Generator().manual_seed(seed)
    configs = [pruned_of(order[:k]) for k in ks]
    # a uniformly random set of k real edges per draw
    configs += [pruned_of(valid_idx[torch.randperm(len(valid_idx), generator=g)[:k]])
                for k in ks for _ in range(n_random)]
    ys = pruned_run(model, ds, torch.stack(configs), batch_size=batch_size, progress=progress)
    out = ys[: len(ks)]
    draws = ys[len(ks):].view(len(ks), n_random, ds.batch).mean(-1)
    random: dict[str, Any] = {}
    if n_random:
        random = {
            "n": n_random, "seed": seed, "mean": draws.mean(1).tolist(),
            "std": (draws.std(1) if n_random > 1 else torch.zeros(len(ks))).tolist(), "draws": draws.tolist(),
        }
    return EdgeFaithfulness(
        per_example=out, axes=("k",), labels={"k": ks}, metric="logit_diff", n_edges=n_valid, random=random,
        baselines={k: v.float().cpu() for k, v in edges.baselines.items()}, **provenance(model, ds, args=args),
    )


def pruned_run(
    model: Any, ds: Any, pruned: Tensor, *, batch_size: int | None = None, progress: bool = False,
    metric: Callable[[Tensor, Tensor], Tensor] | None = None, backend: str = "auto",
) -> Tensor:
    """The metric (default: logit difference) of clean runs in which the edges marked in each
    configuration of ``pruned`` ``[config, sender, receiver]`` carry the corrupt value,
    ``[config, batch]``.

    Exact edge patching: each receiver's input gets ``sum_u pruned[u, r] * (a_u^corrupt -
    a_u)``, ``a_u`` the sender's output in this run. The ``config x example`` grid runs on the
    engine (:func:`~mechlens.engine.run_grid`), ``batch_size`` rows per pass, so many
    configurations share a pass; examples go in chunks of ``batch_size`` (with their corrupt
    run's activations), so memory is bounded whatever the dataset; on the fast backend (``backend="auto"`` on a
    TransformerBridge) the blocks run on their own and, with the default metric, only the
    final position is unembedded.
    """
    ds = prepare_dataset(model, ds)
    senders, receivers, valid = eap_nodes(model)
    if pruned.shape[1:] != (len(senders), len(receivers)):
        raise ValueError(f"pruned must be [config, {len(senders)}, {len(receivers)}], got {tuple(pruned.shape)}")
    n = int(model.cfg.n_layers)
    h, kv = int(model.cfg.n_heads), int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n)]
    mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(n)]
    w_o = [model.blocks[layer].attn.W_O.detach() for layer in range(n)]

    def corrupt_writes(tokens: Tensor) -> Tensor:
        """[batch, sender, pos, d]: every sender's write in the corrupt run."""
        return sender_writes(cached_run(model, tokens, ["blocks.0.hook_resid_pre", *z_names, *mlp_names])[1], w_o)

    chunk: dict[str, Tensor] = {}  # the corrupt writes of the examples being run
    r_index = {r: i for i, r in enumerate(receivers)}
    valid_t = torch.tensor(valid)
    masks = (pruned.bool() & valid_t).to(ds.device)
    valid_d = valid_t.to(ds.device)
    prefix = valid_t.sum(0).tolist()  # a receiver reads the senders [:prefix] (they are in layer order)

    def hooks(configs: Tensor, examples: Tensor) -> list[Hook]:
        corr = chunk["corr"]
        m_rows = masks[configs.to(masks.device)]  # [rows, sender, receiver]: True = corrupted
        ex = examples.to(corr.device)
        b, n_send, p, d_model = len(examples), corr.shape[1], corr.shape[2], corr.shape[3]
        # corrupt minus current, in sender order, filled in as the senders run, and their running sum
        diffs = torch.empty(b, n_send, p, d_model, dtype=corr.dtype, device=corr.device)
        total = torch.zeros(b, p, d_model, dtype=corr.dtype, device=corr.device)
        filled = [0]

        def fill(lo: int, hi: int, cur: Tensor) -> None:
            diffs[:, lo:hi] = corr[ex, lo:hi] - cur
            total.add_(diffs[:, lo:hi].sum(1))
            filled[0] = hi

        def on_embed(act: Tensor, hook: Any) -> None:
            fill(0, 1, act[:, None])

        def on_z(act: Tensor, hook: Any, layer: int = 0) -> None:
            fill(filled[0], filled[0] + h, torch.einsum("bphe,hem->bhpm", act, w_o[layer].to(act.dtype)))

        def on_mlp(act: Tensor, hook: Any) -> None:
            fill(filled[0], filled[0] + 1, act[:, None])

        def on_recv(first: int, count: int, per_head: bool) -> Callable:
            def hook(act: Tensor, hook: Any) -> Tensor:
                u = filled[0]
                pr = m_rows[:, :u, first : first + count]  # [rows, u, c]
                sel, on, from_total = pr, pr.any(2).any(0), False
                if u == prefix[first]:  # every sender this receiver reads has run: `total` sums them
                    kept = valid_d[:u, first : first + count] & ~pr
                    on_k = kept.any(2).any(0)
                    if int(on_k.sum()) < int(on.sum()):  # small circuits: subtract the few kept senders
                        sel, on, from_total = kept, on_k, True
                idx = on.nonzero().flatten()
                if not len(idx) and not from_total:
                    return act
                # the span of senders involved, as views (indexing would copy the differences)
                lo, hi = (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 0)
                add = torch.einsum("buc,bupd->bpcd", sel[:, lo:hi].to(diffs.dtype), diffs[:, lo:hi])
                if from_total:
                    add = total[:, :, None] - add
                return act + (add if per_head else add[:, :, 0]).to(act.dtype)

            return hook

        hs: list[Hook] = [("blocks.0.hook_resid_pre", on_embed)]
        for layer in range(n):
            for w, count in (("q", h), ("k", kv), ("v", kv)):
                hs.append((qkv_input_hook(model, layer, w), on_recv(r_index[f"L{layer}H0.{w}"], count, True)))
            hs.append((f"blocks.{layer}.attn.hook_z", functools.partial(on_z, layer=layer)))
            hs.append((_mlp_input_hook(model, layer), on_recv(r_index[f"L{layer} mlp"], 1, False)))
            hs.append((f"blocks.{layer}.hook_mlp_out", on_mlp))
        hs.append((f"blocks.{n - 1}.hook_resid_post", on_recv(r_index["logits"], 1, False)))
        return hs

    # examples in chunks of batch_size, so that the corrupt writes held are bounded too
    out = []
    for sl in batches(ds.batch, batch_size):
        sub = ds[list(range(sl.start, sl.stop))]
        chunk["corr"] = corrupt_writes(sub.corrupt_tokens)
        fn = logit_diff_metric(sub.answers) if metric is None else (
            lambda logits, e, o=sl.start: metric(logits, e + o))
        with _forks(model):
            out.append(run_grid(model, sub.clean_tokens, fn, n_configs=len(pruned), hooks=hooks,
                                batch_size=batch_size, progress=progress, desc="pruned circuits", backend=backend,
                                output="all" if metric is not None else "last"))
    return torch.cat(out, dim=1)
