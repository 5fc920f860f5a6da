"""mechlens on TransformerLens 3.9's HookedTransformer (removed in TransformerLens 4.x).

Runs in the second test environment (``bash scripts/setup.sh --tl39``; ``scripts/test.sh``
runs it after the main suite) and is skipped where HookedTransformer does not exist. The
numbers are checked against TransformerLens 3.9's own ``transformer_lens.patching`` and
against hand computations, on GPT-2-, NeoX- and Llama-shaped tiny models.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mechlens.model_protocol import has_hooked_transformer

if not has_hooked_transformer():
    pytest.skip("HookedTransformer needs TransformerLens 3.x (scripts/setup.sh --tl39)", allow_module_level=True)

import pandas as pd  # noqa: E402
import transformer_lens  # noqa: E402
import transformer_lens.patching as tlp  # noqa: E402

from mechlens.data import toy_movie_review  # noqa: E402
from mechlens.metrics import logit_diff  # noqa: E402
from mechlens.models import load_model, tiny  # noqa: E402
from mechlens.patching import activation_patch, path_patch  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module", params=["gpt2", "neox", "llama"])
def ht(request):
    return tiny(request.param, n_layers=2, seed=0, model_class="hooked")


@pytest.fixture(scope="module")
def ds(ht):
    return toy_movie_review(ht, "train")[:3]


def _metric(ds):
    # TransformerLens 3.9's patchers take a scalar metric: compare means over the examples
    return lambda logits: logit_diff(logits, ds.answers).mean()


def _cache(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)[1]


def test_tiny_hooked_is_a_hooked_transformer(ht):
    assert isinstance(ht, transformer_lens.HookedTransformer)
    assert load_model(ht) is ht


@pytest.mark.parametrize("site,fn", [
    ("resid_pre", tlp.get_act_patch_resid_pre),
    ("attn_out", tlp.get_act_patch_attn_out),
    ("mlp_out", tlp.get_act_patch_mlp_out),
])
def test_block_sites_match_transformer_lens(ht, ds, site, fn):
    ref = fn(ht, ds.corrupt_tokens, _cache(ht, ds.clean_tokens), _metric(ds))
    res = activation_patch(ht, ds, site, metric="logit_diff", progress=False)
    torch.testing.assert_close(res.values, ref.float(), atol=ATOL, rtol=0)


def test_resid_mid_matches_transformer_lens(ht, ds):
    # on a HookedTransformer hook_resid_mid is the residual itself, so TL's patch is ours
    if ht.cfg.parallel_attn_mlp:
        with pytest.raises(ValueError, match="no residual stream between them"):
            activation_patch(ht, ds, "resid_mid", progress=False)
        return
    ref = tlp.get_act_patch_resid_mid(ht, ds.corrupt_tokens, _cache(ht, ds.clean_tokens), _metric(ds),
                                      )
    res = activation_patch(ht, ds, "resid_mid", metric="logit_diff", progress=False)
    torch.testing.assert_close(res.values, ref.float(), atol=ATOL, rtol=0)


def test_noise_mode_matches_transformer_lens(ht, ds):
    ref = tlp.get_act_patch_resid_pre(ht, ds.clean_tokens, _cache(ht, ds.corrupt_tokens), _metric(ds),
                                      )
    res = activation_patch(ht, ds, "resid_pre", metric="logit_diff", mode="noise", progress=False)
    torch.testing.assert_close(res.values, ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("site,fn", [
    ("z", tlp.get_act_patch_attn_head_out_all_pos),
    ("q", tlp.get_act_patch_attn_head_q_all_pos),
    ("k", tlp.get_act_patch_attn_head_k_all_pos),
    ("v", tlp.get_act_patch_attn_head_v_all_pos),
    ("pattern", tlp.get_act_patch_attn_head_pattern_all_pos),
])
def test_head_sites_all_positions_match_transformer_lens(ht, ds, site, fn):
    if site in ("k", "v") and ht.cfg.n_key_value_heads not in (None, ht.cfg.n_heads):
        pytest.skip("TransformerLens's k/v patchers sweep query heads; mechlens sweeps key/value heads")
    ref = fn(ht, ds.corrupt_tokens, _cache(ht, ds.clean_tokens), _metric(ds))
    res = activation_patch(ht, ds, site, metric="logit_diff", positions="all", progress=False)
    torch.testing.assert_close(res.values, ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("site", ["z", "q", "k", "v", "pattern"])
def test_head_sites_by_position_match_transformer_lens(ht, ds, site):
    n_heads = ht.cfg.n_heads
    if site in ("k", "v"):
        n_heads = ht.cfg.n_key_value_heads or n_heads
        if n_heads != ht.cfg.n_heads:
            pytest.skip("grouped-query k/v: TransformerLens indexes query heads")
    positions = [1, int(ds.positions["ADJ"][0]), ds.seq_len - 1]
    cells = list(itertools.product(range(ht.cfg.n_layers), positions, range(n_heads)))
    if site == "pattern":
        index_df = pd.DataFrame([(la, h, p) for la, p, h in cells], columns=["layer", "head_index", "dest_pos"])
        setter = tlp.layer_head_pos_pattern_patch_setter
    else:
        index_df = pd.DataFrame(cells, columns=["layer", "pos", "head_index"])
        setter = tlp.layer_pos_head_vector_patch_setter
    ref = tlp.generic_activation_patch(ht, ds.corrupt_tokens, _cache(ht, ds.clean_tokens), _metric(ds), setter,
                                       site, index_df=index_df)
    res = activation_patch(ht, ds, site, metric="logit_diff", positions=positions, progress=False)
    torch.testing.assert_close(res.values.reshape(-1), ref.float(), atol=ATOL, rtol=0)


def test_path_patching_to_final_residual_is_the_direct_effect(ht, ds):
    clean, corrupt = _cache(ht, ds.clean_tokens), _cache(ht, ds.corrupt_tokens)
    res = path_patch(ht, ds, "all_heads", "resid_final", metric="logit_diff", freeze_mlps=True, progress=False)
    n = ht.cfg.n_layers
    for layer, head in itertools.product(range(n), range(ht.cfg.n_heads)):
        z = f"blocks.{layer}.attn.hook_z"
        resid = corrupt[f"blocks.{n - 1}.hook_resid_post"] + (
            (clean[z][:, :, head] - corrupt[z][:, :, head]) @ ht.blocks[layer].attn.W_O[head]
        )
        with torch.no_grad():
            want = logit_diff(ht.unembed(ht.ln_final(resid)), ds.answers)
        torch.testing.assert_close(res.per_example[layer, head], want, atol=ATOL, rtol=0)


def test_path_patching_head_receivers_match_an_arena_loop(ht, ds):
    """Sender L0H1 -> receiver L1H0's query (MLPs recomputed), the ARENA way: a frozen run
    that records the receiver's input, then a run with only that input patched."""
    clean, corrupt = _cache(ht, ds.clean_tokens), _cache(ht, ds.corrupt_tokens)
    res = path_patch(ht, ds, [(0, 1)], [(1, 0, "q")], metric="logit_diff", progress=False)

    def freeze(act, hook):
        out = corrupt[hook.name].clone()
        if hook.layer() == 0:
            out[:, :, 1] = clean[hook.name][:, :, 1]
        return out

    saved = {}
    ht.set_use_split_qkv_input(True)
    try:
        with torch.no_grad():
            ht.run_with_hooks(
                ds.corrupt_tokens,
                fwd_hooks=[(lambda n: n.endswith("attn.hook_z"), freeze),
                           ("blocks.1.hook_q_input", lambda act, hook: saved.setdefault("q", act.clone()))],
            )

            def patch_q(act, hook):
                act = act.clone()
                act[:, :, 0] = saved["q"][:, :, 0]
                return act

            logits = ht.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[("blocks.1.hook_q_input", patch_q)])
    finally:
        ht.set_use_split_qkv_input(False)
    torch.testing.assert_close(res.per_example[0], logit_diff(logits, ds.answers), atol=ATOL, rtol=0)


def test_fast_backend_is_refused_with_the_fix(ht, ds):
    with pytest.raises(ValueError, match="backend='fast' needs a TransformerLens TransformerBridge.*'hooks'"):
        activation_patch(ht, ds, "resid_pre", backend="fast", progress=False)


def test_no_hook_left_after_an_error(ht, ds):
    def broken(logits, ds):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        activation_patch(ht, ds, "z", metric=broken, positions="all", progress=False)
    assert all(not hp._forward_hooks for hp in ht.hook_dict.values())


def test_hub_names_fail_fast_offline(monkeypatch):
    import time

    from mechlens.models import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="smollm2-135m"):
        load_model("gpt2-small")
    assert time.perf_counter() - t < 10
