"""Steering: A/B choice prompts, CAA activations/PCA/vectors/steer, weight arithmetic.

Everything here runs on tiny models built offline; tests/test_steering_smollm2.py holds the
few checks on the bundled model."""

import math

import matplotlib
import pytest
import torch

from mechlens.data import toy_movie_review
from mechlens.data.choices import (
    ChoiceDataset,
    choices,
    movie_review_pairs,
    movie_review_texts,
    polite_casual,
    polite_casual_triples,
)
from mechlens.models import tiny
from mechlens.steering import (
    AnswerActivations,
    DiffAnatomy,
    MonitorResult,
    PCAView,
    SteeringCurve,
    SteeringVector,
    WeightMonitor,
    WeightVector,
    answer_activations,
    apply_weights,
    behaviour_logit_diff,
    caa_vector,
    clone_model,
    contrastive_weight_vector,
    diff_anatomy,
    effective_rank,
    evaluate_steering,
    finetune,
    layer_group,
    monitor,
    parameters,
    pca_view,
    steer,
    task_vector,
)

matplotlib.use("Agg")

# Short triples in the tiny tokenizer's vocabulary, so prompts stay short.
TRIPLES = [
    ("I thought this movie was", "good , I loved it .", "bad , I hated it ."),
    ("the plot", "delightful and charming", "dull and boring"),
    ("the music", "lovely", "awful"),
    ("the acting", "great and warm", "terrible and flat"),
    ("the film", "wonderful , thanks", "dreadful"),
    ("the scene", "beautiful", "ugly and rotten"),
    ("the end", "perfect , I enjoyed it", "disappointing"),
]
SHORT_TEMPLATE = "Question : {question} ?\n(A) {a}\n(B) {b}\nAnswer : ("
JAPANESE = [
    ("駅はどこですか？", "駅はこちらでございます。", "駅ならあっちだよ。"),
    ("会議は何時からですか？", "十時からでございます。", "十時からだよ。"),
    ("ペンを借りてもいいですか？", "どうぞお使いください。", "いいよ。"),
]
POS_TEXTS = [
    "I thought this movie was great , I loved it .",
    "This movie is great and wonderful .",
    "The film was amazing , I enjoyed it .",
    "This movie is awesome , the acting was good .",
    "I thought this movie was perfect , I liked it .",
    "The plot was delightful and the music was lovely .",
]
NEG_TEXTS = [
    "I thought this movie was terrible , I hated it .",
    "This movie is terrible and awful .",
    "The film was bad , I disliked it .",
    "This movie is horrible , the acting was bad .",
    "I thought this movie was disgusting , I despised it .",
    "The plot was dull and the music was dreadful .",
]


@pytest.fixture(scope="module")
def model():
    return tiny("llama", n_layers=2, n_ctx=512, seed=0)


@pytest.fixture(scope="module")
def ab(model):
    return choices(model, TRIPLES, question_template=SHORT_TEMPLATE, seed=0, behaviour="pos", opposite="neg")


@pytest.fixture(scope="module")
def tuned_pair(model):
    """A positive and a negative fine-tune of the tiny model (a model trained to have the behaviour)."""
    kw = {"steps": 12, "lr": 3e-3, "batch_size": 4, "progress": False}
    return finetune(model, POS_TEXTS, seed=0, **kw), finetune(model, NEG_TEXTS, seed=0, **kw)


# --------------------------------------------------------------------------- choices


@pytest.mark.parametrize("n", [7, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choices_balances_letters(model, n, seed):
    triples = (TRIPLES * 2)[:n]
    ds = choices(model, triples, question_template=SHORT_TEMPLATE, seed=seed)
    assert len(ds) == 2 * n and ds.n_triples == n
    n_first = sum(x == "A" for x in ds.behaviour_letters)
    assert n_first in {n // 2, (n + 1) // 2}
    # every triple yields one A and one B prompt, so the letters are exactly balanced
    assert ds.letters.count("A") == ds.letters.count("B") == n
    # and behaviour vs letter is balanced: a 2x2 table with equal (or off-by-one) cells
    table = ds.to_dataframe().groupby(["letter", "choice"]).size()
    assert table.max() - table.min() <= 1
    assert ds.labels.tolist() == [1, 0] * n
    for i, (prompt, toks, letter) in enumerate(zip(ds.prompts, ds.tokens, ds.letters)):
        assert prompt.endswith("(" + letter)
        assert int(toks[-1]) == ds.letter_ids["AB".index(letter)]
        assert prompt == ds.open_prompts[i // 2] + letter
        assert torch.equal(toks[:-1], ds.open_tokens[i // 2])
        question, good, bad = triples[i // 2]
        a, b = (good, bad) if ds.behaviour_letters[i // 2] == "A" else (bad, good)
        assert f"(A) {a}\n(B) {b}" in prompt and question in prompt
        # the label says which text sits under the chosen letter
        assert (letter == ds.behaviour_letters[i // 2]) == bool(ds.labels[i])


def test_choices_seeded(model):
    many = [(f"q{i}", "good", "bad") for i in range(24)]
    a = choices(model, many, question_template=SHORT_TEMPLATE, seed=3)
    b = choices(model, many, question_template=SHORT_TEMPLATE, seed=3)
    c = choices(model, many, question_template=SHORT_TEMPLATE, seed=4)
    assert a.behaviour_letters == b.behaviour_letters and a.prompts == b.prompts
    assert a.behaviour_letters != c.behaviour_letters


def test_choices_japanese(model):
    ds = choices(model, JAPANESE, question_template="質問：{question}\n(A) {a}\n(B) {b}\n答え：(", seed=0)
    assert len(ds) == 6
    for prompt, toks, letter in zip(ds.prompts, ds.tokens, ds.letters):
        assert int(toks[-1]) == ds.letter_ids["AB".index(letter)]
        # byte-level BPE: the tokens decode back to the exact Japanese prompt
        assert model.tokenizer.decode(toks, skip_special_tokens=True) == prompt
    assert any("駅はこちらでございます。" in p for p in ds.prompts)
    shipped = polite_casual(model, lang="ja")
    assert shipped.n_triples == len(polite_casual_triples("ja")) == 8
    assert shipped.behaviour == "polite"


def test_choices_errors(model):
    with pytest.raises(ValueError, match="pairs is empty"):
        choices(model, [])
    with pytest.raises(ValueError, match=r"\{b\}"):
        choices(model, TRIPLES, question_template="{question} (A) {a} (")
    with pytest.raises(ValueError, match="triple"):
        choices(model, [("q", "only two")])
    # a template ending in a space makes " A" one token: the letter is no longer its own token
    with pytest.raises(ValueError, match="not the last token"):
        choices(model, TRIPLES, question_template="{question} (A) {a} (B) {b} Answer ")
    with pytest.raises(ValueError, match="longer than the model's context"):
        choices(tiny("gpt2", n_ctx=16), TRIPLES, question_template=SHORT_TEMPLATE)


def test_shipped_data():
    en = polite_casual_triples("en")
    assert len(en) == 40 and len(polite_casual_triples("en", "train")) == 30
    assert len(set(en)) == 40 and all(len(t) == 3 for t in en)
    pairs = movie_review_pairs()
    assert len(pairs) == 40 and len(movie_review_pairs("train")) == 24
    assert movie_review_texts("positive", "test")[0] == pairs[24][0]
    with pytest.raises(ValueError, match="split"):
        movie_review_pairs("dev")


def test_choice_subset(ab):
    sub = ab.subset([1, 3])
    assert isinstance(sub, ChoiceDataset) and len(sub) == 4
    assert sub.prompts == ab.prompts[2:4] + ab.prompts[6:8]
    tr, te = ab.split(5)
    assert tr.n_triples == 5 and te.n_triples == 2 and te.prompts == ab.prompts[10:]


# --------------------------------------------------------------------------- activations / PCA


def _reference_acts(model, ds, layer, site="resid_post"):
    """One prompt at a time, no padding: the slow obvious way."""
    out = []
    for toks in ds.tokens:
        _, cache = model.run_with_cache(toks[None], names_filter=[f"blocks.{layer}.hook_{site}"])
        out.append(cache[f"blocks.{layer}.hook_{site}"][0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("site", ["resid_post", "mlp_out"])
def test_answer_activations_match_one_by_one(model, ab, site):
    acts = answer_activations(model, ab, [0, 1], site=site, batch_size=3, progress=False)
    assert acts.acts.shape == (2, len(ab), model.cfg.d_model)
    assert len({len(t) for t in ab.tokens}) > 1  # batches are really padded
    for li, layer in enumerate([0, 1]):
        torch.testing.assert_close(acts.acts[li], _reference_acts(model, ab, layer, site), atol=1e-5, rtol=1e-5)
    assert acts.letters == ab.letters and torch.equal(acts.labels, ab.labels)
    # an early layer alone: the forward stops after it, same numbers
    early = answer_activations(model, ab, 0, site=site, batch_size=4, progress=False)
    torch.testing.assert_close(early.acts[0], acts.acts[0], atol=1e-5, rtol=1e-5)


def test_answer_activations_errors(model, ab):
    with pytest.raises(ValueError, match="out of range"):
        answer_activations(model, ab, 5, progress=False)
    with pytest.raises(ValueError, match="site"):
        answer_activations(model, ab, 0, site="resid_middle", progress=False)
    with pytest.raises(TypeError, match="ChoiceDataset"):
        answer_activations(model, ab.prompts, 0, progress=False)


def _synthetic_acts(letter_gap, behaviour_gap, n=40, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    letters = ["A", "B"] * (n // 2)
    labels = torch.tensor([1, 1, 0, 0] * (n // 4))
    x = torch.randn(n, d, generator=g) * 0.3
    x[:, 0] += letter_gap * torch.tensor([1.0 if x == "A" else -1.0 for x in letters])
    x[:, 1] += behaviour_gap * (labels.float() * 2 - 1)
    return AnswerActivations(
        acts=x[None], layers=[3], site="resid_post", letters=letters, labels=labels,
        pair=torch.arange(n) // 2, behaviour="polite", opposite="casual",
    )


def _silhouette_reference(x, labels):
    """Silhouette by its definition (Rousseeuw 1987), with torch distances."""
    d = torch.cdist(x.double(), x.double())
    s = []
    for i in range(len(x)):
        same = labels == labels[i]
        same[i] = False
        a = d[i, same].mean()
        b = min(d[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        s.append((b - a) / max(a, b))
    return float(torch.stack(s).mean())


def test_pca_view_numbers(model, ab):
    syn = _synthetic_acts(letter_gap=5.0, behaviour_gap=1.5)
    pv = pca_view(syn, progress=False)
    x = syn.acts[0]
    letter_ids = torch.tensor([0 if x == "A" else 1 for x in syn.letters])
    assert pv.silhouette_letter[0] == pytest.approx(_silhouette_reference(x, letter_ids), abs=1e-5)
    assert pv.silhouette_behaviour[0] == pytest.approx(_silhouette_reference(x, syn.labels), abs=1e-5)
    within = [_silhouette_reference(x[letter_ids == k], syn.labels[letter_ids == k]) for k in (0, 1)]
    assert pv.silhouette_within_letter[0] == pytest.approx(sum(within) / 2, abs=1e-5)
    assert pv.dominant == ["letter"] and pv.silhouette_letter[0] > 0.5
    # behaviour splits cleanly inside each letter's cluster, not across all points
    assert pv.silhouette_within_letter[0] > pv.silhouette_behaviour[0]
    flipped = pca_view(_synthetic_acts(letter_gap=0.0, behaviour_gap=5.0), progress=False)
    assert flipped.dominant == ["behaviour"]
    # PCA coordinates: the centred data projected on the top right-singular vectors
    xc = (x - x.mean(0)).double()
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    for k in range(2):
        got = pv.coords[0, :, k].double()
        sign = torch.sign((got * ref[:, k]).sum())
        torch.testing.assert_close(got, sign * ref[:, k], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pv.explained[0].double(), (s[:2] ** 2 / (s**2).sum()), atol=1e-5, rtol=1e-5)


def test_pca_view_reproducible(model, ab, tmp_path):
    acts = answer_activations(model, ab, [0, 1], progress=False)
    a, b = pca_view(acts, seed=7, progress=False), pca_view(acts, seed=7, progress=False)
    for f in ("coords", "explained", "silhouette_letter", "silhouette_behaviour", "silhouette_within_letter"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    # seeded subsampling for silhouettes on large sets: same seed, same numbers
    big = _synthetic_acts(3.0, 1.0, n=200)
    s1 = pca_view(big, seed=1, max_samples=50, progress=False).silhouette_letter
    s2 = pca_view(big, seed=1, max_samples=50, progress=False).silhouette_letter
    assert torch.equal(s1, s2)
    df = a.to_dataframe()
    assert set(df.columns) >= {"layer", "letter", "choice", "pc1", "pc2"} and len(df) == 2 * len(ab)
    assert list(a.layer_table()["layer"]) == [0, 1]
    assert isinstance(a.plot(), matplotlib.figure.Figure)
    assert len(a.plot_interactive().data) == 8  # 2 layers x 2 letters x 2 behaviours
    loaded = PCAView.load(a.save(tmp_path / "pca"))
    assert torch.equal(loaded.coords, a.coords) and loaded.letters == a.letters


def test_pca_view_errors():
    with pytest.raises(TypeError, match="AnswerActivations"):
        pca_view(torch.zeros(3, 4))


# --------------------------------------------------------------------------- CAA vector and steer


def test_caa_vector_is_mean_difference(model, ab):
    v = caa_vector(model, ab, 1, progress=False)
    ref = _reference_acts(model, ab, 1)
    expected = ref[ab.labels == 1].mean(0) - ref[ab.labels == 0].mean(0)
    torch.testing.assert_close(v.vector, expected, atol=1e-5, rtol=1e-5)
    # = the mean over triples of (behaviour prompt - opposite prompt): the letter cancels
    torch.testing.assert_close(v.vector, (ref[0::2] - ref[1::2]).mean(0), atol=1e-5, rtol=1e-5)
    assert v.layer == 1 and v.site == "resid_post" and v.n == ab.n_triples
    with pytest.raises(TypeError, match="one int"):
        caa_vector(model, ab, [0, 1])


def test_steer_adds_the_vector(model, ab):
    toks = ab.tokens[0][None]
    vec = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    name = "blocks.1.hook_resid_pre"  # = resid_post of layer 0
    base_logits, base = model.run_with_cache(toks, names_filter=[name])
    with steer(model, vec, 2.5, layers=0):
        _, steered = model.run_with_cache(toks, names_filter=[name])
    torch.testing.assert_close(steered[name], base[name] + 2.5 * vec, atol=1e-5, rtol=1e-5)
    with steer(model, vec, 0.0, layers=[0, 1]):
        torch.testing.assert_close(model(toks), base_logits)
    # hooks are gone after the block, also after an exception
    with pytest.raises(RuntimeError, match="boom"), steer(model, vec, 3.0, layers=1):
        raise RuntimeError("boom")
    assert torch.equal(model(toks), base_logits)


def test_steer_generation(model):
    sv = SteeringVector(vector=torch.ones(model.cfg.d_model) * 50, layer=1)
    kw = {"max_new_tokens": 6, "do_sample": False, "verbose": False}
    plain = model.generate("I thought this movie was", **kw)
    with steer(model, sv, 1.0):
        steered = model.generate("I thought this movie was", **kw)
    assert steered != plain
    assert model.generate("I thought this movie was", **kw) == plain


def test_steer_errors(model):
    with pytest.raises(ValueError, match="d_model"):
        with steer(model, torch.zeros(3), 1.0, layers=0):
            pass
    with pytest.raises(ValueError, match="layers"):
        with steer(model, torch.zeros(model.cfg.d_model), 1.0):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with steer(model, torch.zeros(model.cfg.d_model), 1.0, layers=9):
            pass


def test_behaviour_logit_diff(model, ab):
    mv = toy_movie_review(model, "test")
    ld = behaviour_logit_diff(model, mv, batch_size=5)
    logits = model(mv.clean_tokens)[:, -1]
    pos = mv.answers[:, :, 0].where(mv.labels[:, None] == 1, mv.answers[:, :, 1])
    neg = mv.answers[:, :, 1].where(mv.labels[:, None] == 1, mv.answers[:, :, 0])
    ref = logits.gather(1, pos).mean(1) - logits.gather(1, neg).mean(1)
    torch.testing.assert_close(ld, ref, atol=1e-4, rtol=1e-4)
    # on A/B prompts: logit(behaviour letter) - logit(opposite letter) at the open prompt
    ld_ab = behaviour_logit_diff(model, ab, batch_size=2)
    for i, toks in enumerate(ab.open_tokens):
        with torch.no_grad():
            last = model(toks[None])[0, -1]
        b, o = (0, 1) if ab.behaviour_letters[i] == "A" else (1, 0)
        assert ld_ab[i] == pytest.approx(float(last[ab.letter_ids[b]] - last[ab.letter_ids[o]]), abs=1e-4)


def test_evaluate_steering_activation(model, ab, tmp_path):
    v = caa_vector(model, ab, 0, progress=False)
    mv = toy_movie_review(model, "test")
    curve = evaluate_steering(model, mv, v, [-2.0, 0.0, 2.0], progress=False)
    assert curve.per_example.shape == (3, mv.batch) and curve.kind == "activation"
    torch.testing.assert_close(curve.per_example[1], behaviour_logit_diff(model, mv))
    with steer(model, v, 2.0):
        torch.testing.assert_close(curve.per_example[2], behaviour_logit_diff(model, mv))
    assert isinstance(curve.plot(), matplotlib.figure.Figure)
    assert list(curve.to_dataframe()["coeff"]) == [-2.0, 0.0, 2.0]
    loaded = SteeringCurve.load(curve.save(tmp_path / "curve"))
    assert torch.equal(loaded.per_example, curve.per_example) and loaded.coeffs == curve.coeffs
    with pytest.raises(ValueError, match="coeffs is empty"):
        evaluate_steering(model, mv, v, [], progress=False)


def test_evaluate_steering_backends_agree(model, ab):
    """The fast backend gives the hooks backend's curve (and steering does not spoil the fast
    runner's first-pass checks); a ChoiceDataset's padded prompts refuse "fast"."""
    v = caa_vector(model, ab, 1, progress=False)
    mv = toy_movie_review(model, "test")
    fast = evaluate_steering(model, mv, v, [-2.0, 0.0, 2.0], progress=False, backend="fast", batch_size=5)
    hooks = evaluate_steering(model, mv, v, [-2.0, 0.0, 2.0], progress=False, backend="hooks")
    torch.testing.assert_close(fast.per_example, hooks.per_example, atol=1e-5, rtol=0)
    assert (fast.per_example[2] - fast.per_example[1]).abs().max() > 1e-3  # the vector does something
    with pytest.raises(ValueError, match="padded"):
        evaluate_steering(model, ab, v, [1.0], progress=False, backend="fast")
    torch.testing.assert_close(behaviour_logit_diff(model, mv, backend="fast"),
                               behaviour_logit_diff(model, mv, backend="hooks"), atol=1e-5, rtol=0)


def test_steering_curve_monotonic():
    def curve(means):
        return SteeringCurve(per_example=torch.tensor(means)[:, None], axes=("coeff",), labels={"coeff": [-1.0, 0.0, 1.0]},
                             kind="x", metric="m")

    assert curve([-1.0, 0.0, 2.0]).monotonic() == 1
    assert curve([2.0, 0.0, -1.0]).monotonic() == -1
    assert curve([0.0, 1.0, 0.5]).monotonic() == 0


# --------------------------------------------------------------------------- weight space


def test_clone_model_is_independent():
    m = tiny("gpt2", n_ctx=512)
    toks = m.to_tokens("I thought this movie was good")
    with torch.enable_grad():
        ref = m(toks)  # a forward with autograd leaves tensors and hooks wired on the bridge
    c = clone_model(m)
    assert torch.equal(c(toks), ref)
    with torch.no_grad():
        for p in parameters(c).values():
            p.mul_(1.5)
    fired = []
    with m.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: fired.append(1))]):
        changed = c(toks)
    assert not fired and not torch.allclose(changed, ref)
    assert torch.equal(m(toks), ref)
    clone_model(m)  # the original can still be copied


def test_finetune_leaves_original_and_is_seeded(model):
    before = {k: v.detach().clone() for k, v in parameters(model).items()}
    kw = {"steps": 3, "lr": 1e-3, "batch_size": 2, "progress": False}
    a = finetune(model, POS_TEXTS, seed=1, **kw)
    b = finetune(model, POS_TEXTS, seed=1, **kw)
    c = finetune(model, POS_TEXTS, seed=2, **kw)
    after = parameters(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    pa, pb, pc = parameters(a), parameters(b), parameters(c)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(pa[k], before[k]) for k in pa)
    assert any(not torch.equal(pa[k], pc[k]) for k in pa)
    log = a.finetune_log
    assert len(log["losses"]) == 3 and log["seed"] == 1
    with pytest.raises(ValueError, match="texts"):
        finetune(model, [], progress=False)
    with pytest.raises(ValueError, match="steps"):
        finetune(model, POS_TEXTS, steps=0, progress=False)


def test_finetune_learns(model, tuned_pair):
    pos, _ = tuned_pair
    losses = pos.finetune_log["losses"]
    assert losses[-1] < losses[0] - 1.0


def test_task_and_contrastive_vectors(model, tuned_pair):
    pos, neg = tuned_pair
    tp, tn = task_vector(model, pos), task_vector(model, neg)
    w = contrastive_weight_vector(model, pos, neg)
    for k in w.tensors:
        torch.testing.assert_close(w.tensors[k], tp.tensors[k] - tn.tensors[k], atol=1e-6, rtol=0)
    toks = model.to_tokens("I thought this movie was")
    with apply_weights(model, tp, 1.0):
        torch.testing.assert_close(model(toks), pos(toks), atol=1e-4, rtol=1e-4)
    # arithmetic and norms
    assert (tp - tn).cosine(w) == pytest.approx(1.0, abs=1e-6)
    assert (2 * w).norm() == pytest.approx(2 * w.norm(), rel=1e-6)
    flat = torch.cat([t.flatten() for t in w.tensors.values()]).double()
    assert w.norm() == pytest.approx(float(flat.norm()), rel=1e-9)
    assert list(w.group_norms()) == ["embed", "L0", "L1", "final"]


def test_apply_weights_restores_bit_exactly(model, tuned_pair):
    pos, neg = tuned_pair
    w = contrastive_weight_vector(model, pos, neg)
    before = {k: v.detach().clone() for k, v in parameters(model).items()}
    with pytest.raises(RuntimeError, match="inside"):
        with apply_weights(model, w, 0.37):
            now = parameters(model)
            for k, v in w.tensors.items():
                torch.testing.assert_close(now[k], before[k] + 0.37 * v)
            raise RuntimeError("fails inside the block")
    after = parameters(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with apply_weights(model, w, -3.0):
        pass
    assert all(torch.equal(before[k], parameters(model)[k]) for k in before)
    with pytest.raises(ValueError, match="does not have"):
        with apply_weights(model, {"nope.weight": torch.zeros(2)}, 1.0):
            pass
    name = next(iter(w.tensors))
    with pytest.raises(ValueError, match="shape"):
        with apply_weights(model, {name: torch.zeros(2)}, 1.0):
            pass
    assert all(torch.equal(before[k], parameters(model)[k]) for k in before)


def test_weight_steering_is_monotonic(model, tuned_pair, tmp_path):
    """A contrastive weight vector from a positive and a negative fine-tune moves the
    ToyMovieReview logit difference up for k > 0 and down for k < 0."""
    pos, neg = tuned_pair
    w = contrastive_weight_vector(model, pos, neg)
    mv = toy_movie_review(model, "train")
    curve = evaluate_steering(model, mv, w, [-1.0, -0.5, 0.0, 0.5, 1.0], progress=False)
    assert curve.kind == "weight" and curve.monotonic() == 1
    base = float(curve.values[2])
    assert curve.values[3] > base > curve.values[1]
    torch.testing.assert_close(curve.per_example[2], behaviour_logit_diff(model, mv))


def test_monitor_signs_and_reference(model, tuned_pair, tmp_path):
    pos, neg = tuned_pair
    w = contrastive_weight_vector(model, pos, neg)
    kw = {"steps": 6, "lr": 3e-3, "batch_size": 3, "progress": False, "seed": 5}
    # fresh fine-tunes on other texts and another seed than the ones that made w
    mon_pos, mon_neg = WeightMonitor(model, w, every=2, name="pos"), WeightMonitor(model, w, every=2)
    pos2 = finetune(model, POS_TEXTS[3:] + ["The film was wonderful , I admired it ."], callback=mon_pos, **kw)
    finetune(model, NEG_TEXTS[3:] + ["The film was awful , I hated it ."], callback=mon_neg, **kw)
    rp, rn = mon_pos.result(), mon_neg.result()
    assert rp.steps == [2, 4, 6] and rp.groups == ["embed", "L0", "L1", "final"]
    assert (rp.overall > 0).all() and (rn.overall < 0).all()
    # monitor() on the finished model = the callback's last row = cosine computed by hand
    direct = monitor(model, {6: pos2, 7: task_vector(model, pos2)}, w, progress=False)
    torch.testing.assert_close(direct.cosine[0], rp.cosine[-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(direct.cosine[1], direct.cosine[0], atol=1e-6, rtol=0)
    tv = task_vector(model, pos2)
    names = [k for k in w.tensors if layer_group(k) == "L1"]
    u = torch.cat([tv.tensors[k].flatten() for k in names]).double()
    b = torch.cat([w.tensors[k].flatten() for k in names]).double()
    assert float(direct.cosine[0, 2]) == pytest.approx(float(u @ b / (u.norm() * b.norm())), abs=1e-6)
    assert float(direct.overall[0]) == pytest.approx(tv.cosine(w), abs=1e-6)
    assert isinstance(rp.plot(), matplotlib.figure.Figure)
    assert set(rp.to_dataframe()["group"]) == {"embed", "L0", "L1", "final", "all"}
    loaded = MonitorResult.load(rp.save(tmp_path / "mon"))
    assert torch.equal(loaded.cosine, rp.cosine) and loaded.steps == rp.steps


def test_effective_rank_values():
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3)) == 0.0
    # two equal singular values and one twice as large: exp(entropy of [1/2, 1/4, 1/4])
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(math.exp(1.5 * math.log(2)))


def test_diff_anatomy(model, tuned_pair, tmp_path):
    params = parameters(model)
    g = torch.Generator().manual_seed(0)
    upd = {k: torch.zeros_like(v) for k, v in params.items()}
    q = "model.layers.0.self_attn.q_proj.weight"
    o = "model.layers.1.self_attn.o_proj.weight"
    upd[q] = torch.outer(torch.randn(params[q].shape[0], generator=g), torch.randn(params[q].shape[1], generator=g))
    upd[o] = torch.eye(*params[o].shape) * 0.1
    an = diff_anatomy(model, WeightVector(upd), progress=False)
    df = an.to_dataframe().set_index("name")
    assert df.loc[q, "effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert df.loc[o, "effective_rank"] == pytest.approx(min(params[o].shape), rel=1e-4)
    assert df.loc[q, "fro_norm"] == pytest.approx(float(upd[q].norm()), rel=1e-5)
    assert df.loc[o, "rel_norm"] == pytest.approx(float(upd[o].norm() / params[o].detach().norm()), rel=1e-5)
    assert math.isnan(df.loc["model.layers.0.input_layernorm.weight", "effective_rank"])
    assert df.loc[q, "kind"] == "self_attn.q_proj" and df.loc[q, "group"] == "L0"
    # model path = WeightVector path
    pos, _ = tuned_pair
    a, b = diff_anatomy(model, pos, progress=False), diff_anatomy(model, task_vector(model, pos), progress=False)
    torch.testing.assert_close(a.fro_norm, b.fro_norm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.effective_rank, b.effective_rank, atol=1e-3, rtol=1e-3, equal_nan=True)
    assert isinstance(a.plot(), matplotlib.figure.Figure)
    loaded = DiffAnatomy.load(a.save(tmp_path / "anat"))
    assert loaded.names == a.names and loaded.shapes == a.shapes


def test_weight_vector_save_load(model, tuned_pair, tmp_path):
    pos, neg = tuned_pair
    w = contrastive_weight_vector(model, pos, neg)
    loaded = WeightVector.load(w.save(tmp_path / "w"))
    assert list(loaded.tensors) == list(w.tensors)
    assert all(torch.equal(loaded.tensors[k], w.tensors[k]) for k in w.tensors)
    assert isinstance(w.plot(), matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="different parameters"):
        w + WeightVector({"x": torch.zeros(1)})
