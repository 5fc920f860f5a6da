"""Circuits: sentiment circuit discovery and the summarization motif (Tigges et al. 2023).

- :func:`discover_sentiment_circuit` -> :class:`Circuit`: path patching finds the heads that
  carry sentiment to the answer (direct heads) and the heads that feed them (movers), labels
  their roles, and checks the circuit's faithfulness against random head sets.
- :func:`summarization_motif` -> :class:`MotifResult`: is sentiment summarised at the comma?
  Heads reading the comma, patching splits, an irrelevant-context sweep and directional
  ablation at commas on SST-style reviews (:func:`mini_sst`).
"""

from mechlens.circuits.eap import (
    EdgeFaithfulness,
    EdgeScores,
    eap_faithfulness,
    eap_ig,
    eap_nodes,
    edge_attribution_patch,
    pruned_run,
)
from mechlens.circuits.faithfulness import (
    MIB_FRACTIONS,
    FaithfulnessCurve,
    cpr_cmd,
    faithfulness_curve,
)
from mechlens.circuits.known import circuit_recovery, known_circuit_model
from mechlens.circuits.motif import (
    SPLITS,
    MotifResult,
    mini_sst,
    patch_positions,
    split_masks,
    summarization_motif,
)
from mechlens.circuits.sentiment import (
    Circuit,
    discover_sentiment_circuit,
    head_roles,
    ov_direction_scores,
    patch_heads,
)
from mechlens.circuits.stability import CircuitStability, circuit_stability

__all__ = [
    "MIB_FRACTIONS",
    "CircuitStability",
    "EdgeFaithfulness",
    "EdgeScores",
    "circuit_recovery",
    "circuit_stability",
    "known_circuit_model",
    "FaithfulnessCurve",
    "cpr_cmd",
    "eap_ig",
    "faithfulness_curve",
    "pruned_run",
    "SPLITS",
    "Circuit",
    "MotifResult",
    "discover_sentiment_circuit",
    "eap_faithfulness",
    "eap_nodes",
    "edge_attribution_patch",
    "head_roles",
    "mini_sst",
    "ov_direction_scores",
    "patch_heads",
    "patch_positions",
    "split_masks",
    "summarization_motif",
]
