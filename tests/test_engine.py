"""mechlens.engine's hook-intervention runner and batching, against plain TransformerLens calls."""

import pytest
import torch

from mechlens.data import toy_movie_review
from mechlens.engine import (
    DEFAULT_BATCH_SIZE,
    batches,
    cache_batched,
    copies_per_pass,
    first_block,
    logit_diff_metric,
    padded_batches,
    run_grid,
)
from mechlens.metrics import logit_diff


@pytest.fixture(scope="module")
def ds(tiny_gpt2):
    return toy_movie_review(tiny_gpt2, "test")


def _adder(vecs, configs):
    def hook(act, hook):
        return act + vecs[configs].to(act.dtype)[:, None, :]

    return hook


@pytest.mark.parametrize("batch_size", [1, 5, None])
def test_run_grid_equals_one_run_with_hooks_per_configuration(tiny_model, batch_size):
    ds = toy_movie_review(tiny_model, "test")
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(3, tiny_model.cfg.d_model, generator=g)
    name = "blocks.1.hook_resid_pre"
    got = run_grid(
        tiny_model, ds.clean_tokens, logit_diff_metric(ds.answers), n_configs=3,
        hooks=lambda c, e: [(name, _adder(vecs, c))], batch_size=batch_size,
    )
    for c in range(3):
        with torch.no_grad():
            logits = tiny_model.run_with_hooks(
                ds.clean_tokens, fwd_hooks=[(name, lambda act, hook, c=c: act + vecs[c].to(act.dtype))]
            )
        torch.testing.assert_close(got[c], logit_diff(logits, ds.answers).float(), atol=1e-5, rtol=1e-5)
    assert not tiny_model.hook_dict[name].fwd_hooks  # nothing left on the model


@pytest.mark.parametrize("names", [["hook_embed"], ["blocks.1.hook_resid_pre"], ["blocks.1.hook_resid_post"],
                                   ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]])
def test_run_grid_fast_backend_starts_at_the_first_hooked_block(tiny_model, names):
    """On the fast backend a pass runs from the first block its hooks act in (the prefix once
    per example): the same numbers as full run_with_hooks passes, embedding hooks included."""
    ds = toy_movie_review(tiny_model, "test")
    g = torch.Generator().manual_seed(1)
    vecs = torch.randn(3, tiny_model.cfg.d_model, generator=g)
    hooks = lambda c, e: [(n, _adder(vecs, c)) for n in names]  # noqa: E731
    fast = run_grid(tiny_model, ds.clean_tokens, logit_diff_metric(ds.answers), n_configs=3, hooks=hooks,
                    batch_size=7, backend="fast", output="last")
    for c in range(3):
        with torch.no_grad():
            logits = tiny_model.run_with_hooks(
                ds.clean_tokens, fwd_hooks=[(n, lambda act, hook, c=c: act + vecs[c].to(act.dtype)) for n in names])
        torch.testing.assert_close(fast[c], logit_diff(logits, ds.answers).float(), atol=1e-5, rtol=1e-5)
    assert first_block(names, 2) == min(
        0 if n == "hook_embed" else int(n.split(".")[1]) for n in names)


@pytest.mark.parametrize("names", [["blocks.1.hook_resid_pre"], ["blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]])
def test_run_grid_from_position_runs_only_the_changed_positions(tiny_model, names, monkeypatch):
    """Hooks that add a vector from position p on: with from_position=p the fast backend runs
    the hooked blocks on positions p.. only (each row with its own example's earlier keys and
    values; passes of 7 rows mix examples), the same numbers as full run_with_hooks passes."""
    from mechlens.engine import SuffixRunner

    ds = toy_movie_review(tiny_model, "test")
    p = 4
    g = torch.Generator().manual_seed(2)
    vecs = torch.randn(3, tiny_model.cfg.d_model, generator=g)

    def add_from(configs):
        def hook(act, hook):
            delta = vecs[configs].to(act.dtype)
            if act.ndim == 4:  # hook_z [rows, pos, head, d_head]: add to head 0
                delta = delta.view(len(configs), -1, act.shape[-1])[:, :1]
                delta = torch.cat([delta, torch.zeros_like(act[:, 0, 1:])], 1)
            out = act.clone()
            at = act.shape[1] - (ds.seq_len - p)  # the position p among those the hook sees
            out[:, at:] += delta[:, None]
            return out

        return hook

    offsets = []
    run = SuffixRunner.run
    monkeypatch.setattr(SuffixRunner, "run", lambda self, joins, **k: offsets.append(k.get("offset", 0))
                        or run(self, joins, **k))
    fast = run_grid(tiny_model, ds.clean_tokens, logit_diff_metric(ds.answers), n_configs=3,
                    hooks=lambda c, e: [(n, add_from(c)) for n in names], batch_size=7, backend="fast",
                    output="last", from_position=p)
    hooks = run_grid(tiny_model, ds.clean_tokens, logit_diff_metric(ds.answers), n_configs=3,
                     hooks=lambda c, e: [(n, add_from(c)) for n in names], batch_size=7, backend="hooks", output="last")
    torch.testing.assert_close(fast, hooks, atol=1e-5, rtol=1e-5)
    assert (fast - run_grid(tiny_model, ds.clean_tokens, logit_diff_metric(ds.answers))).abs().max() > 1e-3
    assert p in offsets
    with pytest.raises(ValueError, match="from_position"):
        run_grid(tiny_model, ds.clean_tokens, logit_diff_metric(ds.answers), from_position=ds.seq_len)


def test_run_grid_without_hooks_is_the_plain_run(tiny_gpt2, ds):
    got = run_grid(tiny_gpt2, ds.clean_tokens, logit_diff_metric(ds.answers), batch_size=7)
    with torch.no_grad():
        ref = logit_diff(tiny_gpt2(ds.clean_tokens), ds.answers).float()
    assert got.shape == (1, ds.batch)
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)


def test_cache_batched_equals_run_with_cache(tiny_gpt2, ds):
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    acts, lds = cache_batched(tiny_gpt2, ds.clean_tokens, names, batch_size=3, answers=ds.answers)
    with torch.no_grad():
        logits, cache = tiny_gpt2.run_with_cache(ds.clean_tokens, names_filter=lambda n: n in names)
    for n in names:
        torch.testing.assert_close(acts[n], cache[n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lds, logit_diff(logits, ds.answers).float().cpu(), atol=1e-5, rtol=1e-5)


def test_one_batching_rule():
    assert [(s.start, s.stop) for s in batches(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    assert len(batches(DEFAULT_BATCH_SIZE + 1, None)) == 2
    assert copies_per_pass(None, 22) == DEFAULT_BATCH_SIZE // 22 and copies_per_pass(4, 22) == 1
    for bad in (0, -1, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            batches(3, bad)


def test_padded_batches_keep_every_token_and_find_the_last():
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([1]), torch.tensor([2, 3])]
    seen = []
    for idx, toks, last in padded_batches(seqs, 2, pad_id=0):
        for row, i in enumerate(idx):
            assert torch.equal(toks[row, : len(seqs[i])], seqs[i]) and int(last[row]) == len(seqs[i]) - 1
            seen.append(i)
    assert sorted(seen) == [0, 1, 2]


def test_run_patches_interventions_equal_a_plain_hook_loop(tiny_model):
    """Each typed intervention, run as one configuration among several stacked on the batch
    axis (fast and hooks backends, examples split over passes), equals one run_with_hooks."""
    from mechlens.engine import (
        Add,
        Location,
        ProjectOnto,
        ProjectOut,
        Replace,
        Scale,
        Zero,
        patch,
        run_patches,
    )
    from mechlens.metrics import logit_diff

    torch.manual_seed(0)
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (5, 7))
    answers = torch.randint(1, tiny_model.cfg.d_vocab, (5, 1, 2))
    d = tiny_model.cfg.d_model
    vec = torch.randn(d)
    pos = torch.zeros(5, 7, dtype=torch.bool)
    pos[:, 3] = True
    head_src = torch.randn(5, 7, tiny_model.cfg.n_heads, tiny_model.cfg.d_head)
    cases = [
        (Location("resid_pre", 1), Add(vec, 2.0)),
        (Location("resid_pre", 0, position=pos), ProjectOut(vec)),
        (Location("mlp_out", 0), Scale(0.5)),
        (Location("attn_out", 1, position=pos[0]), ProjectOnto(vec)),
        (Location("z", 1, head=1), Replace(head_src)),
        (Location("z", 0, head=0, position=pos), Zero()),
    ]
    configs = [[patch(tiny_model, loc, iv)] for loc, iv in cases] + [[patch(tiny_model, *cases[0]),
                                                                     patch(tiny_model, *cases[4])]]

    def metric(logits, examples):
        return logit_diff(logits, answers[examples])

    want = []
    for cfg in configs:
        hooks = []
        for p in cfg:
            def fn(act, hook, p=p):
                new = p.transform(act) if p.transform is not None else p.source.to(act.dtype)
                return torch.where(p.mask, new, act)
            hooks.append((p.hook, fn))
        with torch.no_grad():
            want.append(logit_diff(tiny_model.run_with_hooks(tokens, fwd_hooks=hooks), answers))
    want = torch.stack(want)
    for backend in ("fast", "hooks"):
        got = run_patches(tiny_model, tokens, configs, metric, backend=backend, batch_size=4, progress=False)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [3, 5, 10])
def test_run_patches_starts_where_the_patched_values_first_differ(tiny_model, batch_size, monkeypatch):
    """A configuration whose values equal the base run's before position p runs from p on the
    fast backend (earlier keys and values the base run's): the same numbers as run_with_hooks,
    with one configuration per pass (5 rows), two per pass mixing first positions (10) and
    the examples split over passes (3). One that puts in the base values everywhere gives
    the unpatched metric; a transform, or a patch of attention patterns, runs every
    position; patches in two blocks start at the earlier of their first changes."""
    from mechlens.engine import Add, Location, Replace, SuffixRunner, Zero, patch, run_patches

    torch.manual_seed(0)
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (5, 8))
    answers = torch.randint(1, tiny_model.cfg.d_vocab, (5, 1, 2))
    names = ["blocks.1.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_pattern"]
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=names)
    z = cache["blocks.1.attn.hook_z"].clone()
    z[:, 4:] = torch.randn_like(z[:, 4:])  # differs from position 4 on
    at6 = torch.zeros(8, dtype=torch.bool)
    at6[6] = True
    per_example = torch.zeros(5, 8, dtype=torch.bool)
    per_example[torch.arange(5), 2 + torch.arange(5) % 3] = True  # example i at position 2 + i % 3
    z_from4 = patch(tiny_model, Location("z", 1, head=0), Replace(z))
    cases = [
        [z_from4],
        [patch(tiny_model, Location("resid_pre", 1), Replace(cache["blocks.1.hook_resid_pre"]))],
        [patch(tiny_model, Location("z", 0, head=1, position=at6), Zero())],
        [z_from4, patch(tiny_model, Location("resid_pre", 1), Add(torch.randn(tiny_model.cfg.d_model)))],
        [patch(tiny_model, Location("pattern", 1, head=0), Replace(cache["blocks.1.attn.hook_pattern"]))],
        [patch(tiny_model, Location("z", 0, head=1, position=at6), Zero()), z_from4],
        [patch(tiny_model, Location("resid_pre", 1, position=per_example), Zero())],
    ]

    def metric(logits, examples):
        return logit_diff(logits, answers[examples])

    want = []
    for cfg in cases:
        hooks = [(p.hook, lambda act, hook, p=p: p.apply(act)) for p in cfg]
        with torch.no_grad():
            want.append(logit_diff(tiny_model.run_with_hooks(tokens, fwd_hooks=hooks), answers))
    want = torch.stack(want)
    offsets = []
    run = SuffixRunner.run
    monkeypatch.setattr(SuffixRunner, "run", lambda self, joins, **k: offsets.append(k.get("offset", 0))
                        or run(self, joins, **k))
    fast = run_patches(tiny_model, tokens, cases, metric, backend="fast", batch_size=batch_size, progress=False)
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(fast[1], logit_diff(tiny_model(tokens), answers), atol=1e-5, rtol=0)
    if batch_size == 5:  # one configuration per pass
        assert sorted(offsets[-len(cases):]) == [0, 0, 2, 4, 4, 6, 7]
    else:
        assert max(offsets) >= 4
    hooks = run_patches(tiny_model, tokens, cases, metric, backend="hooks", batch_size=batch_size, progress=False)
    torch.testing.assert_close(hooks, want, atol=1e-5, rtol=0)


def test_threads_are_chosen_by_the_user(monkeypatch):
    import subprocess
    import sys

    from mechlens.engine.threads import set_threads, threads, threads_from_env

    before = threads()
    try:
        assert set_threads(1) == before and threads() == 1
        monkeypatch.setenv("MECHLENS_THREADS", "2")
        assert threads_from_env() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("MECHLENS_THREADS", "two")
        with pytest.raises(ValueError, match="MECHLENS_THREADS"):
            threads_from_env()
        with pytest.raises(ValueError, match="positive"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)
    code = "import torch, mechlens; print(torch.get_num_threads())"
    env = {**__import__("os").environ, "MECHLENS_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"
