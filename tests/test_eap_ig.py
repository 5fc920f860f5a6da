"""EAP with integrated gradients: one step is EAP, completeness over a cut, and equality with
a plain hooks-and-autograd computation."""

import pytest
import torch

from mechlens.circuits.eap import eap_ig, eap_nodes, edge_attribution_patch
from mechlens.data import toy_movie_review
from mechlens.engine import split_qkv_input
from mechlens.metrics import logit_diff
from mechlens.model_protocol import qkv_input_hook


def _ds(model):
    return toy_movie_review(model, "test")[:5]


def test_one_step_is_eap_exactly(tiny_model):
    ds = _ds(tiny_model)
    eap = edge_attribution_patch(tiny_model, ds, progress=False, batch_size=3)
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        one = edge_attribution_patch(tiny_model, ds, method=method, ig_steps=1, progress=False, batch_size=3)
        assert torch.equal(one.per_example, eap.per_example)
        assert one.method == method and one.ig_steps == 1
    assert eap_ig(tiny_model, ds, progress=False).ig_steps == 5  # the default


def test_inputs_completeness(tiny_model):
    """The embedding's outgoing edges are a cut (everything downstream reads the embedding):
    with integrated gradients along the input embeddings their sum is M(corrupt) - M(clean),
    up to the Riemann sum's O(1/steps) error: within 3% of the largest gap at 64 steps, and
    closer than at 4 steps."""
    ds = _ds(tiny_model)
    gap = None
    errs = []
    for steps in (4, 64):
        r = eap_ig(tiny_model, ds, interpolate="inputs", ig_steps=steps, progress=False)
        gap = r.baselines["corrupt"] - r.baselines["clean"]
        errs.append(float((r.per_example[0].sum(0) - gap).abs().max()))
    assert gap.abs().max() > 1e-3
    assert errs[1] <= 0.03 * float(gap.abs().max())
    assert errs[1] < errs[0]


def test_activations_completeness(tiny_gpt2):
    """Integrating at a group's output (all heads of a layer): the group's outgoing edges sum
    to M(clean run with that group's output corrupted) - M(clean), within 3% of the largest
    gap at 64 steps."""
    model = tiny_gpt2
    ds = _ds(model)
    r = eap_ig(model, ds, interpolate="activations", ig_steps=64, progress=False)
    senders = r.labels["sender"]
    _, corrupt = model.run_with_cache(ds.corrupt_tokens)
    clean = r.baselines["clean"]
    h = model.cfg.n_heads
    for name, rows in [("blocks.0.hook_resid_pre", [0]),
                       ("blocks.1.attn.hook_z", [senders.index(f"L1H{i}") for i in range(h)]),
                       ("blocks.0.hook_mlp_out", [senders.index("L0 mlp")])]:
        with torch.no_grad():
            logits = model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(name, lambda a, hook, n=name: corrupt[n])])
        want = logit_diff(logits, ds.answers) - clean
        got = r.per_example[rows].sum((0, 1))
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(got, want, atol=0.03 * float(want.abs().max()), rtol=0)


def _plain_eap_ig(model, ds, steps, interpolate, edges):
    """EAP-IG the way one writes it with TransformerLens hooks and autograd, for a few edges:
    run the clean prompts with the input (or the sender's layer output) interpolated, take
    the gradient at the receiver's input, dot it with the sender's corrupt - clean output."""
    _, cc = model.run_with_cache(ds.clean_tokens)
    _, ck = model.run_with_cache(ds.corrupt_tokens)
    n = model.cfg.n_layers

    def out_of(cache, s):
        if s == "embed":
            return cache["blocks.0.hook_resid_pre"]
        if s.endswith("mlp"):
            return cache[f"blocks.{s[1]}.hook_mlp_out"]
        layer, head = int(s[1]), int(s[3])
        return cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ model.blocks[layer].attn.W_O[head]

    def where(s):
        if interpolate == "inputs" or s == "embed":
            return "blocks.0.hook_resid_pre"
        return f"blocks.{s[1]}.hook_mlp_out" if s.endswith("mlp") else f"blocks.{s[1]}.attn.hook_z"

    def recv_hook(rec):
        if rec == "logits":
            return f"blocks.{n - 1}.hook_resid_post", None
        if rec.endswith("mlp"):
            return f"blocks.{rec[1]}.ln2.hook_in", None
        return qkv_input_hook(model, int(rec[1]), rec[-1]), int(rec[3])

    out = {}
    for s, rec in edges:
        delta = (out_of(ck, s) - out_of(cc, s)).detach()
        name, head = recv_hook(rec)
        interp = where(s)
        total = torch.zeros(ds.batch)
        for k in range(1, steps + 1):
            alpha = k / steps
            got = {}

            def mix(act, hook, alpha=alpha, interp=interp):
                return ck[interp] + alpha * (cc[interp] - ck[interp])

            def grab(act, hook, got=got):
                act = act.clone().requires_grad_(True) if not act.requires_grad else act.clone()
                got["x"] = act
                return act

            with split_qkv_input(model), torch.enable_grad():
                logits = model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(interp, mix), (name, grab)])
                (g,) = torch.autograd.grad(logit_diff(logits, ds.answers).sum(), [got["x"]])
            g = g if head is None else g[:, :, head]
            total += (delta * g).sum((1, 2)).detach()
        out[(s, rec)] = total / steps
    return out


@pytest.mark.parametrize("interpolate", ["inputs", "activations"])
def test_equals_plain_hooks_and_autograd(tiny_gpt2, interpolate):
    model = tiny_gpt2
    ds = _ds(model)
    r = eap_ig(model, ds, interpolate=interpolate, ig_steps=3, batch_size=4, progress=False)
    senders, receivers, _ = eap_nodes(model)
    edges = [("L0H1", "L1H0.v"), ("L0H1", "logits"), ("embed", "L1H1.v"), ("L0 mlp", "L1H1.k"), ("L1H0", "L1 mlp")]
    ref = _plain_eap_ig(model, ds, 3, interpolate, edges)
    for (s, rec), want in ref.items():
        got = r.per_example[senders.index(s), receivers.index(rec)]
        assert want.abs().max() > 5e-7  # every edge here carries something
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations"])
def test_fast_backend_equals_hooks(tiny_model, method):
    """The fast backend runs the blocks on their own, starts each activations-variant run at
    its group's block (passes of 4 rows mix groups of different layers) and unembeds only
    the final position; the scores are those of full hooked passes."""
    ds = _ds(tiny_model)
    steps = 1 if method == "eap" else 3
    fast = edge_attribution_patch(tiny_model, ds, method=method, ig_steps=steps, batch_size=4, backend="fast",
                                  progress=False)
    hooks = edge_attribution_patch(tiny_model, ds, method=method, ig_steps=steps, batch_size=4, backend="hooks",
                                   progress=False)
    assert hooks.per_example.abs().max() > 1e-3
    torch.testing.assert_close(fast.per_example, hooks.per_example, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.baselines["clean"], hooks.baselines["clean"], atol=1e-5, rtol=1e-4)


def test_batch_size_does_not_change_scores(tiny_llama):
    ds = _ds(tiny_llama)
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        a = edge_attribution_patch(tiny_llama, ds, method=method, ig_steps=3, progress=False)
        b = edge_attribution_patch(tiny_llama, ds, method=method, ig_steps=3, batch_size=2, progress=False)
        torch.testing.assert_close(a.per_example, b.per_example, atol=1e-5, rtol=1e-4)


def test_bad_input(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    with pytest.raises(ValueError, match="method"):
        edge_attribution_patch(tiny_gpt2, ds, method="eap-ig")
    with pytest.raises(ValueError, match="ig_steps"):
        edge_attribution_patch(tiny_gpt2, ds, method="eap-ig-inputs", ig_steps=0)
    with pytest.raises(ValueError, match="ig_steps"):
        edge_attribution_patch(tiny_gpt2, ds, ig_steps=3)
    with pytest.raises(ValueError, match="interpolate"):
        eap_ig(tiny_gpt2, ds, interpolate="embeddings")
