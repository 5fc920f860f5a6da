"""Logit lens and direct logit attribution: exact decompositions, agreement with TransformerLens."""

import pytest
import torch

from mechlens.data import ContrastDataset
from mechlens.lens import (
    DLAResult,
    LogitLensResult,
    direct_logit_attribution,
    logit_lens,
    top_tokens,
)
from mechlens.metrics import logit_diff


def _ds(model):
    words = ["good", "bad", "great", "dull"]
    clean = [f"I thought this movie was {w}, I" for w in words]
    corrupt = [f"I thought this movie was {w}, I" for w in words[::-1]]
    return ContrastDataset.from_prompts(model, clean, corrupt, [(" loved", " hated")], positions={"ADJ": 6})


def _randomise_norm(model, seed=1):
    """Non-trivial final-norm weight and bias (random init has 1 and 0), restored after."""
    g = torch.Generator().manual_seed(seed)
    ln = model.ln_final
    saved = {n: p.detach().clone() for n, p in ln.named_parameters()}
    with torch.no_grad():
        for _, p in ln.named_parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return saved


def _restore(model, saved):
    with torch.no_grad():
        for n, p in model.ln_final.named_parameters():
            p.copy_(saved[n])


def test_dla_components_sum_to_logit_diff(tiny_model):
    ds = _ds(tiny_model)
    saved = _randomise_norm(tiny_model)
    try:
        res = direct_logit_attribution(tiny_model, ds, progress=False, batch_size=3)
        with torch.no_grad():
            real = logit_diff(tiny_model(ds.clean_tokens), ds.answers)
    finally:
        _restore(tiny_model, saved)
    assert isinstance(res, DLAResult) and res.axes == ("component",) and res.group == "components"
    rms = "RMS" in str(tiny_model.cfg.normalization_type)
    assert res.position == "END" and res.final_norm == ("RMS" if rms else "LN")
    labels = res.labels["component"]
    n, h = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    assert sum(lab.startswith("L") and "H" in lab for lab in labels) == n * h
    assert "embed" in labels and "L1 mlp" in labels
    torch.testing.assert_close(res.per_example.sum(0), real.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(res.baselines["clean"], real.float(), atol=1e-5, rtol=0)
    assert res.per_example[labels.index("L0H0")].abs().sum() > 0


def test_dla_groups_agree(tiny_model):
    ds = _ds(tiny_model)
    comp = direct_logit_attribution(tiny_model, ds, progress=False)
    heads = direct_logit_attribution(tiny_model, ds, group="heads", progress=False)
    layers = direct_logit_attribution(tiny_model, ds, group="layers", progress=False)
    lab = comp.labels["component"]
    assert heads.axes == ("layer", "head") and heads.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    torch.testing.assert_close(heads.per_example[1, 2], comp.per_example[lab.index("L1H2")])
    torch.testing.assert_close(layers.per_example[0, 1], comp.per_example[lab.index("L0 mlp")])
    attn0 = sum(comp.per_example[i] for i, x in enumerate(lab) if x.startswith("L0H") or x == "L0 attn bias")
    torch.testing.assert_close(layers.per_example[0, 0], attn0, atol=1e-5, rtol=0)


def test_dla_matches_transformer_lens_logit_attrs(tiny_model):
    """TransformerLens's own stack_head_results + apply_ln_to_stack, and logit_attrs."""
    ds = _ds(tiny_model)
    saved = _randomise_norm(tiny_model, seed=2)
    try:
        res = direct_logit_attribution(tiny_model, ds, group="heads", progress=False)
        _, cache = tiny_model.run_with_cache(ds.clean_tokens)
        stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [n_layers*n_heads, batch, d]
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        w = tiny_model.ln_final.w
        d = tiny_model.W_U[:, ds.answers[:, 0, 0]] - tiny_model.W_U[:, ds.answers[:, 0, 1]]  # [d, batch]
        ours = res.per_example.reshape(-1, ds.batch)
        theirs = torch.einsum("cbd,db->cb", scaled * w, d)
        torch.testing.assert_close(ours, theirs.float(), atol=1e-4, rtol=1e-4)
    finally:
        _restore(tiny_model, saved)
    # with the norm's weight 1 (the tiny model's init), TransformerLens's logit_attrs directly
    res = direct_logit_attribution(tiny_model, ds, group="heads", progress=False)
    _, cache = tiny_model.run_with_cache(ds.clean_tokens)
    stack = cache.stack_head_results(layer=-1, pos_slice=-1)
    attrs = cache.logit_attrs(stack, tokens=ds.answers[:, 0, 0], incorrect_tokens=ds.answers[:, 0, 1], pos_slice=-1)
    torch.testing.assert_close(res.per_example.reshape(-1, ds.batch), attrs.float(), atol=1e-4, rtol=1e-4)


def test_logit_lens_last_layer_is_the_model(tiny_model):
    ds = _ds(tiny_model)
    saved = _randomise_norm(tiny_model, seed=3)
    try:
        grid = logit_lens(tiny_model, ds, progress=False, batch_size=2)
        end = logit_lens(tiny_model, ds, positions="END", progress=False)
        some = logit_lens(tiny_model, ds, positions=["ADJ", -1], layers=[0], progress=False)
        with torch.no_grad():
            real = logit_diff(tiny_model(ds.clean_tokens), ds.answers)
            _, cache = tiny_model.run_with_cache(ds.clean_tokens)
    finally:
        _restore(tiny_model, saved)
    n = tiny_model.cfg.n_layers
    assert grid.axes == ("layer", "pos") and grid.shape == (n, ds.seq_len) and end.axes == ("layer",)
    torch.testing.assert_close(end.per_example[-1], real.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(grid.per_example[:, -1], end.per_example)
    # an earlier layer, by hand: accumulated_resid-style read of blocks.0.hook_resid_post at ADJ
    torch.testing.assert_close(some.per_example[0, 1], end.per_example[0])
    assert some.labels["pos"][0] == "ADJ"
    assert not torch.allclose(grid.per_example[0, -1], grid.per_example[-1, -1])


def test_logit_lens_matches_hand_computation(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    res = logit_lens(tiny_gpt2, ds, positions="ADJ", progress=False)
    _, cache = tiny_gpt2.run_with_cache(ds.clean_tokens)
    x = cache["blocks.0.hook_resid_post"][:, 6]
    x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + tiny_gpt2.cfg.eps).sqrt()
    x = x * tiny_gpt2.ln_final.w + tiny_gpt2.ln_final.b
    logits = x @ tiny_gpt2.W_U + tiny_gpt2.b_U
    want = logits.gather(1, ds.answers[:, 0, :1])[:, 0] - logits.gather(1, ds.answers[:, 0, 1:])[:, 0]
    torch.testing.assert_close(res.per_example[0], want.detach().float(), atol=1e-4, rtol=0)


def test_results_roundtrip_and_plot(tiny_gpt2, tmp_path):
    ds = _ds(tiny_gpt2)
    res = logit_lens(tiny_gpt2, ds, progress=False)
    back = LogitLensResult.load(res.save(tmp_path / "lens"))
    torch.testing.assert_close(back.per_example, res.per_example)
    assert back.labels == res.labels and back.site == "resid_post" and back.n_layers == tiny_gpt2.cfg.n_layers
    assert res.stderr().shape == res.shape
    res.plot()
    direct_logit_attribution(tiny_gpt2, ds, progress=False).plot()


def test_top_tokens(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    df = top_tokens(tiny_gpt2, ds, layers=[1], k=3)
    assert list(df.columns) == ["layer", "rank", "token", "logit", "prob"] and len(df) == 3
    logits = tiny_gpt2(ds.clean_tokens[:1])[0, -1]
    assert df["token"][0] == tiny_gpt2.to_string([int(logits.argmax())])


def test_bad_input(tiny_gpt2):
    ds = _ds(tiny_gpt2)
    with pytest.raises(ValueError, match="positions"):
        logit_lens(tiny_gpt2, ds, positions="all", progress=False)
    with pytest.raises(ValueError, match="group"):
        direct_logit_attribution(tiny_gpt2, ds, group="neurons", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        logit_lens(tiny_gpt2, ds, batch_size=0)
    with pytest.raises(ValueError, match="layers"):
        logit_lens(tiny_gpt2, ds, layers=[5])
    with pytest.raises(ValueError, match="k="):
        top_tokens(tiny_gpt2, ds, k=0)


@pytest.mark.slow
def test_ioi_lens_and_dla_on_smollm2(smollm2):
    from mechlens.data import ioi

    ds = ioi(smollm2, n_prompts=8, seed=0)
    dla = direct_logit_attribution(smollm2, ds, progress=False)
    real = dla.baselines["clean"]
    torch.testing.assert_close(dla.per_example.sum(0), real, atol=1e-3, rtol=0)
    lens = logit_lens(smollm2, ds, positions="END", layers=[0, 29], progress=False)
    torch.testing.assert_close(lens.per_example[-1], real, atol=1e-3, rtol=0)
    assert lens.values[0] < real.mean()  # the answer is not readable from the first layer yet
