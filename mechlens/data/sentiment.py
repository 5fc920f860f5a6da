"""Sentiment contrast datasets: ToyMovieReview (Tigges et al. 2023) and ToyMoodStory.

ToyMovieReview uses the paper's template, word lists and answer pairs
(../shared/reference/tigges2023.md). Words are inserted with a leading space and kept only
when they are one token for the model's tokenizer; the dropped words are counted in
``ds.meta["dropped"]``. Prompts are interleaved positive, negative, positive, ... and the
corrupt set is the same list shifted by one, so each clean prompt's partner has the
opposite sentiment and the same token length.
"""

from __future__ import annotations

from typing import Any

import torch

from mechlens.data.contrast import ContrastDataset, find_token_position
from mechlens.validate import check_count

__all__ = [
    "MOVIE_TEMPLATE",
    "POSITIVE_ADJECTIVES",
    "NEGATIVE_ADJECTIVES",
    "POSITIVE_VERBS",
    "NEGATIVE_VERBS",
    "ANSWER_PAIRS",
    "toy_movie_review",
    "toy_mood_story",
]

MOVIE_TEMPLATE = "I thought this movie was{ADJ}, I{VRB} it.{FILLER} \nConclusion: This movie is"

POSITIVE_ADJECTIVES = {
    "train": (
        "perfect fantastic delightful cheerful good remarkable satisfactory wonderful nice "
        "fabulous outstanding satisfying awesome exceptional adequate incredible extraordinary "
        "amazing decent lovely brilliant charming terrific superb spectacular great splendid "
        "beautiful positive excellent pleasant"
    ).split(),
    "test": (
        "stunning impressive admirable phenomenal radiant glorious magical pleasing lively "
        "warm strong helpful vivid modern crisp sweet"
    ).split(),
}
NEGATIVE_ADJECTIVES = {
    "train": (
        "dreadful bad dull depressing miserable tragic nasty inferior horrific terrible ugly "
        "disgusting disastrous annoying boring offensive frustrating wretched inadequate dire "
        "unpleasant horrible disappointing awful"
    ).split(),
    "test": "foul vile appalling rotten grim dismal lazy poor rough noisy sour flat ancient bitter".split(),
}
POSITIVE_VERBS = "enjoyed loved liked appreciated admired".split()
NEGATIVE_VERBS = "hated disliked despised".split()
ANSWER_PAIRS = [
    ("great", "terrible"),
    ("amazing", "awful"),
    ("awesome", "bad"),
    ("good", "horrible"),
    ("perfect", "disgusting"),
]

# Neutral sentences used as irrelevant context (the summarization-motif sweep).
_FILLER = (
    " The film was shown on a Tuesday evening in a small theater near the station."
    " We bought our tickets at the counter and found two seats in the middle row."
    " The room was quiet and the lights went down at seven o'clock."
    " Afterwards we walked home along the river and talked about the weather."
    " The next morning I wrote down a few notes about the plot and the actors."
)


def _one_token_words(model: Any, words: list[str]) -> tuple[list[str], list[str]]:
    kept, dropped = [], []
    for w in words:
        n = model.to_tokens(" " + w, prepend_bos=False).shape[-1]
        (kept if n == 1 else dropped).append(w)
    return kept, dropped


def _filler_text(model: Any, n_tokens: int) -> str:
    """The shortest whole-word prefix of the neutral text with at least ``n_tokens`` tokens."""
    if n_tokens <= 0:
        return ""
    words = _FILLER.split(" ")[1:]
    text = ""
    for w in words:
        text += " " + w
        if model.to_tokens(text, prepend_bos=False).shape[-1] >= n_tokens:
            return text
    raise ValueError(f"filler={n_tokens} is longer than the neutral text mechlens ships; use fewer tokens")


def toy_movie_review(
    model: Any, split: str = "train", *, filler: int = 0, n_pairs: int | None = None
) -> ContrastDataset:
    """The paper's ToyMovieReview dataset for ``model``'s tokenizer.

    Args:
        split: ``"train"``, ``"test"`` (held-out adjectives) or ``"all"``.
        filler: insert about this many tokens of neutral text after "it." and before
            "Conclusion" (irrelevant context for the summarization motif).
        n_pairs: keep only the first ``n_pairs`` answer pairs.

    Named positions: ``ADJ``, ``VRB``, ``COMMA`` (after the adjective), ``END``.
    Labels: 1 for positive clean prompts, 0 for negative.
    """
    if split not in {"train", "test", "all"}:
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    filler = check_count(filler, "filler", minimum=0)
    n_pairs = check_count(n_pairs, "n_pairs", minimum=1, allow_none=True)
    splits = ["train", "test"] if split == "all" else [split]
    pos_adj = [w for s in splits for w in POSITIVE_ADJECTIVES[s]]
    neg_adj = [w for s in splits for w in NEGATIVE_ADJECTIVES[s]]
    dropped: dict[str, list[str]] = {}
    pos_adj, dropped["positive adjectives"] = _one_token_words(model, pos_adj)
    neg_adj, dropped["negative adjectives"] = _one_token_words(model, neg_adj)
    pos_vrb, dropped["positive verbs"] = _one_token_words(model, POSITIVE_VERBS)
    neg_vrb, dropped["negative verbs"] = _one_token_words(model, NEGATIVE_VERBS)
    pairs = [
        (p, n) for p, n in ANSWER_PAIRS if _one_token_words(model, [p, n])[1] == []
    ][:n_pairs]
    dropped["answer pairs"] = [f"{p}/{n}" for p, n in ANSWER_PAIRS if (p, n) not in pairs]
    for what, ws in (("adjectives", pos_adj and neg_adj), ("verbs", pos_vrb and neg_vrb), ("answer pairs", pairs)):
        if not ws:
            raise ValueError(f"no single-token {what} of both sentiments for this tokenizer")
    fill = _filler_text(model, filler)

    n = min(len(pos_adj), len(neg_adj))
    prompts, labels, adjs, verbs = [], [], [], []
    for i in range(n):
        for adj, vrb, lab in ((pos_adj[i], pos_vrb[i % len(pos_vrb)], 1), (neg_adj[i], neg_vrb[i % len(neg_vrb)], 0)):
            prompts.append(MOVIE_TEMPLATE.format(ADJ=" " + adj, VRB=" " + vrb, FILLER=fill))
            labels.append(lab)
            adjs.append(adj)
            verbs.append(vrb)
    corrupt = prompts[1:] + prompts[:1]
    answers = [
        [(" " + p, " " + q) if lab else (" " + q, " " + p) for p, q in pairs] for lab in labels
    ]
    # Positions are the same in every prompt: find them once in the first.
    ds = ContrastDataset.from_prompts(
        model,
        prompts,
        corrupt,
        answers,
        positions={"ADJ": [" " + a for a in adjs], "VRB": [" " + v for v in verbs]},
        labels=labels,
        name=f"toy_movie_review/{split}" + (f"/filler{filler}" if filler else ""),
    )
    comma = ds.positions["ADJ"] + 1
    toks = ds.clean_tokens[torch.arange(ds.batch), comma]
    if not all(model.to_single_str_token(int(t)).strip() == "," for t in toks):
        raise RuntimeError("the token after ADJ is not a comma for this tokenizer")
    ds.positions["COMMA"] = comma
    ds.meta.update(
        dropped={k: v for k, v in dropped.items() if v},
        n_dropped=sum(len(v) for v in dropped.values()),
        answer_pairs=pairs,
        split=split,
        filler=filler,
        filler_text=fill,
        adjectives=adjs,
        verbs=verbs,
    )
    return ds


# ToyMoodStory: two people, a positive and a negative activity, a comma between them.
MOOD_TEMPLATE = "{A} {ACT_A}, and {B} {ACT_B}. {Q} feels"
MOOD_NAMES = ["John", "Mary", "Anna", "Tom", "Sarah", "David", "Emma", "James"]
MOOD_ACTIVITIES = [
    # (positive activity, negative activity)
    ("won the lottery", "lost the keys"),
    ("got a new puppy", "got a bad grade"),
    ("went to a party", "went to a funeral"),
    ("passed the exam", "failed the exam"),
    ("got a promotion", "got fired today"),
    ("found a lost ring", "broke a leg"),
]


def toy_mood_story(model: Any, *, names: list[str] | None = None) -> ContrastDataset:
    """Two-person mood inference: "John won the lottery, and Mary lost the keys. John feels".

    The corrupt prompt asks about the other person, so it has the opposite answer and the
    same length. Answers: " excited" (positive) vs " nervous" (negative).
    Named positions: ``NAME_A``, ``ACT_A`` (last token of A's activity), ``COMMA``,
    ``NAME_B``, ``ACT_B``, ``QUERY`` (the asked-about name), ``END``.
    Only activity pairs whose two phrases have the same token length are used, and among
    those the most common prompt length is kept.
    """
    # a name opens the prompt (no leading space) and recurs mid-sentence (with one)
    names = [
        n for n in (names or MOOD_NAMES)
        if all(model.to_tokens(w, prepend_bos=False).shape[-1] == 1 for w in (n, " " + n))
    ]
    if len(names) < 2:
        raise ValueError("toy_mood_story needs at least two names that are one token")
    rows = []
    for i, (good, bad) in enumerate(MOOD_ACTIVITIES):
        for j, a in enumerate(names):
            b = names[(j + 1 + i) % len(names)]
            if a == b:
                continue
            for flip in (False, True):
                act_a, act_b = (bad, good) if flip else (good, bad)
                lab_a = 0 if flip else 1
                for q_is_a in (True, False):
                    q, other = (a, b) if q_is_a else (b, a)
                    clean = MOOD_TEMPLATE.format(A=a, ACT_A=act_a, B=b, ACT_B=act_b, Q=q)
                    corrupt = MOOD_TEMPLATE.format(A=a, ACT_A=act_a, B=b, ACT_B=act_b, Q=other)
                    label = lab_a if q_is_a else 1 - lab_a
                    rows.append((clean, corrupt, label, a, b))
    lengths = [model.to_tokens(r[0], truncate=False).shape[-1] for r in rows]
    common = max(set(lengths), key=lengths.count)
    rows = [r for r, n in zip(rows, lengths) if n == common]
    clean, corrupt, labels = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    answers = [[(" excited", " nervous")] if lab else [(" nervous", " excited")] for lab in labels]
    ds = ContrastDataset.from_prompts(
        model, clean, corrupt, answers, positions={"COMMA": ","}, labels=labels, name="toy_mood_story"
    )
    strs = [model.to_str_tokens(t) for t in ds.clean_tokens]
    comma = ds.positions["COMMA"]
    ds.positions["ACT_A"] = comma - 1
    ds.positions["NAME_A"] = torch.tensor([find_token_position(s, r[3]) for s, r in zip(strs, rows)])
    name_b = [c + 1 + find_token_position(s[c + 1 :], r[4]) for s, r, c in zip(strs, rows, comma.tolist())]
    ds.positions["NAME_B"] = torch.tensor(name_b)
    ds.positions["ACT_B"] = torch.full((ds.batch,), ds.seq_len - 4)  # "... ACT_B . Q feels"
    ds.positions["QUERY"] = torch.full((ds.batch,), ds.seq_len - 2)
    ds.meta.update(n_examples=len(rows), seq_len=common)
    return ds
