"""mechlens.directions on planted data and on tiny models built so the answer is known.

The planted model is a real tiny llama bridge whose weights are set so that one unit vector
``u`` of the residual stream at layer 1 carries sentiment and is the only thing the model
reads: sentiment words' embeddings are ``+a u`` / ``-a u`` (everything else has no ``u``
component), block 0 and the MLPs write nothing, and one attention head of block 1 attends
uniformly, reads ``u`` and writes it to the last position, where the answer words'
unembeddings differ along ``u``.
"""

import matplotlib
import pytest
import torch

from mechlens.data import toy_movie_review
from mechlens.data.sentiment import (
    NEGATIVE_ADJECTIVES,
    NEGATIVE_VERBS,
    POSITIVE_ADJECTIVES,
    POSITIVE_VERBS,
)
from mechlens.directions import (
    METHODS,
    AblationResult,
    Direction,
    DirectionalPatchResult,
    DirectionEvaluation,
    Projection,
    ablate,
    ablate_each,
    add,
    collect_activations,
    directional_patch,
    evaluate,
    fit,
    fit_activations,
    project,
    random_directions,
)
from mechlens.metrics import logit_diff
from mechlens.models import tiny

matplotlib.use("Agg")

_POS = [w for s in ("train", "test") for w in POSITIVE_ADJECTIVES[s]] + POSITIVE_VERBS
_NEG = [w for s in ("train", "test") for w in NEGATIVE_ADJECTIVES[s]] + NEGATIVE_VERBS


def planted_model(seed: int = 0, a: float = 1.0, c: float = 0.005):
    """A tiny llama bridge in which sentiment is the direction ``u`` at layer 1 (see module doc).

    ``c`` keeps the head's write small, so the logit difference is linear in the ``u``
    component (no saturation in the final RMSNorm) and DAS gets a clean gradient.
    """
    m = tiny("llama", n_layers=2, seed=seed)
    hf = m.original_model
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(m.cfg.d_model, generator=g)
    u /= u.norm()
    with torch.no_grad():
        W = hf.model.embed_tokens.weight
        W -= torch.outer(W @ u, u)
        for words, s in ((_POS, 1.0), (_NEG, -1.0)):
            W[[m.to_single_token(" " + w) for w in words]] += s * a * u
        for layer in hf.model.layers:
            layer.mlp.down_proj.weight.zero_()
            layer.self_attn.o_proj.weight.zero_()
        attn = hf.model.layers[1].self_attn
        attn.q_proj.weight.zero_()  # q = k = 0: uniform attention over the prefix
        attn.k_proj.weight.zero_()
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[0] = u  # kv head 0, dim 0 reads u
        attn.o_proj.weight[:, 0] = c * u  # query head 0 (uses kv head 0) writes along u
        hf.lm_head.weight.copy_(W)  # answers' unembeddings differ along u
    return m, u


@pytest.fixture(scope="module")
def planted():
    m, u = planted_model()
    return m, u, toy_movie_review(m, "train"), toy_movie_review(m, "test")


def _signed(ld, labels):
    """positive-minus-negative answer logit diff (undo the per-example answer order)."""
    return ld * (2 * labels.float() - 1)


# --------------------------------------------------------------------------- planted activations


def _planted_acts(n=400, d=32, a=2.0, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    y = torch.arange(n) % 2
    offset = 3 * torch.randn(d, generator=g)  # the data are not centred
    X = offset + (2 * y[:, None].float() - 1) * a * u + sigma * torch.randn(n, d, generator=g)
    return X, y, u


@pytest.mark.parametrize("method", [m for m in METHODS if m != "das"])
def test_every_method_recovers_a_planted_direction(method):
    X, y, u = _planted_acts()
    v = fit_activations(X, y, method, seed=0)
    assert v.shape == u.shape
    assert torch.isclose(v.norm(), torch.tensor(1.0), atol=1e-5)
    assert float(v @ u) >= 0.95  # right direction AND right sign (towards label 1)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "das"])
def test_sign_follows_the_labels(method):
    X, y, u = _planted_acts(seed=1)
    v = fit_activations(X, y, method)
    w = fit_activations(X, 1 - y, method)
    assert float(v @ w) <= -0.95


def test_fit_activations_rejects_bad_input():
    X, y, _ = _planted_acts(n=20)
    with pytest.raises(ValueError, match="method"):
        fit_activations(X, y, "svm")
    with pytest.raises(ValueError, match="needs the model"):
        fit_activations(X, y, "das")
    with pytest.raises(ValueError, match="both classes"):
        fit_activations(X, torch.ones_like(y), "mean_diff")
    with pytest.raises(ValueError, match=r"\[n, d_model\]"):
        fit_activations(X[:, None], y, "mean_diff")


def test_random_directions_are_seeded_unit_vectors():
    r = random_directions(64, 5, seed=3)
    assert torch.allclose(r.norm(dim=-1), torch.ones(5))
    assert torch.equal(r, random_directions(64, 5, seed=3))
    assert not torch.equal(r, random_directions(64, 5, seed=4))


# --------------------------------------------------------------------------- Direction


def test_direction_save_load_exact(tmp_path):
    v = torch.randn(64)
    d = Direction(v / v.norm(), "kmeans", 3, site="resid_mid", position="COMMA", model_name="m",
                  fingerprint="abc", meta={"n_train": 10, "das_losses": [0.5, 0.25]})
    e = Direction.load(d.save(tmp_path / "d"))
    assert torch.equal(e.vector, d.vector)
    for f in ("method", "layer", "site", "position", "model_name", "fingerprint", "meta"):
        assert getattr(e, f) == getattr(d, f)
    assert e.hook_name == "blocks.3.hook_resid_mid"
    assert d.cosine(e) == pytest.approx(1.0)
    assert len(d.to_dataframe()) == 64
    assert isinstance(d.plot(), matplotlib.figure.Figure)


def test_direction_validates():
    with pytest.raises(ValueError, match="non-zero"):
        Direction(torch.zeros(8), "mean_diff", 0)
    with pytest.raises(ValueError, match="site"):
        Direction(torch.ones(8), "mean_diff", 0, site="attn_out")


# --------------------------------------------------------------------------- fit on models


def test_fit_matches_a_hand_computed_mean_difference(tiny_model):
    ds = toy_movie_review(tiny_model, "train")
    d = fit(tiny_model, ds, "mean_diff", 1, position="ADJ")
    _, c = tiny_model.run_with_cache(ds.clean_tokens, names_filter="blocks.1.hook_resid_pre")
    _, k = tiny_model.run_with_cache(ds.corrupt_tokens, names_filter="blocks.1.hook_resid_pre")
    i, p = torch.arange(ds.batch), ds.positions["ADJ"]
    acts = torch.cat([c["blocks.1.hook_resid_pre"][i, p], k["blocks.1.hook_resid_pre"][i, p]])
    lab = torch.cat([ds.labels, 1 - ds.labels])
    ref = acts[lab == 1].mean(0) - acts[lab == 0].mean(0)
    assert torch.allclose(d.vector, ref / ref.norm(), atol=1e-5)
    assert d.layer == 1 and d.position == "ADJ" and d.fingerprint == ds.fingerprint()
    assert d.model_name == tiny_model.cfg.model_name


def test_collect_activations_sites_agree(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "test")
    post, y = collect_activations(tiny_gpt2, ds, 0, site="resid_post", position="VRB")
    pre, y2 = collect_activations(tiny_gpt2, ds, 1, site="resid_pre", position="VRB")
    assert torch.allclose(post[0], pre[1], atol=1e-5)  # resid_post[l] is resid_pre[l+1]
    assert torch.equal(y, y2) and y.shape == (2 * ds.batch,)
    every, y3 = collect_activations(tiny_gpt2, ds, 1, position="all")
    assert every[1].shape == (2 * ds.batch * ds.seq_len, tiny_gpt2.cfg.d_model)
    assert int(y3.sum()) == ds.batch * ds.seq_len


def test_fit_rejects_bad_arguments(tiny_gpt2):
    ds = toy_movie_review(tiny_gpt2, "test")
    with pytest.raises(ValueError, match="method"):
        fit(tiny_gpt2, ds, "ica", 0)
    with pytest.raises(ValueError, match="out of range"):
        fit(tiny_gpt2, ds, "mean_diff", 7)
    with pytest.raises(ValueError, match="position"):
        fit(tiny_gpt2, ds, "mean_diff", 0, position="NOUN")
    with pytest.raises(ValueError, match="site"):
        fit(tiny_gpt2, ds, "mean_diff", 0, site="resid")
    with pytest.raises(ValueError, match="das options"):
        fit(tiny_gpt2, ds, "das", 0, das={"epoch": 2})
    with pytest.raises(TypeError, match="ContrastDataset"):
        fit(tiny_gpt2, ds.clean_tokens, "mean_diff", 0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_the_planted_direction_in_a_model(planted, method):
    m, u, train, _ = planted
    d = fit(m, train, method, 1, seed=0, progress=False)
    assert d.cosine(u) >= 0.95
    assert d.meta["train_separation"] == 1.0


def test_das_is_seeded_and_leaves_the_model_alone(planted):
    m, _, train, _ = planted
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: p.requires_grad for n, p in m.named_parameters()}
    a = fit(m, train, "das", 1, seed=3, das={"epochs": 1}, progress=False)
    b = fit(m, train, "das", 1, seed=3, das={"epochs": 1}, progress=False)
    c = fit(m, train, "das", 1, seed=4, das={"epochs": 1}, progress=False)
    assert torch.equal(a.vector, b.vector)
    assert not torch.equal(a.vector, c.vector)
    assert len(a.meta["das_losses"]) == 6  # 48 pairs in minibatches of 8, one epoch
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad == grads[n]


@pytest.mark.parametrize("layer", [0, 1])
def test_das_trains_alike_on_both_backends(planted, layer):
    """The fast backend runs DAS's training passes from the patched layer on (the prefix once,
    engine.train_forward); the losses and the trained direction equal full hooked passes'."""
    m, _, train, _ = planted
    fast = fit(m, train, "das", layer, seed=3, das={"epochs": 2}, progress=False, backend="fast")
    hooks = fit(m, train, "das", layer, seed=3, das={"epochs": 2}, progress=False, backend="hooks")
    torch.testing.assert_close(torch.tensor(fast.meta["das_losses"]), torch.tensor(hooks.meta["das_losses"]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.vector, hooks.vector, atol=1e-4, rtol=0)


def test_das_learns_from_a_random_start(planted):
    """The loss goes down: DAS is trained, not read off the data."""
    m, u, train, _ = planted
    start = random_directions(m.cfg.d_model, 1, seed=9)[0]
    d = fit(m, train, "das", 1, das={"init": start}, progress=False)
    assert abs(float(start @ u)) < 0.5
    losses = d.meta["das_losses"]
    assert losses[-1] < losses[0] - 0.1
    assert d.cosine(u) >= 0.95


# --------------------------------------------------------------------------- directional patching


def _slow_directional_patch(model, ds, vec, layers):
    """One example at a time, with the patch written out position by position."""
    d = vec / vec.norm()
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    out = []
    for i in range(ds.batch):
        _, cache = model.run_with_cache(ds.clean_tokens[i : i + 1], names_filter=names)

        def make(name, cache=cache):
            def hook(h, hook):
                h = h.clone()
                for p in range(h.shape[1]):
                    delta = cache[name][0, p] - h[0, p]
                    h[0, p] = h[0, p] + (delta @ d) * d
                return h

            return hook

        logits = model.run_with_hooks(ds.corrupt_tokens[i : i + 1], fwd_hooks=[(n, make(n)) for n in names])
        out.append(logit_diff(logits, ds.answers[i : i + 1])[0])
    return torch.stack(out).detach()


@pytest.mark.parametrize("layers", [[1], [0, 1]])
def test_directional_patch_matches_slow_reference(tiny_model, layers):
    ds = toy_movie_review(tiny_model, "test")[:6]
    vec = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    res = directional_patch(tiny_model, ds, vec, layers=layers, batch_size=4, progress=False)
    ref = _slow_directional_patch(tiny_model, ds, vec, layers)
    assert torch.allclose(res.ld_patched, ref, atol=1e-4)
    assert res.layers == layers and res.position == "all"


def test_directional_patch_on_the_planted_model(planted):
    m, u, _, test = planted
    full = directional_patch(m, test, u, layers=1, progress=False)
    assert isinstance(full, DirectionalPatchResult)
    assert full.ld_recovered == pytest.approx(1.0, abs=0.01)
    assert full.logit_flip == pytest.approx(1.0)
    assert 100 * full.ld_recovered == pytest.approx(full.ld_recovered_pct)
    # the head averages ADJ and VRB: patching one of the two restores about half
    half = directional_patch(m, test, u, layers=1, position="ADJ", progress=False)
    assert 0.4 < half.ld_recovered < 0.6
    both = directional_patch(m, test, u, layers=1, position=["ADJ", "VRB"], progress=False)
    assert both.ld_recovered == pytest.approx(1.0, abs=0.01)
    # a direction orthogonal to u carries nothing
    r = random_directions(m.cfg.d_model, 1, seed=5)[0]
    r = r - (r @ u) * u
    none = directional_patch(m, test, r, layers=1, progress=False)
    assert abs(none.ld_recovered) < 0.01
    assert len(full.to_dataframe()) == 1 and len(full.to_dataframe(per_example=True)) == test.batch
    assert isinstance(full.plot(), matplotlib.figure.Figure)


def test_directional_patch_validates(planted):
    m, u, _, test = planted
    with pytest.raises(ValueError, match="layers"):
        directional_patch(m, test, u)
    with pytest.raises(ValueError, match="d_model"):
        directional_patch(m, test, torch.ones(10), layers=1)
    with pytest.raises(ValueError, match="'NOUN' is not a position of dataset"):
        directional_patch(m, test, u, layers=1, position="NOUN")
    with pytest.raises(ValueError, match="out of range"):
        directional_patch(m, test, u, layers=5)


# --------------------------------------------------------------------------- ablation


def test_zero_ablation_removes_everything_the_model_reads(planted):
    m, u, _, test = planted
    res = ablate(m, test, u, layers=1, how="zero", progress=False)
    assert isinstance(res, AblationResult)
    signed = _signed(res.ld_after, res.class_labels)
    assert float(signed.std()) < 1e-4  # every example now looks the same to the model
    assert abs(float(res.ld_after.mean())) < 0.02 * float(res.ld_before.mean())
    assert res.ld_change < -0.95
    assert res.accuracy_before == 1.0


def test_mean_ablation_of_a_balanced_dataset_matches_zero(planted):
    m, u, _, test = planted
    mean = ablate(m, test, u, layers=1, how="mean", progress=False)
    assert mean.ld_change < -0.9
    assert mean.accuracy_after < 0.8


def test_ablating_where_the_direction_is_absent_changes_nothing(planted):
    m, u, _, test = planted
    res = ablate(m, test, u, layers=1, position="COMMA", how="zero", progress=False)
    assert res.position == "COMMA" and res.settings["position"] == "COMMA"
    assert torch.allclose(res.ld_after, res.ld_before, atol=1e-5)


@pytest.mark.parametrize("how", ["mean", "zero", "resample"])
def test_ablate_each_equals_one_ablation_at_a_time(planted, how):
    """One clean run for every (direction, position) pair, passes mixing the pairs' rows
    (batch_size 3 splits them unevenly): each result equals its own ablate() call."""
    m, u, _, test = planted
    others = [torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    many = ablate_each(m, test, [u, *others], positions=["all", "COMMA", "ADJ"], layers=[0, 1], how=how, seed=3,
                       batch_size=3, progress=False)
    assert len(many) == 9
    for i, (vec, position) in enumerate((v, p) for v in [u, *others] for p in ["all", "COMMA", "ADJ"]):
        one = ablate(m, test, vec, position=position, layers=[0, 1], how=how, seed=3, batch_size=3, progress=False)
        assert many[i].position == one.position and many[i].settings == one.settings
        torch.testing.assert_close(many[i].ld_before, one.ld_before, atol=1e-5, rtol=0)
        torch.testing.assert_close(many[i].ld_after, one.ld_after, atol=1e-5, rtol=0)
    assert not torch.allclose(many[0].ld_after, many[3].ld_after)  # the directions differ
    with pytest.raises(ValueError, match="at least one direction"):
        ablate_each(m, test, [], layers=1)


def test_resample_ablation(planted):
    m, u, _, test = planted
    a = ablate(m, test, u, layers=1, how="resample", seed=0, progress=False)
    b = ablate(m, test, u, layers=1, how="resample", seed=0, progress=False)
    assert torch.equal(a.ld_after, b.ld_after)
    # each example takes both sentiment words of one other example, so it now looks exactly
    # like a positive or like a negative example
    before, after = _signed(a.ld_before, a.class_labels), _signed(a.ld_after, a.class_labels)
    looks = torch.stack([before[a.class_labels == 1].mean(), before[a.class_labels == 0].mean()])
    assert torch.isclose(after[:, None], looks, rtol=0.02).any(1).all()
    assert (a.ld_after < 0).any() and (a.ld_after > 0).any()
    assert set(a.summary()) >= {"ld_before", "ld_after", "ld_change", "accuracy_before", "accuracy_after"}
    assert isinstance(a.plot(), matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="how='median' is unknown"):
        ablate(m, test, u, layers=1, how="median")


# --------------------------------------------------------------------------- activation addition


def test_add_shifts_the_residual_and_is_removed(planted):
    m, u, _, test = planted
    name = "blocks.1.hook_resid_pre"
    toks = test.clean_tokens[:4]
    _, base = m.run_with_cache(toks, names_filter=name)
    with add(m, u, 2.5, layer=1):
        _, steered = m.run_with_cache(toks, names_filter=name)
        up = logit_diff(m(toks), test.answers[:4])
    assert torch.allclose(steered[name], base[name] + 2.5 * u, atol=1e-5)
    after = logit_diff(m(toks), test.answers[:4])
    clean = logit_diff(m(toks), test.answers[:4])
    assert torch.allclose(after, clean)
    assert (_signed(up, test.labels[:4]) > _signed(clean, test.labels[:4]) + 0.05).all()
    with pytest.raises(RuntimeError), add(m, u, 1.0, layer=1):
        raise RuntimeError("boom")
    assert torch.allclose(logit_diff(m(toks), test.answers[:4]), clean)


def test_add_steers_generation(planted):
    m, u, _, _ = planted
    pos_ids = {m.to_single_token(" " + w) for w in _POS}
    neg_ids = {m.to_single_token(" " + w) for w in _NEG}
    prompt = m.to_tokens("I thought this movie was")
    for coeff, wanted in ((60.0, pos_ids), (-60.0, neg_ids)):
        with add(m, Direction(u, "planted", 1), coeff):
            out = m.generate(prompt, max_new_tokens=4, do_sample=False, verbose=False, return_type="tokens")
        new = out[0, prompt.shape[1]:].tolist()
        assert len(new) == 4 and set(new) <= wanted
    with pytest.raises(TypeError, match="coeff"):
        with add(m, u, "big", layer=1):
            pass


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def planted_eval(planted):
    m, u, train, test = planted
    return evaluate(m, train, test, layers=[0, 1], n_random=3, progress=False)


def test_evaluate_on_the_planted_model(planted, planted_eval):
    m, u, train, test = planted
    ev = planted_eval
    assert isinstance(ev, DirectionEvaluation)
    assert ev.methods == list(METHODS) and ev.layers == [0, 1]
    assert (ev.ld_recovered[:, 1] >= 0.9).all()  # every method at the planted layer
    assert ev.random_ld_recovered.abs().mean() < 0.05
    assert ev.mean_pairwise_cosine(1) >= 0.9
    assert ev.cosine.shape == (2, 5, 5) and torch.allclose(ev.cosine[1].diagonal(), torch.ones(5), atol=1e-5)
    for method in METHODS:
        assert ev.direction(method, 1).cosine(u) >= 0.95
    b = ev.best()
    assert b["layer"] in (0, 1) and b["ld_recovered"] >= 0.9


def test_evaluate_agrees_with_directional_patch(planted, planted_eval):
    m, _, _, test = planted
    d = planted_eval.direction("pca", 1)
    one = directional_patch(m, test, d, progress=False)
    assert float(planted_eval.ld_recovered[3, 1]) == pytest.approx(one.ld_recovered, abs=1e-5)
    assert float(planted_eval.logit_flip[3, 1]) == pytest.approx(one.logit_flip, abs=1e-6)


def test_evaluation_tables_plots_and_round_trip(planted_eval, tmp_path):
    ev = planted_eval
    df = ev.to_dataframe()
    assert len(df) == (len(ev.methods) + 1) * len(ev.layers)
    assert set(df.columns) == {"method", "layer", "ld_recovered", "ld_recovered_pct", "logit_flip"}
    assert set(df.method) == set(ev.methods) | {"random"}
    wide = ev.table()
    assert wide.shape == (2, 6) and list(wide.columns) == ev.methods + ["random"]
    md = ev.to_markdown()
    assert md.count("\n") == 2 + len(ev.layers) - 1 and "das LD%" in md
    fig = ev.plot()
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) >= 3
    # the legend sits under the panels, covering no curve
    fig.draw_without_rendering()
    (legend,) = fig.legends
    assert not any(ax.get_legend() for ax in fig.axes)
    box = legend.get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 + 1 for ax in fig.axes)
    assert [t.get_text() for t in legend.get_texts()] == ev.methods + ["random (mean of 3)"]
    back = DirectionEvaluation.load(ev.save(tmp_path / "ev"))
    assert torch.equal(back.ld_recovered, ev.ld_recovered) and torch.equal(back.vectors, ev.vectors)
    assert back.methods == ev.methods and back.layers == ev.layers and back.meta == ev.meta


def test_evaluate_validates(planted):
    m, _, train, test = planted
    with pytest.raises(ValueError, match="methods"):
        evaluate(m, train, test, methods=["mean_diff", "ica"], layers=[1])
    with pytest.raises(ValueError, match="n_random"):
        evaluate(m, train, test, layers=[1], n_random=0)
    with pytest.raises(ValueError, match="out of range"):
        evaluate(m, train, test, layers=[2])


# --------------------------------------------------------------------------- projection


def test_project_gives_the_per_token_projection(planted, tmp_path):
    m, u, _, _ = planted
    d = Direction(u, "planted", 1)
    texts = ["I thought this movie was great", "I hated it, the plot was dull"]
    pr = project(m, d, texts, progress=False)
    assert isinstance(pr, Projection)
    df = pr.to_dataframe()
    assert list(df.columns) == ["text", "text_index", "position", "token", "projection"]
    by_tok = {(r.text_index, r.token): r.projection for r in df.itertuples()}
    assert by_tok[(0, " great")] == pytest.approx(1.0, abs=1e-4)  # planted +a u, a = 1
    assert by_tok[(1, " hated")] == pytest.approx(-1.0, abs=1e-4)
    assert by_tok[(1, " dull")] == pytest.approx(-1.0, abs=1e-4)
    assert abs(by_tok[(0, " movie")]) < 1e-4
    # the same numbers from a plain cache
    _, cache = m.run_with_cache(m.to_tokens(texts[1]), names_filter="blocks.1.hook_resid_pre")
    ref = (cache["blocks.1.hook_resid_pre"][0, 1:] @ u).tolist()  # BOS left out
    assert pr.values[1] == pytest.approx(ref, abs=1e-5)
    html = pr.html()
    assert "CircuitsVis.render" in html and "ColoredTokens" in html and "unpkg.com" not in html
    assert len(html) > 100_000  # the JavaScript bundle is inlined
    assert pr.save_html(tmp_path / "p.html").read_text() == html
    assert isinstance(pr.plot(), matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="texts"):
        project(m, d, [])
