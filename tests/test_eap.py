"""Edge attribution patching: edges sum to node attribution scores; structure; a planted edge."""

import copy

import pytest
import torch

from mechlens.circuits.eap import eap_nodes, edge_attribution_patch
from mechlens.data import ContrastDataset
from mechlens.patching import attribution_patch


def _ds(model):
    words = [("good", "bad"), ("great", "dull"), ("bad", "good"), ("dull", "great")]
    clean = [f"I thought this movie was {a}, I" for a, _ in words]
    corrupt = [f"I thought this movie was {b}, I" for _, b in words]
    return ContrastDataset.from_prompts(model, clean, corrupt, [(" loved", " hated")], positions={"ADJ": 6})


def test_edges_sum_to_node_attribution(tiny_model):
    ds = _ds(tiny_model)
    res = edge_attribution_patch(tiny_model, ds, progress=False, batch_size=3)
    n, h = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    senders = res.labels["sender"]
    assert res.axes == ("sender", "receiver") and res.method == "eap"
    out = res.per_example.sum(1)  # [sender, batch]: every outgoing edge
    z = attribution_patch(tiny_model, ds, "z", mode="noise", metric="logit_diff", positions="all", progress=False)
    mlp = attribution_patch(tiny_model, ds, "mlp_out", mode="noise", metric="logit_diff", positions="all",
                            progress=False)
    emb = attribution_patch(tiny_model, ds, "resid_pre", mode="noise", metric="logit_diff", positions="all",
                            layers=[0], progress=False)
    base = z.baselines["clean"]
    torch.testing.assert_close(res.baselines["clean"], base, atol=1e-5, rtol=0)
    for layer in range(n):
        for head in range(h):
            got = out[senders.index(f"L{layer}H{head}")]
            torch.testing.assert_close(got, z.per_example[layer, head] - base, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(out[senders.index(f"L{layer} mlp")], mlp.per_example[layer] - base,
                                   atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out[0], emb.per_example[0] - base, atol=1e-4, rtol=1e-3)


def test_edge_structure(tiny_model):
    senders, receivers, valid = eap_nodes(tiny_model)
    v = torch.tensor(valid)
    ds = _ds(tiny_model)
    res = edge_attribution_patch(tiny_model, ds, progress=False)
    assert (res.per_example[~v] == 0).all()
    assert res.per_example[v].abs().sum() > 0
    parallel = bool(getattr(tiny_model.cfg, "parallel_attn_mlp", False))
    assert valid[senders.index("L0H1")][receivers.index("L0 mlp")] == (not parallel)
    assert not valid[senders.index("L1H0")][receivers.index("L0H0.q")]
    assert not valid[senders.index("L0 mlp")][receivers.index("L0H1.v")]
    assert all(row[receivers.index("logits")] for row in valid)
    kv = int(getattr(tiny_model.cfg, "n_key_value_heads", None) or tiny_model.cfg.n_heads)
    assert sum(r.endswith(".k") for r in receivers) == kv * tiny_model.cfg.n_layers


@pytest.mark.parametrize("receiver", ["L1H1.v", "L1H0.q", "L1 mlp", "logits"])
def test_edge_score_is_the_derivative_along_the_edge(tiny_model, receiver):
    """score(L0H1 -> v) = d/de M(v's input + e * delta_u) at e=0, by central differences:
    only v's input is moved, so the score sees that one edge."""
    from mechlens.engine import split_qkv_input
    from mechlens.metrics import logit_diff
    from mechlens.model_protocol import qkv_input_hook

    ds = _ds(tiny_model)
    res = edge_attribution_patch(tiny_model, ds, progress=False)
    score = res.per_example[res.labels["sender"].index("L0H1"), res.labels["receiver"].index(receiver)]
    _, cc = tiny_model.run_with_cache(ds.clean_tokens, names_filter="blocks.0.attn.hook_z")
    _, ck = tiny_model.run_with_cache(ds.corrupt_tokens, names_filter="blocks.0.attn.hook_z")
    dz = (ck["blocks.0.attn.hook_z"] - cc["blocks.0.attn.hook_z"])[:, :, 1]
    delta = (dz @ tiny_model.blocks[0].attn.W_O[1]).detach()  # [b, pos, d]
    n = tiny_model.cfg.n_layers
    if receiver == "logits":
        name, head = f"blocks.{n - 1}.hook_resid_post", None
    elif receiver.endswith("mlp"):
        name, head = "blocks.1.ln2.hook_in", None
    else:
        name, head = qkv_input_hook(tiny_model, 1, receiver[-1]), int(receiver[3])

    def run(eps):
        def hook(act, hook):
            act = act.clone()
            if head is None:
                return act + eps * delta
            act[:, :, head] = act[:, :, head] + eps * delta
            return act

        with split_qkv_input(tiny_model), torch.no_grad():
            logits = tiny_model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(name, hook)])
        return logit_diff(logits, ds.answers).double()

    eps = 1e-2
    fd = ((run(eps) - run(-eps)) / (2 * eps)).float()
    if not receiver.endswith(".q"):  # on random tiny models queries barely matter
        assert score.abs().max() > 1e-4
    torch.testing.assert_close(score, fd, atol=2e-3, rtol=2e-2)


def test_bad_input(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    with pytest.raises(ValueError, match="metric"):
        edge_attribution_patch(tiny_gpt2, ds, metric="fraction_recovered")
    with pytest.raises(ValueError, match="batch_size"):
        edge_attribution_patch(tiny_gpt2, ds, batch_size=-1)


def test_faithfulness_endpoints(tiny_model):
    """No edge kept = the corrupt run; every edge kept = the clean run; exact edge patching."""
    from mechlens.circuits.eap import eap_faithfulness

    ds = _ds(tiny_model)
    edges = edge_attribution_patch(tiny_model, ds, progress=False)
    n_edges = int(torch.tensor(eap_nodes(tiny_model)[2]).sum())
    half = n_edges // 2
    curve = eap_faithfulness(tiny_model, ds, edges, ks=[0, half, n_edges], batch_size=3, progress=False)
    assert curve.axes == ("k",) and curve.labels["k"] == [0, half, n_edges]
    torch.testing.assert_close(curve.per_example[0], edges.baselines["corrupt"], atol=1e-4, rtol=0)
    torch.testing.assert_close(curve.per_example[-1], edges.baselines["clean"], atol=1e-4, rtol=0)
    assert not torch.allclose(curve.per_example[1], curve.per_example[0])
    with pytest.raises(ValueError, match="ks"):
        eap_faithfulness(tiny_model, ds, edges, ks=[n_edges + 1], progress=False)


def test_faithfulness_one_edge_by_hand(tiny_gpt2):
    """Keeping every edge but the top one: only that receiver's input moves, by the sender's
    difference (the sender's other edges stay clean)."""
    from mechlens.circuits.eap import eap_faithfulness
    from mechlens.metrics import logit_diff

    ds = _ds(tiny_gpt2)
    edges = edge_attribution_patch(tiny_gpt2, ds, progress=False)
    senders, receivers, valid = eap_nodes(tiny_gpt2)
    n_edges = int(torch.tensor(valid).sum())
    # rank the top edge last, so that keeping n_edges - 1 edges prunes exactly it
    u, r = divmod(int(edges.values.abs().flatten().argmax()), len(receivers))
    ranked = copy.deepcopy(edges)
    ranked.per_example = torch.ones_like(edges.per_example)
    ranked.per_example[u, r] = 0
    curve = eap_faithfulness(tiny_gpt2, ds, ranked, ks=[n_edges - 1], progress=False)
    _, cc = tiny_gpt2.run_with_cache(ds.clean_tokens)
    _, ck = tiny_gpt2.run_with_cache(ds.corrupt_tokens)

    def out_of(cache, name):
        if name == "embed":
            return cache["blocks.0.hook_resid_pre"]
        if name.endswith("mlp"):
            return cache[f"blocks.{name[1]}.hook_mlp_out"]
        layer, head = int(name[1]), int(name[3])
        return cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ tiny_gpt2.blocks[layer].attn.W_O[head]

    delta = (out_of(ck, senders[u]) - out_of(cc, senders[u])).detach()
    rec = receivers[r]
    from mechlens.engine import split_qkv_input
    from mechlens.model_protocol import qkv_input_hook

    if rec == "logits":
        name, head = f"blocks.{tiny_gpt2.cfg.n_layers - 1}.hook_resid_post", None
    elif rec.endswith("mlp"):
        name, head = f"blocks.{rec[1]}.ln2.hook_in", None
    else:
        name, head = qkv_input_hook(tiny_gpt2, int(rec[1]), rec[-1]), int(rec[3])

    def hook(act, hook):
        act = act.clone()
        if head is None:
            return act + delta
        act[:, :, head] += delta
        return act

    with split_qkv_input(tiny_gpt2), torch.no_grad():
        want = logit_diff(tiny_gpt2.run_with_hooks(ds.clean_tokens, fwd_hooks=[(name, hook)]), ds.answers)
    torch.testing.assert_close(curve.per_example[0], want.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(want.float(), edges.baselines["clean"], atol=1e-5)


# --------------------------------------------------------------------------- a planted circuit


@pytest.fixture(scope="module")
def planted_eap():
    """A 3-layer tiny llama in which only L0H0 and L2H1 write to the residual stream (every
    other head's W_O and every MLP's output weights are zero; L2H1's writes scaled up): the only
    edges that can carry anything are embed -> L0H0 / L2H1 inputs, L0H0 -> L2H1 inputs, and
    L0H0 / L2H1 -> logits."""
    from mechlens.data import toy_movie_review
    from mechlens.models import tiny

    model = tiny("llama", n_layers=3, seed=1)
    dh = model.cfg.d_head
    keep = {(0, 0): 1.0, (2, 1): 8.0}
    with torch.no_grad():
        for layer, block in enumerate(model.original_model.model.layers):
            w = block.self_attn.o_proj.weight  # [d_model, n_heads * d_head]
            for h in range(model.cfg.n_heads):
                w[:, h * dh : (h + 1) * dh] *= keep.get((layer, h), 0.0)
            block.mlp.down_proj.weight.zero_()
    ds = toy_movie_review(model, "test")[:8]
    edges = edge_attribution_patch(model, ds, progress=False)
    return model, ds, edges


def _planted_edges(model):
    senders, receivers, valid = eap_nodes(model)
    kv = int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    g0, g1 = 0 * kv // model.cfg.n_heads, 1 * kv // model.cfg.n_heads  # key/value groups of heads 0, 1
    ins = lambda layer, head, group: [f"L{layer}H{head}.q", f"L{layer}H{group}.k", f"L{layer}H{group}.v"]  # noqa: E731
    planted = {("embed", r) for r in ins(0, 0, g0) + ins(2, 1, g1)}
    planted |= {("L0H0", r) for r in ins(2, 1, g1)}
    planted |= {("L0H0", "logits"), ("L2H1", "logits")}
    return senders, receivers, planted


def test_top_edges_are_the_planted_ones(planted_eap):
    model, ds, edges = planted_eap
    senders, receivers, planted = _planted_edges(model)
    vals = edges.values.abs()
    ranked = torch.argsort(vals.flatten(), descending=True)
    top = [(senders[int(i) // len(receivers)], receivers[int(i) % len(receivers)]) for i in ranked[: len(planted)]]
    nonzero = {e for e, i in zip(top, ranked) if float(vals.flatten()[i]) > 1e-6}
    # every edge that carries anything is planted, the scaled head's edge to the logits leads
    assert nonzero <= planted and len(nonzero) >= 6
    assert top[0] == ("L2H1", "logits")
    outside = torch.ones_like(vals, dtype=torch.bool)
    for s, r in planted:
        outside[senders.index(s), receivers.index(r)] = False
    assert vals[outside].max() < 1e-6


def test_planted_edges_are_faithful_and_random_sets_are_not(planted_eap):
    from mechlens.circuits.eap import eap_faithfulness

    model, ds, edges = planted_eap
    _, _, planted = _planted_edges(model)
    k = len(planted)
    curve = eap_faithfulness(model, ds, edges, ks=[0, k], n_random=4, seed=0, progress=False)
    clean, corrupt = edges.baselines["clean"], edges.baselines["corrupt"]
    # keeping the planted edges restores the clean run exactly: nothing else carries the difference
    torch.testing.assert_close(curve.per_example[1], clean, atol=1e-4, rtol=0)
    rnd = curve.random
    assert rnd["n"] == 4 and len(rnd["draws"]) == 2 and len(rnd["draws"][0]) == 4
    # no edge kept: every draw is the corrupt run
    assert rnd["mean"][0] == pytest.approx(float(corrupt.mean()), abs=1e-4) and rnd["std"][0] < 1e-5
    # k random edges out of thousands almost never hold the circuit: far from clean
    gap = float(clean.mean() - corrupt.mean())
    assert abs(rnd["mean"][1] - float(clean.mean())) > 0.5 * abs(gap)
    again = eap_faithfulness(model, ds, edges, ks=[0, k], n_random=4, seed=0, progress=False)
    assert again.random["draws"] == rnd["draws"]  # seeded
    with pytest.raises(ValueError, match="n_random"):
        eap_faithfulness(model, ds, edges, ks=[k], n_random=-1, progress=False)
