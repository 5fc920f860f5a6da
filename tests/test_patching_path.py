"""Path patching: equal to direct effects computed by hand, to an ARENA-style hook loop, to
TransformerLens' direct-path patching; unreachable receivers give exactly zero."""

from __future__ import annotations

import itertools

import pytest
import torch
import transformer_lens.patching as tlp

from mechlens.data import toy_movie_review
from mechlens.metrics import logit_diff
from mechlens.patching import path_patch
from mechlens.patching.path import Node, parse_node

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_ds(tiny_model):
    return toy_movie_review(tiny_model, "train")[:3]


def _caches(model, ds):
    with torch.no_grad():
        return (dict(model.run_with_cache(ds.clean_tokens)[1].items()),
                dict(model.run_with_cache(ds.corrupt_tokens)[1].items()))


def _direct_effect(model, ds, clean, corrupt, writes):
    """LD of unembed(ln_final(corrupt final residual + the senders' changed writes)): the
    final norm recomputes its scale on the changed residual."""
    n = model.cfg.n_layers
    resid = corrupt[f"blocks.{n - 1}.hook_resid_post"].clone()
    for layer, head in writes:
        if head == "mlp":
            name = f"blocks.{layer}.hook_mlp_out"
            resid += clean[name] - corrupt[name]
        else:
            name = f"blocks.{layer}.attn.hook_z"
            resid += (clean[name][:, :, head] - corrupt[name][:, :, head]) @ model.blocks[layer].attn.W_O[head]
    with torch.no_grad():
        return logit_diff(model.unembed(model.ln_final(resid)), ds.answers)


def test_all_heads_to_final_residual_is_the_direct_effect(tiny_model, tiny_ds):
    model, ds = tiny_model, tiny_ds
    clean, corrupt = _caches(model, ds)
    res = path_patch(model, ds, "all_heads", "resid_final", metric="logit_diff", freeze_mlps=True, progress=False)
    assert res.axes == ("layer", "head") and res.method == "path"
    for layer, head in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):
        ref = _direct_effect(model, ds, clean, corrupt, [(layer, head)])
        torch.testing.assert_close(res.per_example[layer, head], ref, atol=ATOL, rtol=0)


def test_groups_and_mlps_to_final_residual(tiny_model, tiny_ds):
    model, ds = tiny_model, tiny_ds
    clean, corrupt = _caches(model, ds)
    senders = [[(0, 1), (1, 2)], (0, "mlp"), "MLP1", "L1H3"]
    res = path_patch(model, ds, senders, metric="logit_diff", freeze_mlps=True, progress=False)
    assert res.labels["sender"] == ["L0H1+L1H2", "MLP0", "MLP1", "L1H3"]
    refs = [[(0, 1), (1, 2)], [(0, "mlp")], [(1, "mlp")], [(1, 3)]]
    for i, writes in enumerate(refs):
        torch.testing.assert_close(res.per_example[i], _direct_effect(model, ds, clean, corrupt, writes),
                                   atol=ATOL, rtol=0)


def _arena_loop(model, ds, clean, corrupt, sender, receivers=None):
    """Wang et al. / ARENA, written out: run corrupt with every head's z frozen to corrupt
    except the sender's (clean); MLPs recomputed. Receivers None -> the logits; else cache
    their layers' residual and run again patching only the receivers' q/k/v inputs."""
    n = model.cfg.n_layers

    def freeze(act, hook):
        layer = int(hook.name.split(".")[1])
        out = corrupt[hook.name].clone()
        if layer == sender[0]:
            out[:, :, sender[1]] = clean[hook.name][:, :, sender[1]]
        return out

    hooks = [(f"blocks.{la}.attn.hook_z", freeze) for la in range(n)]
    with torch.no_grad():
        if receivers is None:
            return logit_diff(model.run_with_hooks(ds.corrupt_tokens, fwd_hooks=hooks), ds.answers)
        with model.hooks(fwd_hooks=hooks):
            _, step2 = model.run_with_cache(ds.corrupt_tokens, names_filter=lambda nm: nm.endswith("hook_resid_pre"))
    model.set_use_split_qkv_input(True)
    try:
        fwd = []
        for layer, head, which in receivers:
            def patch(act, hook, layer=layer, head=head):
                act = act.clone()
                act[:, :, head] = step2[f"blocks.{layer}.hook_resid_pre"]
                return act
            fwd.append((f"blocks.{layer}.attn.hook_{which}_input", patch))
        with torch.no_grad():
            logits = model.run_with_hooks(ds.corrupt_tokens, fwd_hooks=fwd)
    finally:
        model.set_use_split_qkv_input(False)
    return logit_diff(logits, ds.answers)


def test_recomputed_mlps_match_an_arena_loop(tiny_model, tiny_ds):
    model, ds = tiny_model, tiny_ds
    clean, corrupt = _caches(model, ds)
    res = path_patch(model, ds, "all_heads", "resid_final", metric="logit_diff", progress=False)
    direct = path_patch(model, ds, "all_heads", "resid_final", metric="logit_diff", freeze_mlps=True,
                        progress=False)
    for layer, head in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):
        torch.testing.assert_close(res.per_example[layer, head],
                                   _arena_loop(model, ds, clean, corrupt, (layer, head)), atol=ATOL, rtol=0)
    # with MLPs recomputed, layer-0 heads also act through the layer-0 and layer-1 MLPs
    assert (res.values[0] - direct.values[0]).abs().max() > 1e-6


def test_head_receivers_match_an_arena_loop(tiny_gpt2):
    model = tiny_gpt2
    ds = toy_movie_review(model, "train")[:3]
    clean, corrupt = _caches(model, ds)
    receivers = [(1, 0, "q"), (1, 3, "v"), (1, 2, "k")]
    res = path_patch(model, ds, "all_heads", receivers, metric="logit_diff", progress=False)
    for head in range(model.cfg.n_heads):
        torch.testing.assert_close(res.per_example[0, head],
                                   _arena_loop(model, ds, clean, corrupt, (0, head), receivers), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_receivers_in_several_layers_match_an_arena_loop(arch):
    """Receivers in layers 1 and 3 of a 4-layer model: senders below both, between them
    (they reach only the later receivers) and above both, on each backend; a pass of 3
    senders mixes layers 0 and 1, whose rows join step 3 at different receivers."""
    from mechlens.models import tiny

    model = tiny(arch, n_layers=4, seed=1)
    ds = toy_movie_review(model, "train")[:3]
    clean, corrupt = _caches(model, ds)
    receivers = [(1, 0, "q"), (3, 1, "k"), (3, 0, "v"), (3, 2, "q")]
    for backend in ("fast", "hooks"):
        res = path_patch(model, ds, "all_heads", receivers, metric="logit_diff", batch_size=9, backend=backend,
                         progress=False)
        for layer, head in itertools.product(range(3), range(model.cfg.n_heads)):
            ref = _arena_loop(model, ds, clean, corrupt, (layer, head), receivers)
            torch.testing.assert_close(res.per_example[layer, head], ref, atol=ATOL, rtol=0)
        assert (res.per_example[3] == res.baselines["corrupt"]).all()  # above every receiver: the base run
        assert res.per_example[1:3].abs().max() > 1e-3  # the later receivers are reached from between


@pytest.mark.parametrize("which", ["q", "v"])
def test_single_receivers_match_transformer_lens_direct_path(tiny_model, tiny_ds, which):
    """One sender head into one later head's input, everything else frozen: TransformerLens'
    get_act_patch_direct_path (which freezes MLPs too)."""
    model, ds = tiny_model, tiny_ds
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    if which != "q" and n_kv != model.cfg.n_heads:
        pytest.skip("TL's direct path refuses k/v on grouped-query models")
    clean, corrupt = _caches(model, ds)
    tl = tlp.get_act_patch_direct_path(model, ds.corrupt_tokens, clean, corrupt,
                                       lambda lg: logit_diff(lg, ds.answers).mean(), 0, 1, which, verbose=False)
    for head in range(model.cfg.n_heads):
        res = path_patch(model, ds, [(0, 1)], [(1, head, which)], metric="logit_diff", freeze_mlps=True,
                         progress=False)
        torch.testing.assert_close(res.values[0], tl[1, head], atol=ATOL, rtol=0)


def test_unreachable_receivers_give_exactly_zero(tiny_model, tiny_ds):
    model, ds = tiny_model, tiny_ds
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    receivers = [(1, 0, "q"), (1, n_kv - 1, "v")]
    for freeze in (False, True):
        res = path_patch(model, ds, "all_heads", receivers, freeze_mlps=freeze, progress=False)
        # senders in layer 1 write after the receivers read: nothing reaches them
        assert (res.per_example[1] == 0).all()
        assert res.per_example[0].abs().max() > 0
    mlp = path_patch(model, ds, "all_mlps", receivers, progress=False)
    assert (mlp.per_example[1] == 0).all() and mlp.per_example[0].abs().max() > 0


def test_sender_positions_restrict_the_patch(tiny_model, tiny_ds):
    model, ds = tiny_model, tiny_ds
    clean, corrupt = _caches(model, ds)
    first_diff = int((ds.clean_tokens != ds.corrupt_tokens).any(0).nonzero().min())
    # before the first differing token clean and corrupt heads agree: no effect at all
    early = path_patch(model, ds, "all_heads", position=list(range(first_diff)), metric="logit_diff",
                       progress=False)
    torch.testing.assert_close(early.per_example, early.baselines["corrupt"].expand_as(early.per_example),
                               atol=1e-5, rtol=0)
    at_end = path_patch(model, ds, [(1, 0)], position="END", metric="logit_diff", freeze_mlps=True, progress=False)
    z = "blocks.1.attn.hook_z"
    only_end = dict(clean)
    only_end[z] = clean[z].clone()
    only_end[z][:, :-1] = corrupt[z][:, :-1]  # only the final position differs
    ref = _direct_effect(model, ds, only_end, corrupt, [(1, 0)])
    torch.testing.assert_close(at_end.per_example[0], ref, atol=ATOL, rtol=0)


def test_noise_mode_and_batch_size(tiny_gpt2):
    model = tiny_gpt2
    ds = toy_movie_review(model, "train")[:3]
    a = path_patch(model, ds, "all_heads", [(1, 1, "q")], mode="noise", metric="logit_diff", progress=False)
    b = path_patch(model, ds, "all_heads", [(1, 1, "q")], mode="noise", metric="logit_diff", batch_size=3,
                   progress=False)
    torch.testing.assert_close(a.per_example, b.per_example, atol=1e-5, rtol=0)
    swapped = path_patch(model, ds.swapped(), "all_heads", [(1, 1, "q")], metric="logit_diff", progress=False)
    plain = path_patch(model, ds, "all_heads", [(1, 1, "q")], mode="noise", metric="logit_diff", progress=False)
    # noising ds = denoising the swapped dataset, up to the sign of the logit difference
    torch.testing.assert_close(plain.per_example, -swapped.per_example, atol=ATOL, rtol=0)


def test_errors_and_flags_restored(tiny_llama):
    model = tiny_llama
    ds = toy_movie_review(model, "train")[:2]
    with pytest.raises(ValueError, match="out of range"):
        path_patch(model, ds, [(0, 7)], progress=False)
    with pytest.raises(ValueError, match="not a node"):
        path_patch(model, ds, ["head3"], progress=False)
    with pytest.raises(ValueError, match="key/value heads"):
        path_patch(model, ds, "all_heads", [(1, 3, "v")], progress=False)
    with pytest.raises(ValueError, match="separate tuples"):
        path_patch(model, ds, "all_heads", [(1, 0, "qkv")], progress=False)
    with pytest.raises(ValueError, match="receivers"):
        path_patch(model, ds, "all_heads", "logitz", progress=False)
    with pytest.raises(ValueError, match="receiver_position only applies"):
        path_patch(model, ds, "all_heads", receiver_position="END", progress=False)
    with pytest.raises(ValueError, match="layers="):
        path_patch(model, ds, [(0, 1)], layers=[0], progress=False)

    def broken(logits, d):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        path_patch(model, ds, [(0, 1)], [(1, 0, "q")], metric=broken, progress=False)
    assert not model.cfg.use_split_qkv_input
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_parse_node(tiny_gpt2):
    assert parse_node(tiny_gpt2, "L1H2") == Node(1, 2)
    assert parse_node(tiny_gpt2, "mlp0") == Node(0, None)
    assert parse_node(tiny_gpt2, (1, "mlp")) == Node(1, None)
    assert parse_node(tiny_gpt2, (-1, -1)) == Node(1, 3)
    assert str(Node(1, 2)) == "L1H2" and str(Node(0)) == "MLP0"


@pytest.mark.parametrize("freeze_mlps", [False, True])
@pytest.mark.parametrize("receivers", ["resid_final", "heads"])
def test_backends_agree(tiny_model, tiny_ds, freeze_mlps, receivers):
    """Path patching on the hooks backend (full run_with_hooks passes) equals the fast one."""
    model = tiny_model
    if receivers == "heads":
        kv = model.cfg.n_key_value_heads or model.cfg.n_heads
        receivers = [(1, 0, "q"), (1, kv - 1, "v")]
    senders = [(0, 1), (0, "mlp"), [(0, 0), (0, 2)], (1, 3)]
    kw = dict(metric="logit_diff", freeze_mlps=freeze_mlps, progress=False, batch_size=5)
    fast = path_patch(model, tiny_ds, senders, receivers, backend="fast", **kw)
    hooks = path_patch(model, tiny_ds, senders, receivers, backend="hooks", **kw)
    torch.testing.assert_close(hooks.per_example, fast.per_example, atol=1e-4, rtol=0)
    assert fast.per_example.abs().max() > 0


@pytest.mark.parametrize("receivers", ["resid_final", "heads", "heads_all_positions"])
def test_fast_backend_runs_only_the_positions_read(tiny_model, tiny_ds, receivers, monkeypatch):
    """With every head frozen, step 2 computes only the positions read afterwards (the last
    for the final residual, the receivers' from ADJ on), and step 3 starts at the first
    receiver position: the same numbers as the hooks backend, which runs whole sequences.
    With receivers at every position both start where clean and corrupt first differ (ADJ):
    before it the senders' source and base values are equal."""
    from mechlens.engine import SuffixRunner

    model, ds = tiny_model, tiny_ds
    kw = dict(metric="logit_diff", progress=False)
    if receivers.startswith("heads"):
        if receivers == "heads":
            kw["receiver_position"] = "ADJ"
        receivers = [(1, 0, "q"), (1, 0, "v")] if model.cfg.n_key_value_heads else [(1, 0, "qv")]
    senders = [(0, 1), (0, "mlp"), [(0, 0), (1, 2)]]
    hooks = path_patch(model, ds, senders, receivers, backend="hooks", **kw)
    path_patch(model, ds, senders, receivers, backend="fast", **kw)  # block arguments captured, checked
    offsets = []
    run = SuffixRunner.run
    monkeypatch.setattr(SuffixRunner, "run", lambda self, joins, **k: offsets.append(k.get("offset", 0))
                        or run(self, joins, **k))
    fast = path_patch(model, ds, senders, receivers, backend="fast", **kw)
    torch.testing.assert_close(hooks.per_example, fast.per_example, atol=1e-4, rtol=0)
    expected = ds.seq_len - 1 if receivers == "resid_final" else int(ds.position_mask("ADJ").any(0).nonzero().min())
    assert expected == int((ds.clean_tokens != ds.corrupt_tokens).any(0).nonzero().min()) or receivers == "resid_final"
    assert expected > 0 and offsets[0] == 0 and set(offsets[1:]) == {expected}  # offsets[0]: the base run


def test_a_metric_of_every_position_gets_every_position(tiny_model, tiny_ds):
    """A callable metric reads the logits of every position: the fast backend may skip no
    position of step 2 then, although nothing changes before ADJ."""
    def metric(logits, ds):  # reads the first position (before ADJ) and the last one
        return logits[:, 0, :5].sum(-1) + logits[:, -1, 5:10].sum(-1)

    kw = dict(metric=metric, progress=False)
    senders = [(0, 1), (1, 2)]
    fast = path_patch(tiny_model, tiny_ds, senders, "resid_final", backend="fast", **kw)
    hooks = path_patch(tiny_model, tiny_ds, senders, "resid_final", backend="hooks", **kw)
    torch.testing.assert_close(fast.per_example, hooks.per_example, atol=1e-4, rtol=0)


@pytest.mark.parametrize("freeze", [False, True])
def test_datasets_larger_than_a_pass_give_the_same_numbers(tiny_model, tiny_ds, freeze):
    """batch_size bounds memory: the examples run in chunks (batch_size=2 holds one example's
    clean and corrupt prompts), each normalised by the whole dataset's means."""
    one = path_patch(tiny_model, tiny_ds, "all_heads", freeze_mlps=freeze, progress=False)
    split = path_patch(tiny_model, tiny_ds, "all_heads", freeze_mlps=freeze, batch_size=2, progress=False)
    with torch.no_grad():
        gap = float((logit_diff(tiny_model(tiny_ds.clean_tokens), tiny_ds.answers)
                     - logit_diff(tiny_model(tiny_ds.corrupt_tokens), tiny_ds.answers)).mean())
    tol = 1e-5 / min(1.0, abs(gap))  # float rounding of logit differences, in fraction units
    torch.testing.assert_close(split.per_example, one.per_example, atol=tol, rtol=0)
    torch.testing.assert_close(split.baselines["clean"], one.baselines["clean"], atol=tol, rtol=0)
