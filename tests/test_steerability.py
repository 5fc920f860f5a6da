"""Per-example steerability, side effects, the prompting baseline and batched steered
generation, checked against slow obvious references (tiny models; one smollm2 check)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from mechlens.data import neutral_texts, toy_movie_review
from mechlens.directions import Direction
from mechlens.engine.generate import generate_batched
from mechlens.hooks import hooked
from mechlens.metrics import logit_diff
from mechlens.steering import (
    Steerability,
    SteeringVector,
    WeightVector,
    apply_weights,
    at_equal_effect,
    behaviour_logit_diff,
    generate_steered,
    parameters,
    prompt_baseline,
    side_effects,
    steer,
    steerability,
)

COEFFS = [-3.0, -1.0, 0.0, 0.5, 2.0]


@pytest.fixture(scope="module")
def ds(tiny_model):
    return toy_movie_review(tiny_model, "test")[:6]


def _vec(model, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.cfg.d_model, generator=g) * scale


def _weights(model, seed=2, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    ps = {n: p for n, p in parameters(model).items() if ".1." in n and p.ndim == 2}
    return WeightVector({n: torch.randn(p.shape, generator=g) * scale for n, p in ps.items()}, name="random")


def test_grid_equals_one_forward_per_coeff(tiny_model, ds):
    """All coefficients in one engine grid (batch_size smaller than the grid) give what
    `steer` + one plain forward per coefficient gives."""
    v = _vec(tiny_model)
    res = steerability(tiny_model, ds, v, COEFFS, layers=1, site="resid_pre", batch_size=4, progress=False)
    assert res.per_example.shape == (len(COEFFS), ds.batch) and res.axes == ("coeff",)
    for i, c in enumerate(COEFFS):
        with steer(tiny_model, v, c, layers=1, site="resid_pre"):
            ref = behaviour_logit_diff(tiny_model, ds)
        torch.testing.assert_close(res.per_example[i], ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(res.per_example[0], res.per_example[2])  # the vector does something


def test_vector_kinds_agree(tiny_model, ds):
    """A SteeringVector adds coeff * vector; a Direction adds coeff * its unit vector."""
    v = _vec(tiny_model)
    raw = steerability(tiny_model, ds, v, COEFFS, layers=1, site="resid_post", progress=False)
    sv = SteeringVector(vector=v, layer=1, site="resid_post")
    torch.testing.assert_close(steerability(tiny_model, ds, sv, COEFFS, progress=False).per_example, raw.per_example)
    d = Direction(vector=v, method="mean_diff", layer=1, site="resid_post")
    scaled = [c * float(v.norm()) for c in COEFFS]
    torch.testing.assert_close(
        steerability(tiny_model, ds, d, scaled, progress=False).per_example, raw.per_example, atol=1e-5, rtol=1e-5
    )


def test_weight_steering_equals_apply_weights(tiny_llama):
    model = tiny_llama
    ds = toy_movie_review(model, "test")[:5]
    w = _weights(model)
    before = {n: p.detach().clone() for n, p in parameters(model).items()}
    res = steerability(model, ds, w, [-1.0, 0.0, 1.0], batch_size=2, progress=False)
    assert res.kind == "weight"
    for i, c in enumerate([-1.0, 0.0, 1.0]):
        with apply_weights(model, w, c):
            torch.testing.assert_close(res.per_example[i], behaviour_logit_diff(model, ds), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in parameters(model).items())


def test_slopes_equal_polyfit(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "test")[:8]
    res = steerability(tiny_gpt2, ds, _vec(tiny_gpt2, scale=5.0), COEFFS, layers=0, progress=False)
    ref = np.polyfit(np.array(COEFFS), res.per_example.double().numpy(), 1)[0]
    np.testing.assert_allclose(res.slopes().numpy(), ref, rtol=1e-4, atol=1e-7)
    assert res.slope().values.item() == pytest.approx(float(ref.mean()), rel=1e-4, abs=1e-7)
    assert res.anti_steerable_fraction() == pytest.approx(float((ref < 0).mean()))


def test_summary_numbers_on_a_known_sweep():
    """Hand-made sweep: example 0 rises by 1 per unit, example 1 by 3, example 2 falls by 1."""
    c = [-2.0, 0.0, 1.0, 2.0]
    y = torch.tensor([[x * 1.0, x * 3.0 + 1, -x] for x in c])
    r = Steerability(per_example=y, axes=("coeff",), labels={"coeff": c})
    torch.testing.assert_close(r.slopes(), torch.tensor([1.0, 3.0, -1.0]))
    assert r.anti_steerable_fraction() == pytest.approx(1 / 3)
    torch.testing.assert_close(r.shift().values, torch.tensor([-2.0, 0.0, 1.0, 2.0]))
    assert r.coeff_for(1.5) == pytest.approx(1.5)
    assert r.coeff_for(-1.0) == pytest.approx(-1.0)
    assert math.isnan(r.coeff_for(10.0))
    lo, hi = r.shift().ci()
    assert bool((lo <= r.shift().values).all() and (r.shift().values <= hi).all())
    fig = r.plot()
    assert len(fig.axes[0].lines) >= 4


def _hand_kl_nll(model, text, hooks):
    toks = model.to_tokens(text)
    with torch.no_grad():
        base = torch.log_softmax(model(toks).float(), -1)[0]
        with hooked(model, hooks):
            lp = torch.log_softmax(model(toks).float(), -1)[0]
    kl = (base.exp() * (base - lp)).sum(-1).mean()
    nll = -lp[:-1].gather(-1, toks[0, 1:, None])[:, 0].sum()
    return float(kl), float(nll), toks.shape[1] - 1


def test_side_effects_kl_zero_at_zero_and_hand_reference(tiny_model):
    texts = neutral_texts(5)
    v = _vec(tiny_model, scale=3.0)
    se = side_effects(tiny_model, v, [-1.0, 0.0, 2.0], texts=texts, layers=1, batch_size=3, progress=False)
    assert se.per_example.shape == (3, 5)
    assert float(se.per_example[1].abs().max()) < 1e-6  # KL is 0 at coefficient 0
    assert float(se.values[0]) > 1e-4 and float(se.values[2]) > 1e-4
    assert float(se.perplexity()[1]) == pytest.approx(se.base_perplexity, rel=1e-5)

    def add(act, hook):
        return act + 2.0 * v

    nll_total, n_total = 0.0, 0
    for j, t in enumerate(texts):
        kl, nll, n = _hand_kl_nll(tiny_model, t, [("blocks.1.hook_resid_post", add)])
        assert float(se.per_example[2, j]) == pytest.approx(kl, rel=1e-4, abs=1e-6)
        assert float(se.nll[2, j]) == pytest.approx(nll, rel=1e-4)
        nll_total, n_total = nll_total + nll, n_total + n
    assert float(se.perplexity()[2]) == pytest.approx(math.exp(nll_total / n_total), rel=1e-4)
    st = Steerability(per_example=torch.tensor([[-1.0], [0.0], [2.0]]), axes=("coeff",), labels={"coeff": [-1.0, 0.0, 2.0]})
    eq = at_equal_effect(st, se, 1.0)  # reached at coeff 1: KL halfway between coeff 0 and 2
    assert eq["coeff"] == pytest.approx(1.0)
    assert eq["kl"] == pytest.approx(float(se.values[2]) / 2, rel=1e-5)


def test_side_effects_weight_kl_zero_at_zero(tiny_llama):
    se = side_effects(tiny_llama, _weights(tiny_llama), [0.0, 1.0], texts=neutral_texts(3), progress=False)
    assert float(se.per_example[0].abs().max()) < 1e-6 and float(se.values[1]) > 0


def test_prompt_baseline_rows(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "test")[:4]
    pb = prompt_baseline(tiny_gpt2, ds, "Answer positively.", texts=neutral_texts(3), progress=False)
    torch.testing.assert_close(pb.per_example[0], behaviour_logit_diff(tiny_gpt2, ds))
    # the instructed row by hand: the request as plain text, a blank line, the prompt
    for i in range(2):
        toks = torch.cat([tiny_gpt2.to_tokens("Complete the text. Answer positively.\n\n")[0],
                          ds.clean_tokens[i, 1:]])[None]
        with torch.no_grad():
            ld = logit_diff(tiny_gpt2(toks), ds.answers[i : i + 1])[0] * (1 if ds.labels[i] == 1 else -1)
        assert float(pb.per_example[2, i]) == pytest.approx(float(ld), rel=1e-4, abs=1e-5)
    s = pb.summary()
    assert s["kl"] > 0 and 0 <= s["anti_steerable"] <= 1


def _record_backends(monkeypatch):
    """Wrap the engine grid that steerability.py calls: the backend every run asked for."""
    mod = sys.modules["mechlens.steering.steerability"]  # the package's `steerability` is the function
    seen, run_grid = [], mod.run_grid

    def recording(*args, **kw):
        seen.append(kw.get("backend", "hooks"))  # run_grid's own default
        return run_grid(*args, **kw)

    monkeypatch.setattr(mod, "run_grid", recording)
    return seen


@pytest.mark.parametrize("kind", ["activation", "weight"])
def test_side_effects_backends_agree(tiny_model, kind, monkeypatch):
    """On the fast backend (an activation vector's runs start at its layer; a weight vector's
    are plain runs of the changed weights) the right-padded neutral texts give the numbers of
    full hooked passes, and every engine run of the method gets the backend asked for."""
    v, kw = (_vec(tiny_model, scale=3.0), {"layers": 1}) if kind == "activation" else (_weights(tiny_model), {})
    texts = neutral_texts(5)  # of different lengths: right-padded
    seen = _record_backends(monkeypatch)
    res = {}
    for b in ("fast", "hooks"):
        seen.clear()
        res[b] = side_effects(tiny_model, v, [-1.0, 0.0, 2.0], texts=texts, batch_size=4, progress=False, backend=b,
                              **kw)
        assert seen and set(seen) == {b}
    fast, hooks = res["fast"], res["hooks"]
    assert float(hooks.values[2]) > 1e-4  # the vector does something
    for got, want in [(fast.per_example, hooks.per_example), (fast.nll, hooks.nll), (fast.perplexity(), hooks.perplexity()),
                      (torch.tensor(fast.base_perplexity), torch.tensor(hooks.base_perplexity))]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.n_tokens, hooks.n_tokens)


def test_prompt_baseline_backends_agree(tiny_model, monkeypatch):
    """The prompting baseline on the fast backend: the same logit differences and the same
    KL / perplexities on the right-padded neutral texts as full hooked passes."""
    ds = toy_movie_review(tiny_model, "test")[:4]
    seen = _record_backends(monkeypatch)
    res = {}
    for b in ("fast", "hooks"):
        seen.clear()
        res[b] = prompt_baseline(tiny_model, ds, "Answer positively.", texts=neutral_texts(3), batch_size=3,
                                 progress=False, backend=b)
        assert seen and set(seen) == {b}
    fast, hooks = res["fast"], res["hooks"]
    assert hooks.kl > 0
    for got, want in [(fast.per_example, hooks.per_example), (fast.kl_per_text, hooks.kl_per_text)] + [
        (torch.tensor(getattr(fast, f)), torch.tensor(getattr(hooks, f))) for f in ("kl", "perplexity", "base_perplexity")
    ]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_side_effects_and_prompt_baseline_check_backend(tiny_gpt2):
    """A wrong backend name is refused before any run."""
    ds = toy_movie_review(tiny_gpt2, "test")[:2]
    with pytest.raises(ValueError, match="backend"):
        side_effects(tiny_gpt2, _vec(tiny_gpt2), [0.0, 1.0], texts=neutral_texts(2), layers=0, progress=False,
                     backend="turbo")
    with pytest.raises(ValueError, match="backend"):
        prompt_baseline(tiny_gpt2, ds, texts=neutral_texts(2), progress=False, backend="turbo")


# --------------------------------------------------------------------------- generation


PROMPTS = ["The cat sat on", "Once upon a time there was a little", "Hi", "I thought this movie was great, and"]


def _greedy_no_cache(model, prompt, n):
    t = model.to_tokens(prompt)
    with torch.no_grad():
        for _ in range(n):
            t = torch.cat([t, model(t)[:, -1].argmax(-1, keepdim=True)], 1)
    return t[0, -n:]


def test_generate_batched_equals_one_by_one(tiny_model):
    """Left-padded batches with the KV cache give the tokens of one-prompt greedy generation
    (with and without the cache), unsteered and under an activation hook."""
    v = _vec(tiny_model, scale=1.0)

    def add(act, hook):
        return act + v

    for hooks in ([], [("blocks.1.hook_resid_post", add)]):
        batched = generate_batched(tiny_model, PROMPTS, 6, hooks=hooks, batch_size=3)
        one = [generate_batched(tiny_model, [p], 6, hooks=hooks)[0] for p in PROMPTS]
        with hooked(tiny_model, hooks):
            ref = [_greedy_no_cache(tiny_model, p, 6) for p in PROMPTS]
        for b, o, r in zip(batched, one, ref):
            assert torch.equal(b, o) and torch.equal(b, r)


def test_generate_steered_weight_and_activation(tiny_llama):
    w = _weights(tiny_llama, scale=0.2)
    batched = generate_steered(tiny_llama, PROMPTS, w, 1.0, 5, batch_size=4, as_text=False)
    with apply_weights(tiny_llama, w, 1.0):
        ref = [_greedy_no_cache(tiny_llama, p, 5) for p in PROMPTS]
    assert all(torch.equal(b, r) for b, r in zip(batched, ref))
    plain = generate_steered(tiny_llama, PROMPTS, w, 0.0, 5, as_text=False)
    assert any(not torch.equal(a, b) for a, b in zip(plain, batched))  # the weights mattered
    v = _vec(tiny_llama, scale=4.0)
    texts = generate_steered(tiny_llama, PROMPTS, v, 1.0, 5, layers=0, batch_size=2)
    assert len(texts) == len(PROMPTS) and all(isinstance(t, str) for t in texts)


def test_generate_batched_errors(tiny_gpt2):
    with pytest.raises(TypeError, match="list"):
        generate_batched(tiny_gpt2, "one prompt", 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_batched(tiny_gpt2, ["a"], 0)
    with pytest.raises(ValueError, match="empty"):
        generate_batched(tiny_gpt2, [], 3)


def test_steerability_errors(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "test")[:2]
    with pytest.raises(ValueError, match="layers"):
        steerability(tiny_gpt2, ds, torch.ones(tiny_gpt2.cfg.d_model), [0.0, 1.0], progress=False)
    with pytest.raises(ValueError, match="coeffs is empty"):
        steerability(tiny_gpt2, ds, torch.ones(tiny_gpt2.cfg.d_model), [], layers=0, progress=False)
    with pytest.raises(TypeError, match="SteeringVector"):
        steerability(tiny_gpt2, ds, "vec", [0.0], progress=False)
    r = steerability(tiny_gpt2, ds, torch.ones(tiny_gpt2.cfg.d_model), [1.0, 2.0], layers=0, progress=False)
    with pytest.raises(ValueError, match="include 0"):
        r.shift()


@pytest.mark.slow
def test_smollm2_batched_steered_generation(smollm2):
    """On the real model: batched steered generation equals one prompt at a time."""
    v = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 3
    prompts = PROMPTS[:3]
    batched = generate_steered(smollm2, prompts, v, 1.0, 6, layers=10, as_text=False)
    one = [generate_steered(smollm2, [p], v, 1.0, 6, layers=10, as_text=False)[0] for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(batched, one))


def test_study_steering_analysis(tmp_path):
    """The study file's `steering` analysis: the table, the figure, saved results, and a
    clear error for a bad method."""
    from mechlens.results import Measurement
    from mechlens.study import run_study

    toml = tmp_path / "s.toml"
    toml.write_text(
        'title = "t"\nseed = 0\n[model]\nname = "tiny-gpt2"\nn_layers = 2\n[dataset]\nbuiltin = "toy_movie_review"\n'
        'split = "test"\n[[analysis]]\nkind = "steering"\nmethod = ["mean_diff", "pca"]\nlayer = 1\n'
        "coeffs = [-4, 0, 4]\ntarget = 0.01\n"
    )
    report = run_study(toml, tmp_path / "out", progress=False)
    text = report.read_text()
    assert "## steering" in text and "anti_steerable" in text and "prompting" in text
    d = tmp_path / "out" / "steering"
    assert (d / "steering.csv").exists() and (d / "steering_per_example.png").exists()
    st = Steerability.load(d / "steerability_mean_diff")
    assert st.labels["coeff"] == [-4.0, 0.0, 4.0] and isinstance(st, Measurement)
    toml.write_text(toml.read_text().replace('"pca"', '"nope"'))
    with pytest.raises(ValueError, match="nope"):
        run_study(toml, tmp_path / "out2", progress=False)
