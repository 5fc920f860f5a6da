"""Edge attribution patching: edges sum to node attribution scores; structure; a planted edge."""

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
