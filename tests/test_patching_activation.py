"""Exact activation patching: equal to transformer_lens.patching (or to a slow obvious hook
loop) on tiny models of every architecture, invariants, errors, and hook hygiene."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tlp

from mechlens.data import toy_movie_review
from mechlens.engine import SuffixRunner, base_run, plan_passes
from mechlens.metrics import fraction_recovered, logit_diff
from mechlens.patching import activation_patch

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_ds(tiny_model):
    return toy_movie_review(tiny_model, "train")[:3]


def _tl_metric(ds):
    return lambda logits: logit_diff(logits, ds.answers)


def _clean_cache(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)[1]


_REFERENCES: dict = {}


def _tl_reference(model, ds, fn, mode="denoise"):
    """TransformerLens's sweep ``fn`` (one forward pass per cell), computed once per model, site
    and mode for the tests of both backends."""
    key = (id(model), id(ds), id(fn), mode)
    if key not in _REFERENCES:
        run, cached = (ds.corrupt_tokens, ds.clean_tokens) if mode == "denoise" else (ds.clean_tokens, ds.corrupt_tokens)
        # (the model, dataset and function are kept too, so that their ids stay theirs)
        _REFERENCES[key] = (model, ds, fn, fn(model, run, _clean_cache(model, cached), _tl_metric(ds), reduce="none").values)
    return _REFERENCES[key][3]


def _no_hooks_left(model) -> bool:
    for hp in model.hook_dict.values():
        if hp._forward_hooks or hp._backward_hooks:
            return False
    return all(not b._forward_pre_hooks for b in model.blocks)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("site,fn", [
    ("resid_pre", tlp.get_act_patch_resid_pre),
    ("attn_out", tlp.get_act_patch_attn_out),
    ("mlp_out", tlp.get_act_patch_mlp_out),
])
@pytest.mark.parametrize("backend", ["fast", "hooks"])
def test_block_sites_match_transformer_lens(tiny_model, tiny_ds, site, fn, backend):
    ds = tiny_ds
    ref = _tl_reference(tiny_model, ds, fn)
    res = activation_patch(tiny_model, ds, site, metric="logit_diff", progress=False, backend=backend)
    assert res.axes == ("layer", "pos")
    assert res.per_example.shape == ref.shape
    torch.testing.assert_close(res.per_example, ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["fast", "hooks"])
def test_noise_mode_matches_transformer_lens(tiny_model, tiny_ds, backend):
    ds = tiny_ds
    ref = _tl_reference(tiny_model, ds, tlp.get_act_patch_resid_pre, mode="noise")
    res = activation_patch(tiny_model, ds, "resid_pre", metric="logit_diff", mode="noise", progress=False,
                           backend=backend)
    torch.testing.assert_close(res.per_example, ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("site,act", [("z", "z"), ("q", "q"), ("k", "k"), ("v", "v"), ("pattern", "pattern")])
def test_head_sites_by_position_match_transformer_lens(tiny_model, tiny_ds, site, act):
    """Head sites at a few positions (layer x pos x head), against TL's generic patcher on
    the same cells (index_df)."""
    ds = tiny_ds
    model = tiny_model
    n_heads = model.cfg.n_heads
    if site in ("k", "v"):
        n_heads = model.cfg.n_key_value_heads or n_heads
    adj = int(ds.positions["ADJ"][0])
    assert (ds.positions["ADJ"] == adj).all()
    positions = [1, adj, ds.seq_len - 1]
    cells = list(itertools.product(range(model.cfg.n_layers), positions, range(n_heads)))
    if site == "pattern":
        # TL indexes patterns as (layer, head, dest_pos)
        index_df = pd.DataFrame([(la, h, p) for la, p, h in cells], columns=["layer", "head_index", "dest_pos"])
        setter = tlp.layer_head_pos_pattern_patch_setter
    else:
        index_df = pd.DataFrame(cells, columns=["layer", "pos", "head_index"])
        setter = tlp.layer_pos_head_vector_patch_setter
    ref = tlp.generic_activation_patch(
        model, ds.corrupt_tokens, _clean_cache(model, ds.clean_tokens), _tl_metric(ds), setter, act,
        index_df=index_df, reduce="none",
    ).values
    res = activation_patch(model, ds, site, metric="logit_diff", positions=positions, progress=False)
    assert res.axes == ("layer", "pos", "head")
    assert res.per_example.shape == (model.cfg.n_layers, 3, n_heads, ds.batch)
    torch.testing.assert_close(res.per_example.reshape(-1, ds.batch), ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("site,fn", [
    ("z", tlp.get_act_patch_attn_head_out_all_pos),
    ("v", tlp.get_act_patch_attn_head_v_all_pos),
    ("pattern", tlp.get_act_patch_attn_head_pattern_all_pos),
])
@pytest.mark.parametrize("backend", ["fast", "hooks"])
def test_head_sites_all_positions_match_transformer_lens(tiny_model, tiny_ds, site, fn, backend):
    ds = tiny_ds
    ref = _tl_reference(tiny_model, ds, fn)
    res = activation_patch(tiny_model, ds, site, metric="logit_diff", positions="all", progress=False,
                           backend=backend)
    assert res.axes == ("layer", "head")
    torch.testing.assert_close(res.per_example, ref.float(), atol=ATOL, rtol=0)


def test_head_by_position_full_grid_matches_transformer_lens(tiny_gpt2):
    """The full (layer, pos, head) grid of head outputs, as TL's own sweep returns it."""
    ds = toy_movie_review(tiny_gpt2, "train")[:2]
    ref = tlp.get_act_patch_attn_head_out_by_pos(
        tiny_gpt2, ds.corrupt_tokens, _clean_cache(tiny_gpt2, ds.clean_tokens), _tl_metric(ds), reduce="none"
    ).values
    res = activation_patch(tiny_gpt2, ds, "z", metric="logit_diff", progress=False)
    torch.testing.assert_close(res.per_example, ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["fast", "hooks"])
def test_named_position_matches_hook_loop(tiny_model, backend):
    """positions='ADJ' (a per-example index) against a slow obvious loop of hooked runs."""
    model = tiny_model
    ds = toy_movie_review(model, "train")[:4]
    res = activation_patch(model, ds, "resid_pre", metric="logit_diff", positions="ADJ", progress=False,
                           backend=backend)
    assert res.axes == ("layer",)
    clean = _clean_cache(model, ds.clean_tokens)
    rows = torch.arange(ds.batch)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"

        def hook(act, hook, name=name):
            act = act.clone()
            act[rows, ds.positions["ADJ"]] = clean[name][rows, ds.positions["ADJ"]]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(ds.corrupt_tokens, fwd_hooks=[(name, hook)])
        torch.testing.assert_close(res.per_example[layer], logit_diff(logits, ds.answers), atol=ATOL, rtol=0)


def test_resid_mid_patches_the_residual_stream(tiny_gpt2, tiny_llama):
    """resid_mid at (L, p) patches the residual itself, so (the MLP being position-wise) it
    equals patching resid_post at (L, p). TL's hook on a bridge reaches only the MLP input."""
    for model in (tiny_gpt2, tiny_llama):
        ds = toy_movie_review(model, "train")[:3]
        mid = activation_patch(model, ds, "resid_mid", metric="logit_diff", progress=False)
        post = activation_patch(model, ds, "resid_post", metric="logit_diff", progress=False)
        pre = activation_patch(model, ds, "resid_pre", metric="logit_diff", progress=False)
        torch.testing.assert_close(mid.per_example, post.per_example, atol=ATOL, rtol=0)
        # resid_post[L] is resid_pre[L+1]
        torch.testing.assert_close(post.per_example[:-1], pre.per_example[1:], atol=ATOL, rtol=0)
        # patching every position of the last resid_post restores the clean run
        last = activation_patch(model, ds, "resid_post", metric="logit_diff", positions="all",
                                layers=model.cfg.n_layers - 1, progress=False)
        torch.testing.assert_close(last.per_example[0], mid.baselines["clean"], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
                                  "z", "q", "k", "v", "pattern"])
def test_backends_agree_on_every_site(tiny_model, tiny_ds, site):
    """The hooks backend (full run_with_hooks passes) equals the fast one, cell by cell."""
    if site == "resid_mid" and tiny_model.cfg.parallel_attn_mlp:
        pytest.skip("parallel blocks have no resid_mid")
    ds = tiny_ds
    positions = None if site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out") else [1, 3, -1]
    kw = dict(metric="logit_diff", positions=positions, progress=False, batch_size=7)
    fast = activation_patch(tiny_model, ds, site, backend="fast", **kw)
    hooks = activation_patch(tiny_model, ds, site, backend="hooks", **kw)
    assert fast.axes == hooks.axes and fast.labels == hooks.labels
    torch.testing.assert_close(hooks.per_example, fast.per_example, atol=ATOL, rtol=0)
    assert fast.per_example.abs().max() > 0  # the sweep patched something


def test_backend_argument_is_checked(tiny_model, tiny_ds):
    with pytest.raises(ValueError, match="backend='warp'.*'auto', 'fast', 'hooks'"):
        activation_patch(tiny_model, tiny_ds, "resid_pre", backend="warp", progress=False)


def test_suffix_runner_reproduces_full_forward(tiny_model):
    """Running blocks L.. from the cached residual (and from position p with the cached
    keys/values) gives the full forward pass's logits, for every layer."""
    model = tiny_model
    ds = toy_movie_review(model, "train")[:3]
    names = [f"blocks.{la}.hook_resid_pre" for la in range(model.cfg.n_layers)]
    run = base_run(model, ds.clean_tokens, names)
    runner = SuffixRunner(model, run.block_kwargs, run.kv)
    assert runner.can_skip_positions
    with torch.no_grad():
        full = model(ds.clean_tokens)
        for layer, p in itertools.product(range(model.cfg.n_layers), [0, 5, ds.seq_len - 1]):
            start = run.cache[names[layer]]
            out, _ = runner.run([(layer, start[:, p:].repeat(2, 1, 1))], output="all", offset=p)
            torch.testing.assert_close(out, full[:, p:].repeat(2, 1, 1), atol=1e-5, rtol=0)


def test_suffix_runner_stands_in_a_given_attention_output(tiny_model):
    """attention={layer: output}: those blocks add the given attention output and run only
    their MLP. With the run's own hook_attn_out it reproduces the full forward; with a
    changed one it equals run_with_hooks replacing hook_attn_out. Parallel attention/MLP
    blocks (neox) cannot take it, and say so."""
    model = tiny_model
    ds = toy_movie_review(model, "train")[:3]
    n = model.cfg.n_layers
    names = [f"blocks.{la}.hook_attn_out" for la in range(n)] + ["blocks.0.hook_resid_pre"]
    run = base_run(model, ds.clean_tokens, names)
    runner = SuffixRunner(model, run.block_kwargs, run.kv)
    assert runner.can_replace_attention == (not model.cfg.parallel_attn_mlp)
    x = run.cache["blocks.0.hook_resid_pre"]
    if not runner.can_replace_attention:
        with pytest.raises(ValueError, match="attention= cannot stand in"):
            runner.run([(0, x)], attention={0: run.cache[names[0]]})
        return
    g = torch.Generator().manual_seed(3)
    bump = 0.3 * torch.randn(x.shape[1:], generator=g)
    with torch.no_grad():
        out, _ = runner.run([(0, x)], output="all", attention={la: run.cache[names[la]] for la in range(n)})
        torch.testing.assert_close(out, model(ds.clean_tokens), atol=1e-5, rtol=0)
        out, _ = runner.run([(0, x.repeat(2, 1, 1))], output="all", attention={1: run.cache[names[1]] + bump})
        ref = model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(names[1], lambda act, hook: act + bump)])
        torch.testing.assert_close(out, ref.repeat(2, 1, 1), atol=1e-5, rtol=0)


def test_patching_clean_into_clean_changes_nothing(tiny_model):
    ds = toy_movie_review(tiny_model, "train")[:3]
    same = ds[:]
    same.corrupt_tokens = ds.clean_tokens.clone()
    for site, positions in [("resid_pre", None), ("z", "all"), ("mlp_out", "ADJ")]:
        res = activation_patch(tiny_model, same, site, metric="logit_diff", positions=positions, progress=False)
        target = res.baselines["clean"].expand_as(res.per_example)
        torch.testing.assert_close(res.per_example, target, atol=1e-5, rtol=0)


def test_unchanged_prefix_positions_keep_the_base_value_exactly(tiny_model, tiny_ds):
    """Positions before the first token where clean and corrupt differ carry identical
    activations (attention is causal): patching them returns the corrupt run exactly."""
    ds = tiny_ds
    res = activation_patch(tiny_model, ds, "resid_pre", progress=False)
    first_diff = int((ds.clean_tokens != ds.corrupt_tokens).any(0).nonzero().min())
    assert first_diff > 0
    assert (res.per_example[:, :first_diff] == 0).all()
    assert res.values[0, first_diff].abs() > 0.05


def test_fraction_recovered_is_the_paper_metric(tiny_model, tiny_ds):
    ds = tiny_ds
    fr = activation_patch(tiny_model, ds, "attn_out", progress=False)
    ld = activation_patch(tiny_model, ds, "attn_out", metric="logit_diff", progress=False)
    clean, corrupt = ld.baselines["clean"].mean(), ld.baselines["corrupt"].mean()
    expected = fraction_recovered(ld.values, clean, corrupt)
    # compared in logit-difference units: a random tiny model's clean - corrupt gap is small
    torch.testing.assert_close(fr.values * (clean - corrupt), expected * (clean - corrupt), atol=1e-5, rtol=0)
    assert fr.baselines["corrupt"].mean().abs() < 1e-6
    assert (fr.baselines["clean"].mean() - 1).abs() < 1e-4


def test_callable_metric_and_batch_size(tiny_model, tiny_ds):
    ds = tiny_ds
    ref = activation_patch(tiny_model, ds, "z", metric="logit_diff", positions=[2, ds.seq_len - 1], progress=False)

    def my_ld(logits, d):
        assert logits.shape[0] == d.batch and logits.ndim == 3
        return logit_diff(logits, d.answers)

    res = activation_patch(tiny_model, ds, "z", metric=my_ld, positions=[2, ds.seq_len - 1], batch_size=3,
                           progress=False)
    assert res.metric == "my_ld"
    torch.testing.assert_close(res.per_example, ref.per_example, atol=1e-5, rtol=0)


def test_layers_heads_subsets_are_slices_of_the_full_sweep(tiny_model, tiny_ds):
    ds = tiny_ds
    full = activation_patch(tiny_model, ds, "q", metric="logit_diff", positions="all", progress=False)
    sub = activation_patch(tiny_model, ds, "q", metric="logit_diff", positions="all", layers=[1], heads=[0, 2],
                           progress=False)
    assert sub.labels == {"layer": [1], "head": [0, 2]}
    torch.testing.assert_close(sub.per_example, full.per_example[1:2][:, [0, 2]], atol=1e-5, rtol=0)


def test_position_list_labels_and_values(tiny_model, tiny_ds):
    ds = tiny_ds
    grid = activation_patch(tiny_model, ds, "resid_pre", metric="logit_diff", progress=False)
    res = activation_patch(tiny_model, ds, "resid_pre", metric="logit_diff", positions=["END", 3, -2],
                           progress=False)
    assert res.labels["pos"][0] == "END"
    assert res.labels["pos"][1] == grid.labels["pos"][3]
    s = ds.seq_len
    torch.testing.assert_close(res.per_example, grid.per_example[:, [s - 1, 3, s - 2]], atol=1e-5, rtol=0)


def test_plan_passes_covers_every_configuration_once():
    first = [5, 0, 3, 3, 18, 0, 7, 12] * 5
    start = [0, 1, 2, 3, 0, 1, 2, 3] * 5
    plan = plan_passes(first, start, n_layers=4, seq_len=19, batch=2, max_configs=6)
    flat = sorted(i for chunk in plan for i in chunk)
    assert flat == list(range(len(first)))
    assert all(1 <= len(c) <= 6 for c in plan)
    # one pass per distinct first position is never worse than what the plan costs
    assert len(plan) <= len(first)


# ----------------------------------------------------------------------------- errors / hygiene


def test_clear_errors(tiny_model, tiny_ds):
    ds = tiny_ds
    n = tiny_model.cfg.n_layers
    with pytest.raises(ValueError, match="unknown site"):
        activation_patch(tiny_model, ds, "resid_middle", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        activation_patch(tiny_model, ds, "resid_pre", layers=[n], progress=False)
    with pytest.raises(ValueError, match="head 99 is out of range"):
        activation_patch(tiny_model, ds, "z", heads=[99], progress=False)
    with pytest.raises(ValueError, match="has no heads"):
        activation_patch(tiny_model, ds, "resid_pre", heads=[0], progress=False)
    with pytest.raises(ValueError, match="mode"):
        activation_patch(tiny_model, ds, "resid_pre", mode="restore", progress=False)
    with pytest.raises(ValueError, match="not a position"):
        activation_patch(tiny_model, ds, "resid_pre", positions="NOUN", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        activation_patch(tiny_model, ds, "resid_pre", positions=[ds.seq_len], progress=False)
    with pytest.raises(ValueError, match="metric"):
        activation_patch(tiny_model, ds, "resid_pre", metric="accuracy", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        activation_patch(tiny_model, ds, "resid_pre", batch_size=0, progress=False)


def test_resid_mid_absent_on_parallel_blocks():
    from mechlens.models import tiny

    neox = tiny("neox", n_layers=1)
    ds = toy_movie_review(neox, "train")[:2]
    with pytest.raises(ValueError, match="parallel"):
        activation_patch(neox, ds, "resid_mid", progress=False)


def test_exception_inside_a_sweep_leaves_no_hook(tiny_model, tiny_ds):
    ds = tiny_ds
    with torch.no_grad():
        before = tiny_model(ds.clean_tokens)

    def broken(logits, d):
        raise RuntimeError("boom")

    for site in ("resid_pre", "z"):
        with pytest.raises(RuntimeError, match="boom"):
            activation_patch(tiny_model, ds, site, metric=broken, positions="all", progress=False)
        assert _no_hooks_left(tiny_model)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(ds.clean_tokens), before)


@pytest.mark.slow
def test_smollm2_matches_transformer_lens(smollm2, movie_train):
    """The real model: resid_pre and head z, on a few layers, against TL on the same cells."""
    model, ds = smollm2, movie_train[:2]
    clean = _clean_cache(model, ds.clean_tokens)
    metric = _tl_metric(ds)
    layers = [0, 14, 29]
    adj = int(ds.positions["ADJ"][0])
    positions = [adj, adj + 2, ds.seq_len - 1]
    cells = list(itertools.product(layers, positions))
    ref = tlp.generic_activation_patch(
        model, ds.corrupt_tokens, clean, metric, tlp.layer_pos_patch_setter, "resid_pre",
        index_df=pd.DataFrame(cells, columns=["layer", "pos"]), reduce="none",
    ).values
    res = activation_patch(model, ds, "resid_pre", metric="logit_diff", layers=layers, positions=positions,
                           progress=False)
    torch.testing.assert_close(res.per_example.reshape(-1, ds.batch), ref.float(), atol=ATOL, rtol=0)

    heads = [0, 4, 8]
    cells = list(itertools.product([6, 28], [adj, ds.seq_len - 1], heads))
    ref = tlp.generic_activation_patch(
        model, ds.corrupt_tokens, clean, metric, tlp.layer_pos_head_vector_patch_setter, "z",
        index_df=pd.DataFrame(cells, columns=["layer", "pos", "head_index"]), reduce="none",
    ).values
    res = activation_patch(model, ds, "z", metric="logit_diff", layers=[6, 28], heads=heads,
                           positions=[adj, ds.seq_len - 1], progress=False)
    torch.testing.assert_close(res.per_example.reshape(-1, ds.batch), ref.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("site,metric", [("resid_pre", "fraction_recovered"), ("z", "logit_diff")])
def test_a_dataset_larger_than_a_pass_gives_the_same_numbers(tiny_model, tiny_ds, site, metric):
    """batch_size bounds memory: with fewer sequences per pass than the base run's clean and
    corrupt prompts, the examples run in chunks (normalised by the whole dataset's means)."""
    one = activation_patch(tiny_model, tiny_ds, site, metric=metric, progress=False)
    split = activation_patch(tiny_model, tiny_ds, site, metric=metric, batch_size=4, progress=False)
    assert tiny_ds.batch > 2  # batch_size=4 holds 2 examples' clean + corrupt prompts: several chunks
    # float rounding of the logit differences (1e-5), divided by the clean-corrupt gap for fractions
    with torch.no_grad():
        gap = float((logit_diff(tiny_model(tiny_ds.clean_tokens), tiny_ds.answers)
                     - logit_diff(tiny_model(tiny_ds.corrupt_tokens), tiny_ds.answers)).mean())
    tol = 1e-5 / min(1.0, abs(gap)) if metric == "fraction_recovered" else 1e-5
    torch.testing.assert_close(split.per_example, one.per_example, atol=tol, rtol=0)
    assert split.labels == one.labels
    for k in one.baselines:
        torch.testing.assert_close(split.baselines[k], one.baselines[k], atol=tol, rtol=0)
