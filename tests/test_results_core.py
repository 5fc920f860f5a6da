"""The result core: one type for measured values, provenance on every result, short reprs.

Every result class is produced here by its real method on a tiny model, so the test sees
what a user sees; the module also checks that no result class is left out.
"""

import importlib
import math
import pkgutil

import pytest
import torch

import mechlens
from mechlens.data import toy_movie_review
from mechlens.data.choices import choices
from mechlens.models import model_name, tiny
from mechlens.results import Measurement, Result

TRIPLES = [
    ("I thought this movie was", "good , I loved it .", "bad , I hated it ."),
    ("the plot", "delightful and charming", "dull and boring"),
    ("the music", "lovely", "awful"),
    ("the acting", "great and warm", "terrible and flat"),
]
TEMPLATE = "Question : {question} ?\n(A) {a}\n(B) {b}\nAnswer : ("
# made by slow training runs (LoRA fine-tunes); their reprs are checked in tests/test_dit.py
NOT_BUILT_HERE = {"DiffFamily", "DITAdapter", "DITResult"}


def _all_result_classes() -> set[type]:
    for info in pkgutil.walk_packages(mechlens.__path__, "mechlens."):
        if info.name.endswith("__main__") or ".cli" in info.name:
            continue
        importlib.import_module(info.name)
    out, todo = set(), [Result]
    while todo:
        c = todo.pop()
        for sub in c.__subclasses__():
            if sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


@pytest.fixture(scope="module")
def built():
    """One instance of every result class, each from its method on a tiny model."""
    from mechlens import ablation, lens, patching
    from mechlens.baseline import baseline
    from mechlens.circuits import (
        discover_sentiment_circuit,
        eap_faithfulness,
        edge_attribution_patch,
        patch_heads,
        summarization_motif,
    )
    from mechlens.circuits.faithfulness import faithfulness_curve
    from mechlens.circuits.stability import circuit_stability
    from mechlens.directions import ablate, directional_patch, evaluate, fit, project
    from mechlens.steering import (
        WeightVector,
        answer_activations,
        caa_vector,
        diff_anatomy,
        evaluate_steering,
        monitor,
        pca_view,
        prompt_baseline,
        side_effects,
        steerability,
    )
    from mechlens.steering.weights import parameters
    from mechlens.viz import attention

    m = tiny("llama", n_layers=2, n_ctx=512, seed=0)
    train, test = toy_movie_review(m, "train"), toy_movie_review(m, "test")
    filler = toy_movie_review(m, "test", filler=4)
    ab = choices(m, TRIPLES, question_template=TEMPLATE, seed=0, behaviour="pos", opposite="neg")
    d = fit(m, train, "mean_diff", layer=1)
    acts = answer_activations(m, ab, [0, 1], progress=False)
    g = torch.Generator().manual_seed(0)
    upd = {n: 1e-3 * torch.randn(p.shape, generator=g) for n, p in parameters(m).items() if "layers.1.mlp" in n}
    w = WeightVector(upd, name="random", model_name=model_name(m))
    out = [
        patching.activation_patch(m, test, "resid_pre", progress=False),
        patching.attribution_patch(m, test, "z", progress=False),
        patching.path_patch(m, test, progress=False),
        ablation.ablate_sweep(m, test, "heads", progress=False),
        ablation.knockout_curve(m, test, max_k=2, progress=False),
        lens.logit_lens(m, test, progress=False),
        lens.direct_logit_attribution(m, test, progress=False),
        edge_attribution_patch(m, test, progress=False),
        eap_faithfulness(m, test, edge_attribution_patch(m, test, progress=False), ks=[0, 3], n_random=2,
                         progress=False),
        baseline(m, {"test": test}, progress=False),
        d,
        directional_patch(m, test, d, progress=False),
        ablate(m, test, d, progress=False),
        evaluate(m, train, test, methods=["mean_diff"], n_random=2, progress=False),
        project(m, d, ["a great movie"], progress=False),
        acts,
        pca_view(acts, progress=False),
        caa_vector(m, ab, 1, progress=False),
        evaluate_steering(m, test, caa_vector(m, ab, 1, progress=False), [-1.0, 0.0, 1.0], progress=False),
        w,
        diff_anatomy(m, w, progress=False),
        monitor(m, {1: m}, w, progress=False),
        attention(m, "the movie was great"),
        discover_sentiment_circuit(m, train, faithfulness_ds=test, top_k=1, n_movers=1, n_random=2, progress=False),
        summarization_motif(m, filler, n_filler=(), ablation=False, progress=False),
        patch_heads(m, test, [[(0, 0)], [(1, 1)]], position="END"),
        steerability(m, test, d, [-1.0, 0.0, 1.0], progress=False),
        side_effects(m, d, [0.0, 1.0], texts=["The sun rose over the quiet town.", "Rain fell all day."],
                     progress=False),
        prompt_baseline(m, test, progress=False),
        faithfulness_curve(m, test, edge_attribution_patch(m, test, progress=False), n_random=1, progress=False),
        circuit_stability(m, test, k=5, n_resamples=2, faithfulness=False, by_template=False, progress=False),
    ]
    return m, test, out


def test_every_result_class_is_built_here(built):
    names = {type(r).__name__ for r in built[2]}
    missing = {c.__name__ for c in _all_result_classes()} - names - NOT_BUILT_HERE - {"Measurement"}
    assert not missing, f"add these result classes to the fixture: {sorted(missing)}"


def test_every_repr_is_short_and_names_the_model(built):
    for r in built[2]:
        text = repr(r)
        assert len(text.splitlines()) < 30, f"{type(r).__name__} repr has {len(text.splitlines())} lines"
        assert max(len(x) for x in text.splitlines()) < 400, type(r).__name__
        assert text.startswith(type(r).__name__), text[:80]
        assert "tiny-llama" in text or r.model_name in text, text[:200]
        html = r._repr_html_()
        if type(r).__name__ == "AttentionPatterns":  # Jupyter shows the interactive render itself
            assert 'class="mechlens-attention"' in html
        else:
            assert html.startswith("<div>") and type(r).__name__ in html


def test_every_plot_is_one_figure(built):
    from matplotlib.figure import Figure

    for r in built[2]:
        if hasattr(r, "plot"):
            assert isinstance(r.plot(), Figure), type(r).__name__


def test_every_result_records_its_provenance_and_survives_save_load(built, tmp_path):
    for i, r in enumerate(built[2]):
        assert r.model_name, type(r).__name__
        assert r.version == mechlens.__version__
        back = type(r).load(r.save(tmp_path / str(i)))
        assert (back.model_name, back.dataset, back.fingerprint, back.settings, back.version) == (
            r.model_name, r.dataset, r.fingerprint, r.settings, r.version
        ), type(r).__name__


def test_measurements_share_one_set_of_names(built):
    ms = [r for r in built[2] if isinstance(r, Measurement)]
    assert {type(r).__name__ for r in ms} >= {"PatchResult", "SteeringCurve", "DirectionalPatchResult", "AblationResult"}
    for r in ms:
        pe = r.per_example.float()
        assert r.per_example.ndim == len(r.axes) + 1
        torch.testing.assert_close(r.values.float(), pe.mean(-1))
        n = pe.shape[-1]
        if n > 1:  # the textbook standard error, computed by hand
            torch.testing.assert_close(r.stderr().float(), pe.std(-1) / math.sqrt(n), rtol=1e-4, atol=1e-6)
        lo, hi = r.ci(n_resamples=200)
        assert bool((lo <= r.values.float() + 1e-6).all() and (r.values.float() <= hi + 1e-6).all())
        df = r.to_dataframe()
        assert len(df) == max(1, r.values.numel()) and {"value", "stderr", "ci_low", "ci_high"} <= set(df.columns)
        assert len(r.to_dataframe(per_example=True)) == r.per_example.numel()
        fig = r.plot()
        assert type(fig).__name__ == "Figure"


def test_a_single_number_is_a_measurement_with_no_axes(built):
    dp = next(r for r in built[2] if type(r).__name__ == "DirectionalPatchResult")
    assert dp.axes == () and dp.values.ndim == 0
    assert torch.equal(dp.ld_patched, dp.per_example)
    assert dp.dataset == built[1].name and dp.fingerprint == built[1].fingerprint()
    assert dp.settings["position"] == "all"


def test_steering_curve_values_are_means_over_examples(built):
    curve = next(r for r in built[2] if type(r).__name__ == "SteeringCurve")
    assert curve.axes == ("coeff",) and curve.coeffs == [-1.0, 0.0, 1.0]
    assert curve.per_example.shape == (3, built[1].batch)
    torch.testing.assert_close(curve.values, curve.per_example.mean(-1))


def test_measurement_checks_its_shape():
    with pytest.raises(ValueError, match="expected one per axis"):
        Measurement(per_example=torch.zeros(2, 3), axes=("layer", "pos"), labels={"layer": [0, 1], "pos": [0]})
    with pytest.raises(ValueError, match="labels\\['layer'\\] must have 2 entries"):
        Measurement(per_example=torch.zeros(2, 3), axes=("layer",), labels={"layer": [0]})


def test_bootstrap_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    g = torch.Generator().manual_seed(1)
    m = Measurement(per_example=torch.randn(40, 25, 30, generator=g), axes=("a", "b"),
                    labels={"a": list(range(40)), "b": list(range(25))}, metric="m")
    lo, hi = m.ci()
    coverage = float(((lo <= 0) & (hi >= 0)).float().mean())
    assert 0.9 < coverage < 0.98, coverage
    assert torch.equal(lo, m.ci()[0])  # seeded
    assert not torch.equal(lo, m.ci(seed=1)[0])
    narrow, _ = m.ci(confidence=0.5)
    assert bool((narrow >= lo).all())


def _legacy_layout(r):
    """``r`` as the PatchResult earlier versions returned (their constructor calls, verbatim)."""
    name = type(r).__name__
    if name == "LogitLensResult":
        return dict(site="resid_post", mode="clean", method="logit_lens",
                    meta={"positions": r.positions, "n_layers": r.n_layers})
    if name == "DLAResult":
        return dict(site="END", mode="clean", method="dla",
                    meta={"group": r.group, "n_layers": r.n_layers, "final_norm": r.final_norm})
    if name == "AblationSweepResult":
        return dict(site=r.component, mode=r.how, method="ablation",
                    meta={"positions": r.positions, "reference": r.reference, "seed": r.seed,
                          "value": "metric(ablated) - metric(unablated)"})
    if name == "KnockoutCurve":
        return dict(site=r.component, mode=r.how, method="knockout",
                    meta={"order": r.order, "reference": r.reference, "seed": r.seed})
    if name == "EdgeScores":
        return dict(site="edges", mode="noise", method="eap",
                    meta={"valid": r.valid.tolist(), "attribution": r.method, "ig_steps": r.ig_steps, "score": r.score})
    if name == "EdgeFaithfulness":
        return dict(site="edges", mode="noise", method="eap_faithfulness",
                    meta={"n_edges": r.n_edges, "ranking": r.ranking, "random": r.random})
    return None


def test_results_saved_by_earlier_versions_load_as_the_classes_that_replaced_them(built, tmp_path):
    """Logit lens, DLA, ablation, knock-out and EAP results were PatchResults with the meaning
    in ``site``/``mode``/``meta``; such a saved folder loads as the new class, every field equal."""
    import dataclasses

    from mechlens.patching import PatchResult
    from mechlens.results import load_result

    moved = [r for r in built[2] if _legacy_layout(r) is not None]
    assert {type(r).__name__ for r in moved} == {c.rsplit(":")[1] for c in PatchResult.MOVED.values()}
    for i, r in enumerate(moved):
        core = {f.name: getattr(r, f.name) for f in dataclasses.fields(Measurement)}
        old = PatchResult(**core, baselines=r.baselines, **_legacy_layout(r))
        path = old.save(tmp_path / str(i))
        back = load_result(path)
        assert type(back) is type(r)
        for f in dataclasses.fields(r):
            a, b = getattr(back, f.name), getattr(r, f.name)
            if isinstance(b, torch.Tensor):
                assert torch.equal(a, b), f.name
            elif isinstance(b, dict) and b and isinstance(next(iter(b.values())), torch.Tensor):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), f.name
            else:
                assert a == b, (type(r).__name__, f.name)
        assert type(r).load(path).labels == r.labels  # the class's own load converts too
