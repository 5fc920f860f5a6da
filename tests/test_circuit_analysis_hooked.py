"""IOI, logit lens, DLA, ablation and EAP on TransformerLens 3.9's HookedTransformer.

Runs in the TransformerLens 3.9 environment (``scripts/setup.sh --tl39``); skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from mechlens.model_protocol import has_hooked_transformer

if not has_hooked_transformer():
    pytest.skip("HookedTransformer needs TransformerLens 3.x (scripts/setup.sh --tl39)", allow_module_level=True)

from mechlens.ablation import ablate_sweep, knockout  # noqa: E402
from mechlens.circuits.eap import edge_attribution_patch  # noqa: E402
from mechlens.data import ContrastDataset, ioi  # noqa: E402
from mechlens.lens import direct_logit_attribution, logit_lens  # noqa: E402
from mechlens.metrics import logit_diff  # noqa: E402
from mechlens.models import tiny  # noqa: E402
from mechlens.patching import activation_patch, attribution_patch  # noqa: E402


@pytest.fixture(scope="module", params=["gpt2", "neox", "llama"])
def ht(request):
    return tiny(request.param, n_layers=2, seed=0, model_class="hooked")


@pytest.fixture(scope="module")
def ds(ht):
    words = [("good", "bad"), ("great", "dull"), ("bad", "good")]
    clean = [f"I thought this movie was {a}, I" for a, _ in words]
    corrupt = [f"I thought this movie was {b}, I" for _, b in words]
    return ContrastDataset.from_prompts(ht, clean, corrupt, [(" loved", " hated")])


def _ld(model, ds):
    with torch.no_grad():
        return logit_diff(model(ds.clean_tokens), ds.answers).float()


def test_ioi_builds(ht):
    d = ioi(ht, n_prompts=4, names=["John", "Mary", "Anna", "Tom", "Question"], templates=[
        "When {A} and {B} went to the party, {C} gave it to"])
    assert d.batch == 4 and set(d.positions) >= {"IO", "S1", "S2", "END"}


def test_lens_and_dla(ht, ds):
    real = _ld(ht, ds)
    dla = direct_logit_attribution(ht, ds, progress=False)
    torch.testing.assert_close(dla.per_example.sum(0), real, atol=1e-4, rtol=0)
    lens = logit_lens(ht, ds, positions="END", progress=False)
    torch.testing.assert_close(lens.per_example[-1], real, atol=1e-4, rtol=0)


def test_ablation(ht, ds):
    abl = ablate_sweep(ht, ds, "heads", how="resample", progress=False)
    pat = activation_patch(ht, ds, "z", mode="noise", metric="logit_diff", positions="all", progress=False)
    torch.testing.assert_close(abl.per_example + abl.baselines["clean"], pat.per_example, atol=1e-4, rtol=0)
    before = _ld(ht, ds)
    with knockout(ht, ["L1H0", "L0 mlp"], how="mean", ds=ds):
        assert not torch.allclose(_ld(ht, ds), before)
    torch.testing.assert_close(_ld(ht, ds), before)


def test_eap_sums_to_node_attribution(ht, ds):
    e = edge_attribution_patch(ht, ds, progress=False)
    z = attribution_patch(ht, ds, "z", mode="noise", metric="logit_diff", positions="all", progress=False)
    out = e.per_example.sum(1)
    n, h = ht.cfg.n_layers, ht.cfg.n_heads
    idx = [e.labels["sender"].index(f"L{layer}H{i}") for layer in range(n) for i in range(h)]
    torch.testing.assert_close(out[idx].view(n, h, -1), z.per_example - z.baselines["clean"], atol=1e-4, rtol=1e-3)


def test_eap_faithfulness_endpoints(ht, ds):
    from mechlens.circuits.eap import eap_faithfulness, eap_nodes

    e = edge_attribution_patch(ht, ds, progress=False)
    n_edges = int(torch.tensor(eap_nodes(ht)[2]).sum())
    curve = eap_faithfulness(ht, ds, e, ks=[0, n_edges], progress=False)
    torch.testing.assert_close(curve.per_example[0], e.baselines["corrupt"], atol=1e-4, rtol=0)
    torch.testing.assert_close(curve.per_example[1], e.baselines["clean"], atol=1e-4, rtol=0)
