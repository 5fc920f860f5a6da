"""Faithfulness curves, CPR and CMD (MIB's definitions) on the engine's exact edge patching."""

import pytest
import torch

from mechlens.circuits import (
    FaithfulnessCurve,
    cpr_cmd,
    eap_faithfulness,
    edge_attribution_patch,
    faithfulness_curve,
)
from mechlens.circuits.faithfulness import MIB_FRACTIONS, node_ranking
from mechlens.data import toy_movie_review
from mechlens.metrics import logit_diff


def test_cpr_cmd_by_hand():
    fr = [0.0, 0.5, 1.0]
    assert cpr_cmd(fr, [1, 1, 1]) == (1.0, 0.0)
    cpr, cmd = cpr_cmd(fr, [0.0, 0.5, 1.0])  # a straight line: half the square each
    assert cpr == pytest.approx(0.5) and cmd == pytest.approx(0.5)
    cpr, cmd = cpr_cmd(fr, [2.0, 2.0, 2.0])  # overshoot counts as distance, area above 1 as performance
    assert cpr == pytest.approx(2.0) and cmd == pytest.approx(1.0)
    assert cpr_cmd(MIB_FRACTIONS, [1.0] * 10)[0] == pytest.approx(0.999)


def test_curve_matches_exact_pruning_and_endpoints(tiny_model):
    ds = toy_movie_review(tiny_model, "test")[:5]
    edges = edge_attribution_patch(tiny_model, ds, progress=False)
    fc = faithfulness_curve(tiny_model, ds, {"eap": edges, "as tensor": edges.values}, n_random=2, batch_size=7,
                            progress=False)
    assert isinstance(fc, FaithfulnessCurve) and fc.labels["scoring"] == ["eap", "as tensor", "random"]
    # a tensor of scores ranks the same (rows in other passes may sum the edges in another order)
    assert fc.faithfulness["eap"] == pytest.approx(fc.faithfulness["as tensor"], abs=1e-5)
    assert fc.faithfulness["eap"][-1] == pytest.approx(1.0, abs=1e-4)  # every edge kept: the clean run
    assert fc.clean == pytest.approx(float(edges.baselines["clean"].mean()), abs=1e-4)
    assert fc.corrupt == pytest.approx(float(edges.baselines["corrupt"].mean()), abs=1e-4)
    # the same sizes through eap_faithfulness (its own configurations): the same metric
    ref = eap_faithfulness(tiny_model, ds, edges, ks=fc.ks, progress=False)
    torch.testing.assert_close(fc.per_example[0], ref.per_example, atol=1e-4, rtol=0)
    want = [(float(v) - fc.corrupt) / (fc.clean - fc.corrupt) for v in ref.values]
    assert fc.faithfulness["eap"] == pytest.approx(want, abs=1e-3)
    assert (fc.cpr["eap"], fc.cmd["eap"]) == pytest.approx(cpr_cmd(fc.fractions, fc.faithfulness["eap"]))
    assert len(fc.random["curves"]) == 2 and fc.random["curves"][0][-1] == pytest.approx(1.0, abs=1e-4)
    fig = fc.plot()
    assert len(fig.axes[0].lines) >= 3
    df = fc.table()
    assert list(df["scoring"]) == ["eap", "as tensor", "random"]


def test_save_load_and_bad_input(tiny_gpt2, tmp_path):
    ds = toy_movie_review(tiny_gpt2, "test")[:4]
    edges = edge_attribution_patch(tiny_gpt2, ds, progress=False)
    fc = faithfulness_curve(tiny_gpt2, ds, edges, fractions=[0.1, 0.5, 1.0], n_random=0, progress=False)
    back = FaithfulnessCurve.load(fc.save(tmp_path / "fc"))
    assert back.cpr == fc.cpr and back.faithfulness == fc.faithfulness and back.ks == fc.ks
    with pytest.raises(ValueError, match="fractions"):
        faithfulness_curve(tiny_gpt2, ds, edges, fractions=[0.5, 0.1], progress=False)
    with pytest.raises(ValueError, match="scores"):
        faithfulness_curve(tiny_gpt2, ds, torch.zeros(3, 3), progress=False)
    with pytest.raises(ValueError, match="n_random"):
        faithfulness_curve(tiny_gpt2, ds, edges, n_random=-1, progress=False)


def test_node_curve_equals_replacing_component_outputs(tiny_model):
    """A node outside the circuit has every outgoing edge patched: the same as replacing its
    output (a head's z, an MLP's output, the embedding) by the corrupt run's, written with
    plain run_with_hooks; node scores from edges are the senders' sums."""
    model = tiny_model
    ds = toy_movie_review(model, "test")[:5]
    edges = edge_attribution_patch(model, ds, progress=False)
    fracs = [0.2, 0.5, 1.0]
    fc = faithfulness_curve(model, ds, {"eap": edges}, fractions=fracs, level="nodes", n_random=1, progress=False)
    senders = edges.labels["sender"]
    assert fc.level == "nodes" and fc.n_nodes == len(senders)
    assert fc.ks == [int(f * len(senders)) for f in fracs]
    assert fc.faithfulness["eap"][-1] == pytest.approx(1.0, abs=1e-4)
    node = (edges.values * edges.valid).sum(1)
    order = torch.argsort(node.abs(), descending=True, stable=True)
    assert torch.equal(node_ranking(model, edges), order)
    _, corrupt = model.run_with_cache(ds.corrupt_tokens)
    h = model.cfg.n_heads
    for j, k in enumerate(fc.ks):
        kept = {senders[i] for i in order[:k].tolist()}
        hooks = []
        if "embed" not in kept:
            hooks.append(("blocks.0.hook_resid_pre", lambda a, hook: corrupt["blocks.0.hook_resid_pre"]))
        for layer in range(model.cfg.n_layers):
            heads = [i for i in range(h) if f"L{layer}H{i}" not in kept]

            def z_hook(a, hook, heads=heads, name=f"blocks.{layer}.attn.hook_z"):
                a = a.clone()
                a[:, :, heads] = corrupt[name][:, :, heads]
                return a

            if heads:
                hooks.append((f"blocks.{layer}.attn.hook_z", z_hook))
            if f"L{layer} mlp" not in kept:
                name = f"blocks.{layer}.hook_mlp_out"
                hooks.append((name, lambda a, hook, name=name: corrupt[name]))
        with torch.no_grad():
            want = logit_diff(model.run_with_hooks(ds.clean_tokens, fwd_hooks=hooks), ds.answers)
        torch.testing.assert_close(fc.per_example[0, j], want, atol=1e-4, rtol=1e-4)
    assert 0 < fc.ks[0] < len(senders)
    with pytest.raises(ValueError, match="level"):
        faithfulness_curve(model, ds, edges, level="heads", progress=False)
    with pytest.raises(ValueError, match="node scores"):
        faithfulness_curve(model, ds, torch.zeros(3), level="nodes", progress=False)


def test_fast_backend_equals_hooks(tiny_model):
    """Pruned runs on the fast backend (blocks run on their own, only the final position
    unembedded) give the hooked passes' numbers, for circuits of edges and of nodes, whatever
    the chunking of the examples."""
    ds = toy_movie_review(tiny_model, "test")[:5]
    edges = edge_attribution_patch(tiny_model, ds, progress=False)
    for level in ("edges", "nodes"):
        kw = dict(fractions=[0.05, 0.3, 1.0], n_random=1, level=level, batch_size=4, progress=False)
        fast = faithfulness_curve(tiny_model, ds, edges, backend="fast", **kw)
        hooks = faithfulness_curve(tiny_model, ds, edges, backend="hooks", **kw)
        assert fast.per_example.abs().max() > 1e-3
        torch.testing.assert_close(fast.per_example, hooks.per_example, atol=1e-5, rtol=1e-4)
        # batch_size=4 ran the 5 examples in two chunks; all at once gives the same
        whole = faithfulness_curve(tiny_model, ds, edges, backend="hooks", **{**kw, "batch_size": None})
        torch.testing.assert_close(whole.per_example, hooks.per_example, atol=1e-5, rtol=1e-4)
