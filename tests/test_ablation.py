"""Ablation sweeps, knockout and knockout curves, against hand-written hook loops and patching."""

import pytest
import torch

from mechlens.ablation import ablate_sweep, knockout, knockout_curve, parse_component
from mechlens.data import ContrastDataset
from mechlens.metrics import logit_diff
from mechlens.patching import activation_patch


def _ds(model):
    words = [("good", "bad"), ("great", "dull"), ("bad", "good"), ("dull", "great")]
    clean = [f"I thought this movie was {a}, I" for a, _ in words]
    corrupt = [f"I thought this movie was {b}, I" for _, b in words]
    return ContrastDataset.from_prompts(model, clean, corrupt, [(" loved", " hated")], positions={"ADJ": 6})


def _ld_with(model, ds, hook_name, fn):
    with torch.no_grad():
        logits = model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(hook_name, fn)])
    return logit_diff(logits, ds.answers).float()


def _clean_ld(model, ds):
    with torch.no_grad():
        return logit_diff(model(ds.clean_tokens), ds.answers).float()


def test_resample_equals_noise_patching(tiny_model):
    ds = _ds(tiny_model)
    for comp, site in (("heads", "z"), ("mlp", "mlp_out")):
        abl = ablate_sweep(tiny_model, ds, comp, how="resample", progress=False, batch_size=8)
        pat = activation_patch(tiny_model, ds, site, mode="noise", metric="logit_diff", positions="all",
                               progress=False, backend="hooks")
        assert abl.axes == pat.axes and abl.shape == pat.shape
        torch.testing.assert_close(abl.per_example + abl.baselines["clean"], pat.per_example, atol=1e-4, rtol=0)


def test_mean_ablation_of_a_head_by_hand(tiny_model):
    ds = _ds(tiny_model)
    res = ablate_sweep(tiny_model, ds, "heads", how="mean", progress=False)
    layer, head = 1, 2
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = tiny_model.run_with_cache(torch.cat([ds.clean_tokens, ds.corrupt_tokens]), names_filter=name)
    mean = cache[name].mean(0)  # [pos, head, d_head]

    def fn(z, hook):
        z = z.clone()
        z[:, :, head] = mean[:, head]
        return z

    want = _ld_with(tiny_model, ds, name, fn) - _clean_ld(tiny_model, ds)
    torch.testing.assert_close(res.per_example[layer, head], want, atol=1e-4, rtol=0)
    assert res.axes == ("layer", "head") and res.component == "heads" and res.how == "mean"
    assert torch.isfinite(res.stderr()).all()


def test_zero_ablation_by_hand(tiny_model):
    ds = _ds(tiny_model)
    heads = ablate_sweep(tiny_model, ds, "heads", how="zero", layers=[0], heads=[1], progress=False)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    want = _ld_with(tiny_model, ds, "blocks.0.attn.hook_z", zero_head) - _clean_ld(tiny_model, ds)
    torch.testing.assert_close(heads.per_example[0, 0], want, atol=1e-4, rtol=0)

    layer = ablate_sweep(tiny_model, ds, "layer", how="zero", layers=1, progress=False)
    with torch.no_grad():
        logits = tiny_model.run_with_hooks(ds.clean_tokens, fwd_hooks=[
            ("blocks.1.hook_attn_out", lambda a, hook: torch.zeros_like(a)),
            ("blocks.1.hook_mlp_out", lambda a, hook: torch.zeros_like(a))])
    want = logit_diff(logits, ds.answers).float() - _clean_ld(tiny_model, ds)
    torch.testing.assert_close(layer.per_example[0], want, atol=1e-4, rtol=0)

    neur = ablate_sweep(tiny_model, ds, "neurons", how="zero", layers=[0], neurons=[3, 7], progress=False)

    def zero_neuron(a, hook):
        a = a.clone()
        a[..., 7] = 0
        return a

    want = _ld_with(tiny_model, ds, "blocks.0.mlp.hook_post", zero_neuron) - _clean_ld(tiny_model, ds)
    assert neur.axes == ("layer", "neuron") and neur.labels["neuron"] == [3, 7]
    torch.testing.assert_close(neur.per_example[0, 1], want, atol=1e-4, rtol=0)


def test_heads_pos_and_reference(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    per_pos = ablate_sweep(tiny_gpt2, ds, "heads_pos", how="zero", layers=[1], progress=False)
    assert per_pos.axes == ("layer", "pos", "head") and per_pos.shape == (1, ds.seq_len, 4)
    ref = _ds(tiny_gpt2)[[0, 1]]
    a = ablate_sweep(tiny_gpt2, ds, "mlp", how="resample", reference=ref, seed=1, progress=False)
    b = ablate_sweep(tiny_gpt2, ds, "mlp", how="resample", reference=ref, seed=1, progress=False)
    torch.testing.assert_close(a.per_example, b.per_example)
    with pytest.raises(ValueError, match="reference"):
        short = ContrastDataset.from_prompts(tiny_gpt2, ["I loved it"], ["I hated it"], [(" good", " bad")])
        ablate_sweep(tiny_gpt2, ds, "mlp", how="mean", reference=short, progress=False)


def test_knockout_context_manager(tiny_model):
    ds = _ds(tiny_model)
    before = _clean_ld(tiny_model, ds)
    with knockout(tiny_model, ["L1H2", "L0 mlp"], how="mean", ds=ds):
        inside = _clean_ld(tiny_model, ds)
    after = _clean_ld(tiny_model, ds)
    torch.testing.assert_close(after, before)
    assert not torch.allclose(inside, before)
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())
    with pytest.raises(RuntimeError, match="boom"):
        with knockout(tiny_model, ["L0"], how="zero"):
            raise RuntimeError("boom")
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())
    torch.testing.assert_close(_clean_ld(tiny_model, ds), before)
    # a single head by knockout equals the sweep's cell
    sweep = ablate_sweep(tiny_model, ds, "heads", how="zero", layers=[1], heads=[2], progress=False)
    with knockout(tiny_model, ["L1H2"], how="zero"):
        ko = _clean_ld(tiny_model, ds)
    torch.testing.assert_close(ko - before, sweep.per_example[0, 0], atol=1e-4, rtol=0)


def test_knockout_curve(tiny_model):
    ds = _ds(tiny_model)
    curve = knockout_curve(tiny_model, ds, how="mean", max_k=3, progress=False)
    torch.testing.assert_close(curve.per_example[0], _clean_ld(tiny_model, ds))
    assert curve.axes == ("k",) and curve.shape == (4,) and curve.labels["k"][0] == "none"
    sweep = ablate_sweep(tiny_model, ds, "heads", how="mean", progress=False)
    worst = sweep.values.flatten().argmin()
    n_h = tiny_model.cfg.n_heads
    assert curve.order[0] == f"L{int(worst) // n_h}H{int(worst) % n_h}"
    # explicit order: the last point equals knockout of all of them
    order = ["L0H1", "L1 mlp", "L1H3"]
    c2 = knockout_curve(tiny_model, ds, order, how="mean", progress=False)
    with knockout(tiny_model, order, how="mean", ds=ds):
        want = _clean_ld(tiny_model, ds)
    torch.testing.assert_close(c2.per_example[-1], want, atol=1e-4, rtol=0)


def test_bad_input(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    with pytest.raises(ValueError, match="component"):
        ablate_sweep(tiny_gpt2, ds, "attn")
    with pytest.raises(ValueError, match="how"):
        ablate_sweep(tiny_gpt2, ds, "mlp", how="noise")
    with pytest.raises(ValueError, match="metric"):
        ablate_sweep(tiny_gpt2, ds, "mlp", metric="fraction")
    with pytest.raises(ValueError, match="heads"):
        ablate_sweep(tiny_gpt2, ds, "mlp", heads=[0])
    with pytest.raises(ValueError, match="backend"):
        ablate_sweep(tiny_gpt2, ds, "mlp", backend="turbo")
    with pytest.raises(ValueError, match="components"):
        parse_component(tiny_gpt2, "L9H0")
    with pytest.raises(ValueError, match="components"):
        parse_component(tiny_gpt2, "head 3")
    with pytest.raises(ValueError, match="ds="):
        with knockout(tiny_gpt2, ["L0H0"], how="mean"):
            pass


@pytest.mark.parametrize("component,how", [("heads", "mean"), ("mlp", "zero"), ("layer", "resample"),
                                           ("neurons", "mean"), ("heads_pos", "zero")])
def test_fast_equals_hooks(tiny_model, component, how):
    """The fast backend (blocks before the ablation run once) gives the hooks backend's numbers,
    also when the examples do not fit one pass (batch_size smaller than the dataset)."""
    ds = _ds(tiny_model)
    kw = dict(how=how, progress=False, neurons=[0, 5] if component == "neurons" else None)
    fast = ablate_sweep(tiny_model, ds, component, backend="fast", batch_size=3, **kw)
    hooks = ablate_sweep(tiny_model, ds, component, backend="hooks", batch_size=8, **kw)
    assert fast.axes == hooks.axes and fast.shape == hooks.shape
    torch.testing.assert_close(fast.per_example, hooks.per_example, atol=1e-5, rtol=0)


def test_knockout_curve_fast_equals_hooks(tiny_model):
    ds = _ds(tiny_model)
    order = ["L1H0", "L0 mlp", "L0H1", "L1"]
    fast = knockout_curve(tiny_model, ds, order, how="mean", progress=False, backend="fast", batch_size=5)
    hooks = knockout_curve(tiny_model, ds, order, how="mean", progress=False, backend="hooks")
    torch.testing.assert_close(fast.per_example, hooks.per_example, atol=1e-5, rtol=0)
