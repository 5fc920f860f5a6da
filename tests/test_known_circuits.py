"""Known-circuit models: the true edges are complete (keeping them alone restores the clean
run when nothing else writes), and EAP / EAP-IG rank them high (AUROC)."""

import pytest
import torch

from mechlens.circuits.eap import eap_nodes, pruned_run
from mechlens.circuits.known import (
    KNOWN_CIRCUITS,
    circuit_recovery,
    edge_auroc,
    known_circuit_model,
    known_circuit_prompts,
)


@pytest.mark.parametrize("name", sorted(KNOWN_CIRCUITS))
def test_true_edges_carry_everything_without_background(name):
    model, truth = known_circuit_model(name, background=0.0)
    ds = known_circuit_prompts(model, 4)
    senders, receivers, valid = eap_nodes(model)
    keep = torch.zeros(len(senders), len(receivers), dtype=torch.bool)
    for s, r in truth:
        keep[senders.index(s), receivers.index(r)] = True
    ys = pruned_run(model, ds, torch.stack([~keep, torch.ones_like(keep), torch.zeros_like(keep)]))
    kept, empty, full = ys
    assert (full - empty).abs().max() > 1e-2  # the circuit does something
    torch.testing.assert_close(kept, full, atol=1e-4, rtol=0)  # and nothing outside it does
    # a perfect ranking scores 1, its reverse 0
    truth_scores = keep.float()
    assert edge_auroc(model, truth_scores, truth) == 1.0
    assert edge_auroc(model, -truth_scores + 1, truth) == 0.0


def test_recovery_auroc():
    df = circuit_recovery(ig_steps=5)
    assert set(df["circuit"]) == set(KNOWN_CIRCUITS) and len(df) == 3 * len(KNOWN_CIRCUITS)
    assert (df["auroc"] > 0.9).all()
    wide = df.pivot(index="circuit", columns="method", values="auroc")
    # integrated gradients along the inputs ranks the true edges at least as well as EAP
    assert (wide["eap-ig-inputs"] >= wide["eap"] - 1e-9).all()
    assert wide["eap-ig-activations"].mean() >= wide["eap"].mean() - 0.005


def test_bad_name():
    with pytest.raises(ValueError, match="name"):
        known_circuit_model("induction")
