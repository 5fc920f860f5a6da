"""Recovery of known circuits: tiny models built to contain a circuit, and how well each edge
scoring ranks its edges (AUROC against the true edges).

**The models.** A tiny random TransformerLens model (:func:`mechlens.models.tiny`) whose
residual-stream writers are edited: the circuit's components (attention heads, MLPs) keep
their output weights, scaled up so that their nonlinearities work away from the linear
regime, and every other head and MLP has its output weights multiplied by ``background``
(default 0.02): it still writes, so every edge carries something, but little. The circuits:

- ``"head-chain"`` (3-layer llama): ``L0H0 -> L2H1 -> logits``, a two-head path like a
  duplicate-token/previous-token head feeding a name mover;
- ``"mlp-chain"`` (2-layer gpt2): ``L0 mlp -> L1 mlp -> logits``, an MLP-mediated path;
- ``"head-mlp-head"`` (3-layer gpt2): ``L0H1 -> L1 mlp -> L2H0 -> logits``, attention
  moving information that an MLP transforms and a later head reads.

**The true edges** are the edges among the circuit's components, the embedding and the
logits: ``u -> v`` with ``u`` the embedding or a circuit component and ``v`` an input (q, k,
v of a circuit head, a circuit MLP) or the logits. Every other real edge is false. The
prompts (:func:`known_circuit_prompts`) differ in their last word, where the metric reads. The AUROC of ``|score|`` against this labelling (scikit-learn's
``roc_auc_score``) is 1 when every true edge outranks every false one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from mechlens.circuits.eap import eap_nodes, edge_attribution_patch
from mechlens.engine.bridge import hf_model

__all__ = ["KNOWN_CIRCUITS", "known_circuit_model", "known_circuit_prompts", "true_edges", "edge_auroc", "circuit_recovery"]

#: name -> (architecture, layers, {(layer, head): scale}, {layer: mlp scale})
KNOWN_CIRCUITS: dict[str, tuple[str, int, dict[tuple[int, int], float], dict[int, float]]] = {
    "head-chain": ("llama", 3, {(0, 0): 2.0, (2, 1): 8.0}, {}),
    "mlp-chain": ("gpt2", 2, {}, {0: 4.0, 1: 4.0}),
    "head-mlp-head": ("gpt2", 3, {(0, 1): 2.0, (2, 0): 8.0}, {1: 4.0}),
}


def known_circuit_model(name: str, *, background: float = 0.02, seed: int = 1) -> tuple[Any, set[tuple[str, str]]]:
    """The tiny model of circuit ``name`` (:data:`KNOWN_CIRCUITS`) and its true edges."""
    from mechlens.models import tiny

    if name not in KNOWN_CIRCUITS:
        raise ValueError(f"name={name!r}: choose one of {sorted(KNOWN_CIRCUITS)}")
    arch, n_layers, heads, mlps = KNOWN_CIRCUITS[name]
    model = tiny(arch, n_layers=n_layers, seed=seed)
    dh, nh = int(model.cfg.d_head), int(model.cfg.n_heads)
    hf = hf_model(model)
    with torch.no_grad():
        for layer in range(n_layers):
            if arch == "llama":
                block = hf.model.layers[layer]
                w_o, w_out = block.self_attn.o_proj.weight, block.mlp.down_proj.weight  # o_proj: [d_model, h*dh]
                cols = lambda h: (slice(None), slice(h * dh, (h + 1) * dh))  # noqa: E731
            else:
                block = hf.transformer.h[layer]
                w_o, w_out = block.attn.c_proj.weight, block.mlp.c_proj.weight  # Conv1D: [h*dh, d_model]
                cols = lambda h: (slice(h * dh, (h + 1) * dh), slice(None))  # noqa: E731
            for h in range(nh):
                w_o[cols(h)] *= heads.get((layer, h), background)
            w_out *= mlps.get(layer, background)
    return model, true_edges(model, heads, mlps)


def true_edges(model: Any, heads: dict[tuple[int, int], float], mlps: dict[int, float]) -> set[tuple[str, str]]:
    """The edges among the circuit's components, the embedding and the logits (see the module)."""
    kv = int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    group = int(model.cfg.n_heads) // kv
    senders = {"embed"} | {f"L{la}H{h}" for la, h in heads} | {f"L{la} mlp" for la in mlps}
    receivers = {"logits"} | {f"L{la} mlp" for la in mlps}
    for la, h in heads:
        receivers |= {f"L{la}H{h}.q", f"L{la}H{h // group}.k", f"L{la}H{h // group}.v"}
    names_s, names_r, valid = eap_nodes(model)
    return {
        (s, r) for i, s in enumerate(names_s) for j, r in enumerate(names_r)
        if valid[i][j] and s in senders and r in receivers
    }


_WORDS = [("good", "bad"), ("great", "dull"), ("bad", "good"), ("dull", "great"), ("superb", "awful"),
          ("terrible", "excellent"), ("nice", "boring"), ("poor", "superb")]


def known_circuit_prompts(model: Any, n_prompts: int = 8) -> Any:
    """Contrast prompts whose clean and corrupt versions differ in their last word, the
    position the metric reads (so a position-local path, such as two MLPs, can carry it)."""
    from mechlens.data import ContrastDataset

    if not 1 <= n_prompts <= len(_WORDS):
        raise ValueError(f"n_prompts={n_prompts}: choose 1..{len(_WORDS)}")
    words = _WORDS[:n_prompts]
    return ContrastDataset.from_prompts(model, [f"I thought this movie was {a}" for a, _ in words],
                                        [f"I thought this movie was {b}" for _, b in words], [(" loved", " hated")])


def edge_auroc(model: Any, scores: Any, truth: set[tuple[str, str]]) -> float:
    """AUROC of ``|score|`` (a ``[sender, receiver]`` tensor or an EAP result) over the real
    edges against ``truth``."""
    from sklearn.metrics import roc_auc_score

    senders, receivers, valid = eap_nodes(model)
    vals = scores.values if hasattr(scores, "values") and not isinstance(scores, torch.Tensor) else scores
    vals = torch.as_tensor(vals).detach().float().abs()
    y, s = [], []
    for i, a in enumerate(senders):
        for j, b in enumerate(receivers):
            if valid[i][j]:
                y.append((a, b) in truth)
                s.append(float(vals[i, j]))
    return float(roc_auc_score(y, s))


def circuit_recovery(
    circuits: Sequence[str] = tuple(KNOWN_CIRCUITS),
    *,
    methods: Sequence[str] = ("eap", "eap-ig-inputs", "eap-ig-activations"),
    ig_steps: int = 5,
    n_prompts: int = 8,
    background: float = 0.02,
    seed: int = 1,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """AUROC of each method's edge ranking on each known-circuit model.

    Returns:
        One row per (circuit, method): ``auroc``, ``n_true`` (true edges), ``n_edges``.
    """
    rows = []
    for name in circuits:
        model, truth = known_circuit_model(name, background=background, seed=seed)
        ds = known_circuit_prompts(model, n_prompts)
        n_edges = int(torch.tensor(eap_nodes(model)[2]).sum())
        for method in methods:
            steps = None if method == "eap" else ig_steps
            scores = edge_attribution_patch(model, ds, method=method, ig_steps=steps, batch_size=batch_size,
                                            progress=False)
            rows.append({"circuit": name, "method": method, "auroc": edge_auroc(model, scores, truth),
                         "n_true": len(truth), "n_edges": n_edges})
    return pd.DataFrame(rows)
