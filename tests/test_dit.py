"""Diff interpretation tuning on a tiny Llama-shaped model (seconds), plus one smollm2 check."""

from __future__ import annotations

import pytest
import torch

from mechlens import dit
from mechlens.dit.core import _deltas
from mechlens.models import tiny
from mechlens.steering.weights import parameters

TOPICS2 = ["cooking", "music"]
FAST = dict(topics=TOPICS2, steps=2, n_texts=4, n_plain=1, batch_size=2, group_size=4, progress=False)


@pytest.fixture(scope="module")
def model():
    return tiny("llama", n_layers=2, seed=0)


@pytest.fixture(scope="module")
def family(model, tmp_path_factory):
    return dit.make_diffs(model, 8, cache=tmp_path_factory.mktemp("dit"), **FAST)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in parameters(model).items()}


def _same(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_copy_matches_bridge_and_shares_nothing(model):
    hf = dit.hf_copy(model)
    toks = model.to_tokens("I thought this movie was good")
    with torch.no_grad():
        assert torch.equal(model(toks), hf(input_ids=toks).logits)
    ptrs = {p.data_ptr() for p in parameters(model).values()}
    assert not ptrs & {p.data_ptr() for p in hf.parameters()}


def test_unsupported_model_is_refused():
    with pytest.raises(TypeError, match="Hugging Face parameter names"):
        dit.hf_copy(tiny("gpt2", n_layers=1, seed=0))
    with pytest.raises(TypeError, match="TransformerBridge"):
        dit.make_diffs(object(), 2)


def test_differences_reproducible_under_seed(model, family):
    again = dit.make_diffs(model, 8, cache=False, **FAST)
    assert again.topics == family.topics and again.codes == family.codes
    for m in family.modules:
        assert torch.equal(again.A[m], family.A[m]) and torch.equal(again.B[m], family.B[m])
    other = dit.make_diffs(model, 8, cache=False, seed=1, **FAST)
    assert not torch.equal(other.B[family.modules[0]], family.B[family.modules[0]])
    # trained: every difference moved away from zero and the loss went down on average
    assert all(float(family.B[m][i].abs().sum()) > 0 for m in family.modules for i in range(len(family)))
    assert set(family.topics) == set(TOPICS2) and len(set(family.codes)) == len(family)


def test_cache_reuse(model, tmp_path):
    first = dit.make_diffs(model, 4, cache=tmp_path, **FAST)
    assert first.settings["from_cache"] is False
    assert len(list(tmp_path.glob("diffs-*"))) == 1
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind
    second = dit.make_diffs(model, 4, cache=tmp_path, **FAST)
    assert second.settings["from_cache"] is True
    assert all(torch.equal(first.B[m], second.B[m]) for m in first.modules)
    third = dit.make_diffs(model, 4, cache=tmp_path, **{**FAST, "steps": 3})  # new settings: new entry
    assert third.settings["from_cache"] is False
    assert len(list(tmp_path.glob("diffs-*"))) == 2


def test_batched_training_equals_one_at_a_time(model):
    together = dit.make_diffs(model, 4, cache=False, **FAST)
    alone = dit.make_diffs(model, 4, cache=False, **{**FAST, "group_size": 1})
    for m in together.modules:
        torch.testing.assert_close(together.B[m], alone.B[m], rtol=1e-4, atol=1e-6)


def test_weight_vector_and_apply_match_the_hooks(model, family):
    wv = family.weight_vector(3)
    assert list(wv.tensors) == [f"{m}.weight" for m in family.modules]
    before = _snapshot(model)
    toks = model.to_tokens("I thought this movie was good")
    hf = dit.hf_copy(model)
    mods = {m: hf.get_submodule(m) for m in family.modules}
    with torch.no_grad():
        with family.apply(model, 3):
            merged = model(toks)
        with _deltas(mods, family.A, family.B, torch.tensor([3]), family.scale):
            hooked = hf(input_ids=toks).logits
        base = model(toks)
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, base)
    assert _same(before, _snapshot(model))


def test_split_is_disjoint_and_seeded(family):
    train, held = dit.split(family, 3, seed=0)
    assert not set(train) & set(held) and sorted(train + held) == list(range(len(family)))
    assert dit.split(family, 3, seed=0) == (train, held)
    with pytest.raises(ValueError, match="n_heldout"):
        dit.split(family, len(family))


def test_train_and_evaluate_never_touch_heldout_or_weights(model, family):
    train, held = dit.split(family, 3, seed=0)
    base = _snapshot(model)
    fam_copy = {m: (family.A[m].clone(), family.B[m].clone()) for m in family.modules}
    ad = dit.train_adapter(model, family, train, heldout=held, steps=4, batch_size=4, eval_every=2, progress=False)
    assert set(ad.trained_on) <= set(train) and not set(ad.trained_on) & set(held)
    assert set(ad.trained_on) == set(train)  # 16 draws run through all 5 training differences
    assert ad.curve["step"] == [0, 2, 4] and len(ad.losses) == 4
    res = dit.evaluate(model, family, ad, held, max_new_tokens=2, blackbox_tokens=2, progress=False)
    assert _same(base, _snapshot(model))
    for m in family.modules:
        assert torch.equal(family.A[m], fam_copy[m][0]) and torch.equal(family.B[m], fam_copy[m][1])
    assert res.diff_index == held and res.methods == dit.METHODS
    df = res.to_dataframe()
    assert list(df["method"]) == [*dit.METHODS, "chance"]
    assert df.loc[df["method"] == "chance", "exact"].item() == pytest.approx(0.5)
    assert "DITResult" in repr(res)
    with pytest.raises(ValueError, match="used to train"):
        dit.evaluate(model, family, ad, train[:1], progress=False)
    with pytest.raises(ValueError, match="overlap"):
        dit.train_adapter(model, family, train, heldout=train[:1], steps=1, progress=False)


def test_adapter_disabled_changes_nothing(model, family):
    from peft import set_peft_model_state_dict

    from mechlens.dit.core import _peft_model

    train, held = dit.split(family, 3, seed=0)
    ad = dit.train_adapter(model, family, train, steps=3, batch_size=4, lr=1e-2, progress=False)
    assert any(float(v.abs().sum()) > 0 for k, v in ad.lora.items() if "lora_B" in k)
    toks = model.to_tokens("Question: What topic were you trained on?\nAnswer:")
    idx = torch.tensor([held[0]])
    plain = dit.hf_copy(model)
    mods = {m: plain.get_submodule(m) for m in family.modules}
    with torch.no_grad(), _deltas(mods, family.A, family.B, idx, family.scale):
        want = plain(input_ids=toks).logits
    hf = dit.hf_copy(model)
    mods = {m: hf.get_submodule(m) for m in family.modules}
    pm = _peft_model(hf, ad.config, 0)
    set_peft_model_state_dict(pm, ad.lora)
    with torch.no_grad(), _deltas(mods, family.A, family.B, idx, family.scale):
        with pm.disable_adapter():
            off = pm(input_ids=toks).logits
        on = pm(input_ids=toks).logits
    assert torch.equal(off, want)
    assert not torch.equal(on, want)


def test_result_and_adapter_round_trip(model, family, tmp_path):
    train, held = dit.split(family, 3, seed=0)
    ad = dit.train_adapter(model, family, train, steps=2, batch_size=2, progress=False)
    res = dit.evaluate(model, family, ad, held, methods=["dit", "no_adapter"], max_new_tokens=2, progress=False)
    back = dit.DITResult.load(res.save(tmp_path / "res"))
    assert back.answers == res.answers and all(torch.equal(back.exact[m], res.exact[m]) for m in res.methods)
    assert back.to_dataframe().equals(res.to_dataframe())
    ad2 = dit.DITAdapter.load(ad.save(tmp_path / "ad"))
    assert ad2.trained_on == ad.trained_on and all(torch.equal(ad2.lora[k], v) for k, v in ad.lora.items())
    fig = res.plot()
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_score_answer():
    assert dit.score_answer(" cooking.", "cooking") == (True, True)
    assert dit.score_answer(" Cooking, mostly", "cooking") == (True, True)
    assert dit.score_answer(" train travel", "trains") == (False, True)
    assert dit.score_answer(" music", "cooking") == (False, False)
    assert dit.score_answer(" the oven was hot", "cooking", kind="mention") == (False, True)
    assert dit.score_answer(" I love cooking", "cooking", kind="mention") == (True, True)
    with pytest.raises(ValueError, match="kind"):
        dit.score_answer("x", "cooking", kind="other")


def test_bad_inputs_name_the_argument(model, family):
    with pytest.raises(ValueError, match="n_diffs"):
        dit.make_diffs(model, 0, cache=False, progress=False)
    with pytest.raises(ValueError, match="topics"):
        dit.make_diffs(model, 2, topics=["nope"], cache=False, progress=False)
    with pytest.raises(ValueError, match="lr"):
        dit.make_diffs(model, 2, lr=-1.0, cache=False, progress=False)
    with pytest.raises(ValueError, match="layers"):
        dit.make_diffs(model, 2, layers=[7], cache=False, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        dit.train_adapter(model, family, [0], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="train is empty"):
        dit.train_adapter(model, family, [], progress=False)
    with pytest.raises(IndexError):
        family.weight_vector(99)


def test_adapter_training_lowers_the_answer_loss(model):
    """A sanity check only: on a random tiny model the adapter cannot tell the topics apart
    (the answer is several tokens of a random model), but it learns the answer format."""
    fam = dit.make_diffs(model, 2, cache=False, **{**FAST, "steps": 4, "lr": 0.1})
    ad = dit.train_adapter(model, fam, [0, 1], steps=30, batch_size=4, lr=1e-2, progress=False)
    assert ad.losses[-1] < ad.losses[0] - 0.5


@pytest.mark.slow
def test_smollm2_family_step_and_weights_untouched(smollm2, tmp_path):
    before = {k: v.detach().clone() for k, v in parameters(smollm2).items() if "layers.2" in k}
    fam = dit.make_diffs(smollm2, 2, topics=TOPICS2, steps=1, n_texts=2, batch_size=1, layers=[20], cache=tmp_path,
                         progress=False)
    assert fam.modules == ["model.layers.20.mlp.down_proj"]
    ad = dit.train_adapter(smollm2, fam, [0], steps=1, batch_size=1, rank=2, target_modules=["o_proj"],
                           progress=False)
    res = dit.evaluate(smollm2, fam, ad, [1], methods=["dit"], max_new_tokens=2, progress=False)
    assert len(res.answers["dit"]) == 1
    after = parameters(smollm2)
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_evaluate_on_another_family(model, family):
    """Differences of topics the adapter never saw: indices are not checked against training."""
    train, _ = dit.split(family, 3, seed=0)
    ad = dit.train_adapter(model, family, train, steps=1, batch_size=2, progress=False)
    other = dit.make_diffs(model, 2, cache=False, seed=1, **{**FAST, "topics": ["space", "chess"]})
    res = dit.evaluate(model, other, ad, [0, 1], methods=["dit"], max_new_tokens=1, progress=False)
    assert res.topics == other.topics[:2] and res.n_topics == 2


def test_adapter_training_shows_no_upstream_deprecation_warning(model, family):
    """peft reads transformers' deprecated ``is_gradient_checkpointing``; a user's notebook
    should not show that FutureWarning on every adapter."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dit.train_adapter(model, family, [0], steps=1, batch_size=1, progress=False)
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]
