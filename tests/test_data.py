"""Contrast datasets: pairing, positions, validation."""

import pytest
import torch

from mechlens import metrics
from mechlens.baseline import run_logit_diffs
from mechlens.data import ContrastDataset, sst, toy_mood_story, toy_movie_review
from mechlens.data.sentiment import NEGATIVE_VERBS, POSITIVE_VERBS


def _check_movie_pairs(model, ds):
    assert ds.batch % 2 == 0 and ds.batch > 0
    # interleaved positive/negative, corrupt = shifted by one, opposite labels
    assert ds.labels.tolist() == [1, 0] * (ds.batch // 2)
    assert ds.corrupt_prompts == ds.clean_prompts[1:] + ds.clean_prompts[:1]
    adj, vrb = ds.positions["ADJ"], ds.positions["VRB"]
    for i in range(ds.batch):
        diff = (ds.clean_tokens[i] != ds.corrupt_tokens[i]).nonzero().flatten().tolist()
        assert diff == sorted({int(adj[i]), int(vrb[i])}), ds.clean_prompts[i]
        partner = (i + 1) % ds.batch
        assert ds.labels[partner] != ds.labels[i]
        strs = model.to_str_tokens(ds.clean_tokens[i])
        assert strs[int(ds.positions["COMMA"][i])] == ","
        assert strs[int(adj[i])].strip() == ds.meta["adjectives"][i]
        verbs = POSITIVE_VERBS if ds.labels[i] == 1 else NEGATIVE_VERBS
        assert strs[int(vrb[i])].strip() in verbs
    assert (ds.positions["END"] == ds.seq_len - 1).all()
    # the answers are ordered (correct, incorrect) for the clean prompt
    great = model.to_single_token(" great")
    first = ds.answers[:, 0, 0]
    assert ((first == great) == (ds.labels == 1)).all()


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_toy_movie_review_on_tiny_tokenizer(tiny_gpt2, split):
    ds = toy_movie_review(tiny_gpt2, split)
    _check_movie_pairs(tiny_gpt2, ds)
    assert ds.meta["n_dropped"] == 0  # every word is one token for the tiny tokenizer
    assert ds.n_pairs == 5


def test_toy_movie_review_smollm2(smollm2, movie_train, movie_test):
    for ds in (movie_train, movie_test):
        _check_movie_pairs(smollm2, ds)
    # words that are several tokens for this tokenizer are dropped and counted
    dropped = movie_train.meta["dropped"]
    assert "disgusting" in dropped["negative adjectives"]
    assert movie_train.meta["n_dropped"] == sum(len(v) for v in dropped.values()) > 0
    for words in dropped.values():
        for w in words:
            if "/" not in w:
                assert smollm2.to_tokens(" " + w, prepend_bos=False).shape[-1] > 1


def test_smollm2_does_the_task(smollm2, movie_test):
    """The issue's acceptance numbers: clean LD > 1 and centred accuracy >= 0.9 on test."""
    clean = run_logit_diffs(smollm2, movie_test.clean_tokens, movie_test.answers)
    corrupt = run_logit_diffs(smollm2, movie_test.corrupt_tokens, movie_test.answers)
    assert clean.mean() > 1.0
    assert metrics.accuracy(clean, movie_test.labels) >= 0.9
    assert corrupt.mean() < 0
    # raw logit differences are biased towards positive words: centring matters
    _, bias = metrics.centre(clean, movie_test.labels)
    assert bias > 0.3


def test_filler_inserts_neutral_context(tiny_gpt2):
    base = toy_movie_review(tiny_gpt2, "train")
    long = toy_movie_review(tiny_gpt2, "train", filler=14)
    assert long.seq_len - base.seq_len >= 14
    assert (long.positions["ADJ"] == base.positions["ADJ"]).all()
    assert (long.positions["COMMA"] == base.positions["COMMA"]).all()
    assert "Conclusion" in long.clean_prompts[0].split(long.meta["filler_text"])[1]


def test_toy_mood_story(smollm2):
    ds = toy_mood_story(smollm2)
    assert ds.batch >= 8
    for i in range(ds.batch):
        strs = smollm2.to_str_tokens(ds.clean_tokens[i])
        assert strs[int(ds.positions["COMMA"][i])] == ","
        assert strs[-1].strip() == "feels"
        diff = (ds.clean_tokens[i] != ds.corrupt_tokens[i]).nonzero().flatten().tolist()
        assert diff == [int(ds.positions["QUERY"][i])]
        q = strs[int(ds.positions["QUERY"][i])].strip()
        a = strs[int(ds.positions["NAME_A"][i])].strip()
        b = strs[int(ds.positions["NAME_B"][i])].strip()
        assert q in (a, b) and a != b
    assert set(ds.labels.tolist()) == {0, 1}


def test_sst_from_tsv(tiny_gpt2, tmp_path):
    rows = [
        ("a good film , and a great cast", 1),
        ("a bad film , and a awful cast", 0),
        ("the plot was nice", 1),
        ("the plot was dull", 0),
        ("a lovely , warm story", 1),
        ("a grim , sour story", 0),
    ]
    path = tmp_path / "mini.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in rows))
    ds = sst(tiny_gpt2, path, answers=[(" good", " bad")])
    assert ds.labels.tolist() == [1, 0] * (ds.batch // 2)
    for i in range(ds.batch):
        strs = tiny_gpt2.to_str_tokens(ds.clean_tokens[i])
        assert ds.masks["COMMA"][i].tolist() == [s.strip() == "," for s in strs]
    # the corrupt prompt of each pair is its partner's clean prompt
    assert ds.corrupt_prompts[0] == ds.clean_prompts[1]
    with pytest.raises(ValueError, match="equal token length"):
        sst(tiny_gpt2, path, length=2)


def test_from_prompts_and_bad_input(tiny_gpt2):
    m = tiny_gpt2
    clean = ["I thought this movie was great", "I thought this movie was bad"]
    corrupt = ["I thought this movie was bad", "I thought this movie was great"]
    ds = ContrastDataset.from_prompts(
        m, clean, corrupt, [[(" good", " bad")], [(" bad", " good")]],
        positions={"ADJ": -1, "MOVIE": "movie"}, labels=[1, 0],
    )
    assert ds.positions["ADJ"].tolist() == [ds.seq_len - 1] * 2
    assert m.to_str_tokens(ds.clean_tokens[0])[int(ds.positions["MOVIE"][0])] == " movie"
    # slicing, indexing, device moves, swapping
    one = ds[1]
    assert len(one) == 1 and one.clean_prompts == [clean[1]] and one.labels.tolist() == [0]
    assert ds[torch.tensor([True, False])].clean_prompts == [clean[0]]
    assert ds.to("cpu").fingerprint() == ds.fingerprint()
    sw = ds.swapped()
    assert torch.equal(sw.clean_tokens, ds.corrupt_tokens) and sw.labels.tolist() == [0, 1]
    assert torch.equal(sw.answers, ds.answers.flip(-1))
    assert ds.position_mask("ADJ").sum() == 2 and ds.position_mask("all").all()

    with pytest.raises(ValueError, match="equal token length"):
        ContrastDataset.from_prompts(m, ["I thought"], ["I thought this"], [(" good", " bad")])
    with pytest.raises(ValueError, match="is 2 tokens|tokens for this tokenizer"):
        ContrastDataset.from_prompts(m, clean, corrupt, [(" good", " goodbad")])
    with pytest.raises(ValueError, match="empty"):
        ContrastDataset.from_prompts(m, [], [], [(" good", " bad")])
    with pytest.raises(ValueError, match="2 prompts but corrupt has 1"):
        ContrastDataset.from_prompts(m, clean, corrupt[:1], [(" good", " bad")])
    with pytest.raises(ValueError, match="not a token"):
        ContrastDataset.from_prompts(m, clean, corrupt, [(" good", " bad")], positions={"X": "zebra"})
    with pytest.raises(ValueError, match="different token lengths"):
        ContrastDataset.from_prompts(m, ["I thought", "I thought this"], ["I thought", "I thought this"], [(" good", " bad")])
    with pytest.raises(ValueError, match="outside"):
        ContrastDataset(ds.clean_tokens, ds.corrupt_tokens, ds.answers, positions={"X": torch.tensor([0, 99])})
    with pytest.raises(ValueError, match="differ in shape"):
        ContrastDataset(ds.clean_tokens, ds.corrupt_tokens[:, :-1], ds.answers)
    with pytest.raises(ValueError, match="non-empty"):
        ContrastDataset(ds.clean_tokens[:0], ds.corrupt_tokens[:0], ds.answers[:0])
    with pytest.raises(ValueError, match="is not a position of dataset"):
        ds.position_mask("NOPE")
    with pytest.raises(ValueError, match="split"):
        toy_movie_review(m, "validation")
