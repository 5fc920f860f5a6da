"""Circuit stability: Jaccard of top-k edges over bootstrap resamples and templates, CPR spread."""

import numpy as np
import pytest

from mechlens.circuits import CircuitStability, circuit_stability
from mechlens.circuits.stability import _mean_ci, jaccard
from mechlens.data import ioi


def test_jaccard_and_interval():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 1.0
    same = np.ones((5, 5))
    assert _mean_ci(same) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 1, (6, 6))
    m = (m + m.T) / 2
    mean, lo, hi = _mean_ci(m)
    assert lo <= mean <= hi and mean == pytest.approx(m[np.triu_indices(6, 1)].mean())


def test_stability_on_ioi(tiny_gpt2, tmp_path):
    names = ["John", "Mary", "Anna", "Tom", "Question"]
    ds = ioi(tiny_gpt2, n_prompts=8, names=names, seed=0, templates=[
        "When {A} and {B} went to the party, {C} gave it to",
        "When {A} and {B} went to the movie, {C} gave it to"])
    assert len(set(ds.meta["template_index"])) == 2
    st = circuit_stability(tiny_gpt2, ds, k=10, n_resamples=4, fractions=[0.1, 0.5, 1.0], progress=False)
    assert isinstance(st, CircuitStability) and len(st.top_edges) == 4 and all(len(t) == 10 for t in st.top_edges)
    mat = np.array(st.jaccard)
    assert np.allclose(np.diag(mat), 1) and np.allclose(mat, mat.T)
    assert st.jaccard_ci[0] <= st.jaccard_mean <= st.jaccard_ci[1] <= 1
    assert len(st.cpr) == 4 and len(st.cmd) == 4
    assert len(st.templates["names"]) == 2 and len(st.templates["jaccard_pairs"]) == 1
    again = circuit_stability(tiny_gpt2, ds, k=10, n_resamples=4, faithfulness=False, progress=False)
    assert again.top_edges == st.top_edges  # seeded
    assert CircuitStability.load(st.save(tmp_path / "st")).jaccard == st.jaccard
    assert list(st.table().columns)[:4] == ["method", "k", "resamples", "jaccard"]
    with pytest.raises(ValueError, match="n_resamples"):
        circuit_stability(tiny_gpt2, ds, n_resamples=1, progress=False)
