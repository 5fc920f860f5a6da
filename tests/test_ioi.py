"""The IOI dataset (Wang et al. 2022): prompts, ABC corruptions, positions, seeding."""

import pytest
import torch

from mechlens.data import ioi
from mechlens.metrics import logit_diff

TINY_NAMES = ["John", "Mary", "Anna", "Tom", "Question"]  # one-token words of the tiny tokenizer


def _check_structure(model, ds):
    toks = ds.clean_tokens
    b = ds.batch
    assert ds.corrupt_tokens.shape == toks.shape
    rows = torch.arange(b)
    io, s1, s2 = (ds.positions[k] for k in ("IO", "S1", "S2"))
    assert (ds.positions["END"] == ds.seq_len - 1).all()
    # IO and S tokens at the named positions, and the answers are (IO, S)
    assert torch.equal(toks[rows, io], ds.answers[:, 0, 0])
    assert torch.equal(toks[rows, s1], ds.answers[:, 0, 1])
    assert torch.equal(toks[rows, s2], ds.answers[:, 0, 1])
    assert (io != s1).all() and (s2 > torch.maximum(io, s1)).all()
    # corrupt prompts differ exactly at the three name slots, by names not in the clean prompt
    diff = ds.clean_tokens != ds.corrupt_tokens
    assert (diff.sum(1) == 3).all()
    for i in range(b):
        slots = diff[i].nonzero().flatten()
        assert set(slots.tolist()) == {int(io[i]), int(s1[i]), int(s2[i])}
        new = set(ds.corrupt_tokens[i, slots].tolist())
        assert len(new) == 3 and not new & set(ds.answers[i, 0].tolist())
    for i in range(b):
        st = model.to_str_tokens(ds.clean_prompts[i])
        assert st[int(io[i])].strip() in ds.clean_prompts[i]


def test_ioi_tiny_builds(tiny_gpt2):
    ds = ioi(tiny_gpt2, n_prompts=8, names=TINY_NAMES, seed=0)
    assert ds.batch == 8 and ds.position_names()[:4] == ["IO", "S1", "S2", "END"]
    _check_structure(tiny_gpt2, ds)
    assert {o for o in ds.meta["order"]} == {"ABBA", "BABA"}


def test_ioi_seeded(tiny_gpt2):
    a = ioi(tiny_gpt2, n_prompts=6, names=TINY_NAMES, seed=3)
    b = ioi(tiny_gpt2, n_prompts=6, names=TINY_NAMES, seed=3)
    c = ioi(tiny_gpt2, n_prompts=6, names=TINY_NAMES, seed=4)
    assert a.clean_prompts == b.clean_prompts and a.corrupt_prompts == b.corrupt_prompts
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_ioi_bad_input(tiny_gpt2):
    with pytest.raises(ValueError, match="names"):
        ioi(tiny_gpt2, names=["John", "Mary", "Anna", "Tom", "Zebedeeqx"])  # last is not one token
    with pytest.raises(ValueError, match="n_prompts"):
        ioi(tiny_gpt2, n_prompts=0, names=TINY_NAMES)
    with pytest.raises(ValueError, match="template"):
        ioi(tiny_gpt2, templates=["When {A} and {C} went, {B} gave to"], names=TINY_NAMES)
    with pytest.raises(ValueError, match="orders"):
        ioi(tiny_gpt2, orders=["AB"], names=TINY_NAMES)


def test_ioi_drops_templates_of_other_lengths(tiny_gpt2):
    tpls = ["When {A} and {B} went to the party, {C} gave it to", "When {A} and {B} went, {C} gave it to"]
    with pytest.warns(UserWarning, match="dropped 1 template"):
        ds = ioi(tiny_gpt2, n_prompts=4, templates=tpls, names=TINY_NAMES)
    assert ds.meta["templates"] == [tpls[0]]


@pytest.mark.slow
def test_ioi_smollm2_structure(smollm2):
    ds = ioi(smollm2, n_prompts=16, seed=0)
    assert len(ds.meta["templates"]) == 4 and len(ds.meta["names"]) == 8
    _check_structure(smollm2, ds)
    assert ds.clean_prompts[0].startswith("When") and ds.clean_prompts[0].endswith("gave a drink to")


@pytest.mark.slow
def test_ioi_smollm2_solves_it(smollm2):
    ds = ioi(smollm2, n_prompts=32, seed=0)
    with torch.no_grad():
        ld = logit_diff(smollm2(ds.clean_tokens), ds.answers)
        ld_corrupt = logit_diff(smollm2(ds.corrupt_tokens), ds.answers)
    assert ld.mean() > 2.0, ld
    assert (ld > 0).float().mean() == 1.0, ld
    assert ld_corrupt.abs().mean() < ld.mean()  # ABC prompts carry no IO/S information
