"""Sentiment directions on the bundled smollm2-135m (ToyMovieReview, layer 14 of 30).

Fitted on the train split, patched on the test split (held-out adjectives): the
mean-difference direction at ADJ carries most of the logit difference; random directions
carry none of it.
"""

import pytest
import torch

from mechlens.directions import ablate, directional_patch, fit, random_directions

pytestmark = pytest.mark.slow

LAYER = 14


@pytest.fixture(scope="module")
def mean_diff(smollm2, movie_train):
    return fit(smollm2, movie_train, "mean_diff", LAYER, position="ADJ")


def test_mean_diff_direction_recovers_the_logit_difference(smollm2, movie_test, mean_diff):
    res = directional_patch(smollm2, movie_test, mean_diff, progress=False)
    assert res.ld_recovered >= 0.80
    assert res.logit_flip >= 0.8
    # the test split's adjectives were never seen in fitting, and the sign is right
    assert float(res.ld_clean.mean()) > 0 > float(res.ld_corrupt.mean())


def test_random_directions_recover_nothing(smollm2, movie_test, mean_diff):
    v = random_directions(smollm2.cfg.d_model, 1, seed=0)[0]
    res = directional_patch(smollm2, movie_test, v, layers=LAYER, progress=False)
    assert abs(res.ld_recovered) < 0.05


def test_direction_points_to_positive_sentiment_on_held_out_words(smollm2, movie_test, mean_diff):
    _, cache = smollm2.run_with_cache(movie_test.clean_tokens, names_filter=mean_diff.hook_name, stop_at_layer=LAYER + 1)
    acts = cache[mean_diff.hook_name][torch.arange(movie_test.batch), movie_test.positions["ADJ"]]
    proj = mean_diff.project(acts)
    lab = movie_test.labels.bool()
    assert float(proj[lab].mean()) > float(proj[~lab].mean())


def test_ablating_the_direction_hurts(smollm2, movie_test, mean_diff):
    res = ablate(smollm2, movie_test, mean_diff, position="all", how="mean", progress=False)
    assert res.ld_change < -0.5
    assert res.accuracy_after < res.accuracy_before
