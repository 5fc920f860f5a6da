"""PatchResult: statistics, tables, plots, exact save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch

from mechlens.data import toy_movie_review
from mechlens.patching import PatchResult, activation_patch


@pytest.fixture(scope="module")
def grid(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "train")[:4]
    return activation_patch(tiny_gpt2, ds, "resid_pre", progress=False)


@pytest.fixture(scope="module")
def heads(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "train")[:4]
    return activation_patch(tiny_gpt2, ds, "z", positions=[5, "END"], progress=False)


def _fake(axes=("layer", "pos"), shape=(2, 3), batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = {a: [f"{a}{i}" for i in range(n)] for a, n in zip(axes, shape)}
    return PatchResult(per_example=torch.randn(*shape, batch, generator=g), axes=axes, labels=labels,
                       metric="logit_diff", site="resid_pre", mode="denoise")


def test_labels_and_provenance(grid, tiny_gpt2):
    assert grid.axes == ("layer", "pos")
    assert grid.labels["layer"] == list(range(tiny_gpt2.cfg.n_layers))
    assert any("(ADJ)" in lab for lab in grid.labels["pos"])
    assert grid.model_name == "tiny-gpt2-2l" and grid.dataset == "toy_movie_review/train"
    assert len(grid.fingerprint) == 16 and grid.metric == "fraction_recovered"
    assert grid.values.shape == grid.shape == (2, grid.per_example.shape[1])
    assert "resid_pre" in repr(grid)


def test_statistics():
    r = _fake()
    torch.testing.assert_close(r.values, r.per_example.mean(-1))
    torch.testing.assert_close(r.stderr(), r.per_example.std(-1) / math.sqrt(5))
    lo, hi = r.ci(n_resamples=400)
    assert (lo <= r.values + 1e-6).all() and (r.values <= hi + 1e-6).all() and (lo < hi).all()
    lo2, hi2 = r.ci(n_resamples=400)
    assert torch.equal(lo, lo2) and torch.equal(hi, hi2)  # seeded
    one = PatchResult(per_example=torch.ones(2, 1), axes=("layer",), labels={"layer": [0, 1]}, metric="m",
                      site="s", mode="denoise")
    assert torch.isnan(one.stderr()).all()


def test_dataframes_and_top():
    r = _fake()
    df = r.to_dataframe()
    assert list(df.columns) == ["layer", "pos", "value", "stderr", "ci_low", "ci_high"]
    assert len(df) == 6 and df.loc[4, "layer"] == "layer1" and df.loc[4, "pos"] == "pos1"
    assert df.loc[4, "value"] == pytest.approx(float(r.values[1, 1]))
    long = r.to_dataframe(per_example=True)
    assert len(long) == 30 and set(long.columns) == {"layer", "pos", "example", "value"}
    assert long.loc[7, "value"] == pytest.approx(float(r.per_example[0, 1, 2]))
    top = r.top(3)
    assert len(top) == 3
    assert top["value"].abs().tolist() == sorted(df["value"].abs(), reverse=True)[:3]
    assert r.top(1, by="value")["value"].iloc[0] == pytest.approx(float(r.values.max()))


def test_correlation():
    r = _fake()
    assert r.correlation(r) == pytest.approx(1.0)
    flipped = PatchResult(per_example=-r.per_example, axes=r.axes, labels=r.labels, metric="m", site="s",
                          mode="denoise")
    assert r.correlation(flipped, method="spearman") == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        r.correlation(_fake(shape=(3, 2)))


def test_save_load_round_trip(heads, tmp_path):
    path = heads.save(tmp_path / "res")
    back = PatchResult.load(path)
    assert torch.equal(back.per_example, heads.per_example)
    assert back.axes == heads.axes and isinstance(back.axes, tuple)
    assert back.labels == heads.labels
    assert back.baselines.keys() == heads.baselines.keys()
    assert all(torch.equal(back.baselines[k], heads.baselines[k]) for k in heads.baselines)
    for f in ("metric", "site", "mode", "method", "model_name", "dataset", "fingerprint", "meta"):
        assert getattr(back, f) == getattr(heads, f)


def test_plots(grid, heads):
    from matplotlib.figure import Figure

    assert isinstance(grid.plot(), Figure)
    fig = grid.plot(ci=True)
    assert len([ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]) >= 2
    assert isinstance(heads.plot(ci=True), Figure)  # small multiples over heads
    one = _fake(axes=("layer",), shape=(4,))
    assert isinstance(one.plot(ci=True), Figure)
    xt = [t.get_text() for t in grid.plot().axes[0].get_xticklabels()]
    assert xt == [str(x) for x in grid.labels["pos"]]
    import plotly.graph_objects as go

    for r in (grid, heads, one):
        assert isinstance(r.plot_interactive(), go.Figure)


def test_label_validation():
    with pytest.raises(ValueError, match="labels"):
        PatchResult(per_example=torch.zeros(2, 3, 4), axes=("layer", "pos"), labels={"layer": [0, 1]},
                    metric="m", site="s", mode="denoise")
    with pytest.raises(ValueError, match="dims"):
        PatchResult(per_example=torch.zeros(2, 3), axes=("layer", "pos"), labels={"layer": [0, 1], "pos": [0, 1, 2]},
                    metric="m", site="s", mode="denoise")


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("axes, shape", [(("layer", "pos"), (6, 9)), (("layer", "head", "pos"), (4, 5, 3))])
def test_ci_plot_has_separate_colourbars_and_explains_the_dots(axes, shape):
    fig = _fake(axes=axes, shape=shape, batch=8).plot(ci=True)
    fig.draw_without_rendering()  # lay out (constrained) before reading positions
    visible = [ax for ax in fig.axes if ax.get_visible()]
    bars = [ax for ax in visible if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in visible if ax.get_label() != "<colorbar>"]
    # a single heatmap: its own colourbar and one for the half-width panel; facets share one
    assert len(bars) == (2 if len(axes) == 2 else 1)
    boxes = [ax.get_window_extent() for ax in visible]
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    if len(axes) == 2:
        value_bar, width_bar = sorted(bars, key=lambda ax: ax.get_window_extent().x0)
        assert value_bar.get_ylabel() == "logit_diff" and width_bar.get_ylabel() == "half-width (logit_diff)"
        assert panels[0].get_window_extent().x1 < value_bar.get_window_extent().x0 < panels[1].get_window_extent().x0
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["cell whose 95% bootstrap CI excludes 0"]
    assert legend.get_window_extent().y1 <= min(b.y0 for b in boxes) + 1  # below the panels
    assert not _fake(axes=axes, shape=shape).plot().legends  # no dots, no legend
