"""Faithfulness curves, CPR and CMD (MIB's definitions) on the engine's exact edge patching."""

import pytest
import torch

from mechlens.circuits import (
    FaithfulnessCurve,
    cpr_cmd,
    eap_faithfulness,
    edge_attribution_patch,
    faithfulness_curve,
)
from mechlens.circuits.faithfulness import MIB_FRACTIONS
from mechlens.data import toy_movie_review


def test_cpr_cmd_by_hand():
    fr = [0.0, 0.5, 1.0]
    assert cpr_cmd(fr, [1, 1, 1]) == (1.0, 0.0)
    cpr, cmd = cpr_cmd(fr, [0.0, 0.5, 1.0])  # a straight line: half the square each
    assert cpr == pytest.approx(0.5) and cmd == pytest.approx(0.5)
    cpr, cmd = cpr_cmd(fr, [2.0, 2.0, 2.0])  # overshoot counts as distance, area above 1 as performance
    assert cpr == pytest.approx(2.0) and cmd == pytest.approx(1.0)
    assert cpr_cmd(MIB_FRACTIONS, [1.0] * 10)[0] == pytest.approx(0.999)


def test_curve_matches_exact_pruning_and_endpoints(tiny_model):
    ds = toy_movie_review(tiny_model, "test")[:5]
    edges = edge_attribution_patch(tiny_model, ds, progress=False)
    fc = faithfulness_curve(tiny_model, ds, {"eap": edges, "as tensor": edges.values}, n_random=2, batch_size=7,
                            progress=False)
    assert isinstance(fc, FaithfulnessCurve) and fc.labels["scoring"] == ["eap", "as tensor", "random"]
    assert fc.faithfulness["eap"] == fc.faithfulness["as tensor"]  # a tensor of scores ranks the same
    assert fc.faithfulness["eap"][-1] == pytest.approx(1.0, abs=1e-4)  # every edge kept: the clean run
    assert fc.clean == pytest.approx(float(edges.baselines["clean"].mean()), abs=1e-4)
    assert fc.corrupt == pytest.approx(float(edges.baselines["corrupt"].mean()), abs=1e-4)
    # the same sizes through eap_faithfulness (its own configurations): the same metric
    ref = eap_faithfulness(tiny_model, ds, edges, ks=fc.ks, progress=False)
    torch.testing.assert_close(fc.per_example[0], ref.per_example, atol=1e-4, rtol=0)
    want = [(float(v) - fc.corrupt) / (fc.clean - fc.corrupt) for v in ref.values]
    assert fc.faithfulness["eap"] == pytest.approx(want, abs=1e-3)
    assert (fc.cpr["eap"], fc.cmd["eap"]) == pytest.approx(cpr_cmd(fc.fractions, fc.faithfulness["eap"]))
    assert len(fc.random["curves"]) == 2 and fc.random["curves"][0][-1] == pytest.approx(1.0, abs=1e-4)
    fig = fc.plot()
    assert len(fig.axes[0].lines) >= 3
    df = fc.table()
    assert list(df["scoring"]) == ["eap", "as tensor", "random"]


def test_save_load_and_bad_input(tiny_gpt2, tmp_path):
    ds = toy_movie_review(tiny_gpt2, "test")[:4]
    edges = edge_attribution_patch(tiny_gpt2, ds, progress=False)
    fc = faithfulness_curve(tiny_gpt2, ds, edges, fractions=[0.1, 0.5, 1.0], n_random=0, progress=False)
    back = FaithfulnessCurve.load(fc.save(tmp_path / "fc"))
    assert back.cpr == fc.cpr and back.faithfulness == fc.faithfulness and back.ks == fc.ks
    with pytest.raises(ValueError, match="fractions"):
        faithfulness_curve(tiny_gpt2, ds, edges, fractions=[0.5, 0.1], progress=False)
    with pytest.raises(ValueError, match="scores"):
        faithfulness_curve(tiny_gpt2, ds, torch.zeros(3, 3), progress=False)
    with pytest.raises(ValueError, match="n_random"):
        faithfulness_curve(tiny_gpt2, ds, edges, n_random=-1, progress=False)
