"""The engine's gradient mode: grad_run equals a plain autograd computation, row by row, for
any batch_size; interpolation hooks; clear errors."""

import pytest
import torch

from mechlens.data import toy_movie_review
from mechlens.engine import grad_run, ig_alphas, interpolate_hook
from mechlens.metrics import logit_diff


def test_grad_run_equals_autograd(tiny_gpt2):
    model = tiny_gpt2
    ds = toy_movie_review(model, "test")[:5]
    names = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"]
    leaves = {}

    def leaf(name):  # a copy that the rest of the run reads: its gradient is the activation's
        def fn(act, hook):
            assert act.requires_grad
            leaves[name] = act.clone()
            return leaves[name]

        return fn

    with torch.enable_grad():
        logits = model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(n, leaf(n)) for n in names])
        want = torch.autograd.grad(logit_diff(logits, ds.answers).sum(), [leaves[n] for n in names])

    def metric(logits, examples):
        return logit_diff(logits, ds.answers[examples])

    for bs in (None, 2, 3):
        got = {n: torch.zeros_like(w) for n, w in zip(names, want)}
        ys = torch.zeros(ds.batch)
        for gb in grad_run(model, ds.clean_tokens, metric, save=["blocks.0.hook_mlp_out"], grad_at=names,
                           batch_size=bs):
            assert len(gb.examples) <= (bs or 128) and gb.saved["blocks.0.hook_mlp_out"].shape[0] == len(gb.examples)
            for n in names:
                got[n][gb.examples] = gb.grads[n]
            ys[gb.examples] = gb.metric.float()
        for n, w in zip(names, want):
            torch.testing.assert_close(got[n], w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ys, logit_diff(logits, ds.answers).detach().float(), atol=1e-5, rtol=0)
    assert all(p.grad is None for p in model.parameters())


def test_grid_rows_and_interpolation(tiny_gpt2):
    """Configurations on the batch axis: each row gets its own interpolation and gradient;
    alpha = 1 leaves the run untouched."""
    model = tiny_gpt2
    ds = toy_movie_review(model, "test")[:3]
    name = "blocks.0.hook_resid_pre"
    _, cc = model.run_with_cache(ds.clean_tokens, names_filter=name)
    _, ck = model.run_with_cache(ds.corrupt_tokens, names_filter=name)
    alphas = torch.tensor(ig_alphas(4))
    assert alphas.tolist() == [0.25, 0.5, 0.75, 1.0]

    def hooks(configs, examples):
        return [interpolate_hook(name, cc[name][examples], ck[name][examples], alphas[configs])]

    def metric(logits, examples):
        return logit_diff(logits, ds.answers[examples])

    rows = list(grad_run(model, ds.clean_tokens, metric, n_configs=4, hooks=hooks, save=[name], grad_at=[name],
                         batch_size=5))
    assert sum(len(r.examples) for r in rows) == 12
    for r in rows:
        for i, (c, e) in enumerate(zip(r.configs.tolist(), r.examples.tolist())):
            a = float(alphas[c])
            want = cc[name][e] if a == 1 else ck[name][e] + a * (cc[name][e] - ck[name][e])
            assert torch.equal(r.saved[name][i], want) if a == 1 else torch.allclose(r.saved[name][i], want)
    with torch.no_grad():  # the corrupt end is the corrupt run's metric
        y0 = logit_diff(model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(name, lambda a, hook: ck[name])]),
                        ds.answers)
    torch.testing.assert_close(y0, logit_diff(model(ds.corrupt_tokens), ds.answers), atol=1e-5, rtol=0)


def test_errors(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "test")[:2]

    def metric(logits, examples):
        return logit_diff(logits, ds.answers[examples])

    with pytest.raises(ValueError, match="hook"):
        list(grad_run(tiny_gpt2, ds.clean_tokens, metric, grad_at=["blocks.0.hook_nothing"]))
    with pytest.raises(ValueError, match="one value per example"):
        list(grad_run(tiny_gpt2, ds.clean_tokens, lambda logits, e: logits.sum(), grad_at=["blocks.0.hook_resid_pre"]))
    with pytest.raises(ValueError, match="ig_steps"):
        ig_alphas(0)


def test_fast_backend_with_start_layers(tiny_gpt2):
    """On the fast backend a configuration that starts at block 1 runs (forward and backward)
    from the clean residual there: its gradients at block 1 are those of a full hooked pass,
    and hooks before block 1 do not fire; output="last" gives the same metric."""
    model = tiny_gpt2
    ds = toy_movie_review(model, "test")[:4]
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]

    def metric(logits, examples):
        assert logits.shape[1] == 1
        return logit_diff(logits, ds.answers[examples])

    ref = list(grad_run(model, ds.clean_tokens, metric, grad_at=names, output="last"))[0]
    rows = list(grad_run(model, ds.clean_tokens, metric, grad_at=names, n_configs=2, start_layer=[0, 1],
                         batch_size=4, backend="fast", output="last"))
    assert [r.configs.unique().tolist() for r in rows] == [[0], [1]]
    assert set(rows[0].grads) == set(names) and set(rows[1].grads) == set(names[1:])
    for r in rows:
        torch.testing.assert_close(r.metric, ref.metric, atol=1e-5, rtol=1e-5)
        for n in r.grads:
            torch.testing.assert_close(r.grads[n], ref.grads[n], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="start_layer"):
        list(grad_run(model, ds.clean_tokens, metric, n_configs=2, start_layer=[0], backend="fast"))
    with pytest.raises(ValueError, match="output"):
        list(grad_run(model, ds.clean_tokens, metric, output="first"))
