"""EAP-IG on TransformerLens 3.9's HookedTransformer: one step is EAP, completeness.

Runs in the TransformerLens 3.9 environment (``scripts/setup.sh --tl39``); skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from mechlens.model_protocol import has_hooked_transformer

if not has_hooked_transformer():
    pytest.skip("HookedTransformer needs TransformerLens 3.x (scripts/setup.sh --tl39)", allow_module_level=True)

from mechlens.circuits.eap import eap_ig, edge_attribution_patch  # noqa: E402
from mechlens.data import toy_movie_review  # noqa: E402
from mechlens.models import tiny  # noqa: E402


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def ht(request):
    return tiny(request.param, n_layers=2, seed=0, model_class="hooked")


def test_eap_ig_on_hooked_transformer(ht):
    ds = toy_movie_review(ht, "test")[:4]
    eap = edge_attribution_patch(ht, ds, progress=False)
    for interpolate in ("inputs", "activations"):
        assert torch.equal(eap_ig(ht, ds, interpolate=interpolate, ig_steps=1, progress=False).per_example,
                           eap.per_example)
    r = eap_ig(ht, ds, interpolate="inputs", ig_steps=64, batch_size=64, progress=False)
    gap = r.baselines["corrupt"] - r.baselines["clean"]
    assert gap.abs().max() > 1e-3
    assert float((r.per_example[0].sum(0) - gap).abs().max()) <= 0.03 * float(gap.abs().max())
