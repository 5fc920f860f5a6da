"""Steerability and batched steered generation on TransformerLens 3.9 HookedTransformer
(the same checks as tests/test_steerability.py on the other backend)."""

from __future__ import annotations

import pytest
import torch

from mechlens.model_protocol import has_hooked_transformer

if not has_hooked_transformer():
    pytest.skip("HookedTransformer needs TransformerLens 3.x (scripts/setup.sh --tl39)", allow_module_level=True)

from mechlens.data import neutral_texts, toy_movie_review  # noqa: E402
from mechlens.engine.generate import generate_batched  # noqa: E402
from mechlens.hooks import hooked  # noqa: E402
from mechlens.models import tiny  # noqa: E402
from mechlens.steering import behaviour_logit_diff, side_effects, steer, steerability  # noqa: E402

PROMPTS = ["The cat sat on", "Once upon a time there was a little", "Hi", "I thought this movie was great, and"]


@pytest.fixture(scope="module", params=["gpt2", "neox", "llama"])
def ht(request):
    return tiny(request.param, n_layers=2, seed=0, model_class="hooked")


def _vec(model, scale=2.0):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * scale


def test_grid_equals_one_forward_per_coeff_hooked(ht):
    ds = toy_movie_review(ht, "test")[:5]
    v, coeffs = _vec(ht), [-1.0, 0.0, 2.0]
    res = steerability(ht, ds, v, coeffs, layers=1, batch_size=4, progress=False)
    for i, c in enumerate(coeffs):
        with steer(ht, v, c, layers=1):
            torch.testing.assert_close(res.per_example[i], behaviour_logit_diff(ht, ds), atol=1e-5, rtol=1e-5)
    se = side_effects(ht, v, coeffs, texts=neutral_texts(3), layers=1, progress=False)
    assert float(se.per_example[1].abs().max()) < 1e-6 and float(se.values[2]) > 0


def test_generate_batched_equals_one_by_one_hooked(ht):
    v = _vec(ht, 1.0)

    def add(act, hook):
        return act + v

    for hooks in ([], [("blocks.1.hook_resid_post", add)]):
        batched = generate_batched(ht, PROMPTS, 6, hooks=hooks, batch_size=3)
        with hooked(ht, hooks), torch.no_grad():
            for p, b in zip(PROMPTS, batched):
                t = ht.to_tokens(p)
                for _ in range(6):
                    t = torch.cat([t, ht(t)[:, -1].argmax(-1, keepdim=True)], 1)
                assert torch.equal(t[0, -6:], b)


def test_cached_runs_equal_run_with_cache_hooked(ht):
    """Answer activations, direction projections and attention patterns (engine caching runs)
    equal TransformerLens's own run_with_cache on HookedTransformer."""
    from mechlens.data import choices
    from mechlens.directions import project
    from mechlens.steering import answer_activations
    from mechlens.viz.attention import attention

    triples = [("the film", "good", "awful and dull"), ("the plot", "lovely , thanks", "bad")]
    ds = choices(ht, triples, question_template="Q : {question} ?\n(A) {a}\n(B) {b}\nA : (", seed=0)
    acts = answer_activations(ht, ds, [0, 1], site="resid_post", batch_size=2, progress=False)
    for i in range(len(ds)):
        _, cache = ht.run_with_cache(ds.tokens[i][None])
        for li in (0, 1):
            torch.testing.assert_close(acts.acts[li, i], cache[f"blocks.{li}.hook_resid_post"][0, -1], atol=1e-5, rtol=1e-5)
    v = _vec(ht)
    proj = project(ht, v, PROMPTS[:2], layer=1, skip_bos=False, progress=False)
    for text, vals in zip(PROMPTS[:2], proj.values):
        _, cache = ht.run_with_cache(ht.to_tokens(text))
        want = cache["blocks.1.hook_resid_pre"][0] @ (v / v.norm())
        torch.testing.assert_close(torch.tensor(vals), want, atol=1e-4, rtol=1e-4)
    pats = attention(ht, PROMPTS[1], layers=[1], heads=[0])
    _, cache = ht.run_with_cache(ht.to_tokens(PROMPTS[1]))
    torch.testing.assert_close(pats.patterns[0, 0], cache["blocks.1.attn.hook_pattern"][0, 0])
