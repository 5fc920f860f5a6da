"""Steering checks on the bundled smollm2-135m (kept cheap: no fine-tuning here; the
fine-tune monotonicity test runs on a tiny model in test_steering.py)."""

import pytest
import torch

from mechlens.data.choices import movie_review_choices, polite_casual
from mechlens.steering import (
    WeightVector,
    apply_weights,
    behaviour_logit_diff,
    caa_vector,
    evaluate_steering,
    parameters,
    steer,
)

pytestmark = pytest.mark.slow


def test_caa_sentiment_vector_steers_movie_reviews(smollm2, movie_test):
    """A CAA vector from A/B choices between positive and negative reviews moves
    ToyMovieReview's positive-minus-negative logit difference up for coeff > 0 and down
    for coeff < 0 (layer 20 of 30)."""
    ds = movie_review_choices(smollm2, "train")
    vec = caa_vector(smollm2, ds, 20, progress=False)
    curve = evaluate_steering(smollm2, movie_test, vec, [-4.0, 0.0, 4.0], progress=False)
    assert curve.monotonic() == 1, curve.values
    assert curve.values[2] - curve.values[0] > 0.3
    with steer(smollm2, vec, 0.0):
        torch.testing.assert_close(curve.per_example[1], behaviour_logit_diff(smollm2, movie_test))


def test_choices_japanese_on_smollm2_tokenizer(smollm2):
    ds = polite_casual(smollm2, lang="ja")
    assert len(ds) == 16
    for prompt, toks, letter in zip(ds.prompts, ds.tokens, ds.letters):
        assert int(toks[-1]) == ds.letter_ids["AB".index(letter)]
        assert smollm2.tokenizer.decode(toks, skip_special_tokens=True) == prompt
    assert sorted(ds.letters) == ["A"] * 8 + ["B"] * 8


def test_apply_weights_restores_smollm2(smollm2, movie_test):
    params = parameters(smollm2)
    names = [n for n in params if ".layers.5." in n]
    g = torch.Generator().manual_seed(0)
    w = WeightVector({n: torch.randn(params[n].shape, generator=g) * 1e-2 for n in names})
    before = {n: params[n].detach().clone() for n in names}
    ld = behaviour_logit_diff(smollm2, movie_test)
    with pytest.raises(KeyboardInterrupt):
        with apply_weights(smollm2, w, 5.0):
            assert not torch.allclose(behaviour_logit_diff(smollm2, movie_test), ld)
            raise KeyboardInterrupt
    assert all(torch.equal(params[n], before[n]) for n in names)
    assert torch.equal(behaviour_logit_diff(smollm2, movie_test), ld)
