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
    from mechlens.metrics import logit_diff
    from mechlens.model_protocol import qkv_input_hook
    from mechlens.patching.path import _split_qkv_input

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

        with _split_qkv_input(tiny_model), torch.no_grad():
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
    from mechlens.model_protocol import qkv_input_hook
    from mechlens.patching.path import _split_qkv_input

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

    with _split_qkv_input(tiny_gpt2), torch.no_grad():
        want = logit_diff(tiny_gpt2.run_with_hooks(ds.clean_tokens, fwd_hooks=[(name, hook)]), ds.answers)
    torch.testing.assert_close(curve.per_example[0], want.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(want.float(), edges.baselines["clean"], atol=1e-5)
