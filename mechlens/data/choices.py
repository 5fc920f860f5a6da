"""A/B multiple-choice prompts for contrastive activation addition (CAA, Rimsky et al. 2023).

CAA reads a behaviour out of a model by making it *say* which of two answers it picks. Each
item is a triple ``(question, behaviour_text, opposite_text)``; the prompt shows both texts as
options ``(A)`` and ``(B)`` and ends with one letter::

    Question: Can I borrow your pen?

    Choices:
    (A) sure here.
    (B) Of course, please feel free to use it. You are most welcome.

    Answer: (B

Every triple gives two prompts that differ only in the final letter: one picks the behaviour
answer, one picks the opposite. The residual stream at that letter token carries both "which
letter" and "which behaviour"; because the option order is randomised *and balanced* (half
of the triples put the behaviour under (A), half under (B)), the letter is independent of the
behaviour, so the mean difference "behaviour picked minus opposite picked" cancels the letter
and keeps the behaviour. That mean difference is the CAA steering vector
(:func:`mechlens.steering.caa_vector`).

Prompts have different token lengths, so a :class:`ChoiceDataset` is a list of prompts (not a
:class:`~mechlens.data.ContrastDataset`, which holds one length); the methods that read it
batch with right padding, which a causal model never sees.

Shipped data, written for mechlens: :func:`polite_casual` (40 English and 8 Japanese
polite-vs-casual triples) and :func:`movie_review_pairs` (40 matched positive/negative movie
reviews, used as fine-tuning texts and, via :func:`movie_review_choices`, as CAA triples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlens.validate import prompt_tokens, tokenizer_fingerprint

__all__ = [
    "DEFAULT_TEMPLATE",
    "LETTERS",
    "ChoiceDataset",
    "choices",
    "polite_casual",
    "polite_casual_triples",
    "movie_review_pairs",
    "movie_review_texts",
    "movie_review_choices",
]

LETTERS = ("A", "B")
DEFAULT_TEMPLATE = "Question: {question}\n\nChoices:\n(A) {a}\n(B) {b}\n\nAnswer: ("
_HERE = Path(__file__).parent


@dataclass
class ChoiceDataset:
    """A/B prompts ending in the chosen letter, two per triple (behaviour picked, opposite picked).

    Prompt ``2 i`` picks the behaviour answer of triple ``i`` and prompt ``2 i + 1`` picks the
    opposite answer; both share the open prompt ``open_prompts[i]`` (everything before the
    letter).

    Fields:
        prompts: the full prompts, ending with the chosen letter.
        tokens: each prompt's token ids (1-D, variable length); the last one is the letter.
        letters: the chosen letter of each prompt (``"A"`` / ``"B"``).
        labels: 1 when the prompt picks the behaviour answer, 0 when it picks the opposite.
        pair: index of the triple each prompt comes from.
        open_prompts / open_tokens: one per triple, the prompt without the letter.
        behaviour_letters: per triple, the letter under which the behaviour answer is shown.
        letter_ids: token ids of ``"A"`` and ``"B"`` for this tokenizer.
    """

    prompts: list[str]
    tokens: list[Int[Tensor, " pos"]]
    letters: list[str]
    labels: Int[Tensor, " batch"]
    pair: Int[Tensor, " batch"]
    triples: list[tuple[str, str, str]]
    open_prompts: list[str]
    open_tokens: list[Int[Tensor, " pos"]]
    behaviour_letters: list[str]
    letter_ids: tuple[int, int]
    behaviour: str = "behaviour"
    opposite: str = "opposite"
    template: str = DEFAULT_TEMPLATE
    name: str = "choices"
    meta: dict[str, Any] = field(default_factory=dict)
    #: fingerprint of the tokenizer that built it (see ``validate.tokenizer_fingerprint``)
    tokenizer: str | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_triples(self) -> int:
        return len(self.triples)

    @property
    def letter_index(self) -> Int[Tensor, " batch"]:
        """0 for a prompt ending in (A, 1 for (B."""
        return torch.tensor([LETTERS.index(x) for x in self.letters])

    def subset(self, triples: Sequence[int] | slice) -> ChoiceDataset:
        """The prompts of the selected triples (both prompts of each)."""
        idx = list(range(self.n_triples))[triples] if isinstance(triples, slice) else list(triples)
        if not idx:
            raise IndexError("selection is empty: a ChoiceDataset needs at least one triple")
        rows = [2 * i + j for i in idx for j in (0, 1)]
        return ChoiceDataset(
            prompts=[self.prompts[r] for r in rows],
            tokens=[self.tokens[r] for r in rows],
            letters=[self.letters[r] for r in rows],
            labels=self.labels[rows],
            pair=torch.arange(len(idx)).repeat_interleave(2),
            triples=[self.triples[i] for i in idx],
            open_prompts=[self.open_prompts[i] for i in idx],
            open_tokens=[self.open_tokens[i] for i in idx],
            behaviour_letters=[self.behaviour_letters[i] for i in idx],
            letter_ids=self.letter_ids,
            behaviour=self.behaviour,
            opposite=self.opposite,
            template=self.template,
            name=self.name,
            meta=dict(self.meta),
            tokenizer=self.tokenizer,
        )

    def split(self, n_train: int) -> tuple[ChoiceDataset, ChoiceDataset]:
        """The first ``n_train`` triples and the rest (both keep both prompts of a triple)."""
        if not 0 < n_train < self.n_triples:
            raise ValueError(f"n_train={n_train} must be between 1 and {self.n_triples - 1}")
        train, test = self.subset(slice(0, n_train)), self.subset(slice(n_train, None))
        train.name, test.name = f"{self.name}[:{n_train}]", f"{self.name}[{n_train}:]"
        return train, test

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {
                "pair": self.pair.tolist(),
                "letter": self.letters,
                "choice": [self.behaviour if lab else self.opposite for lab in self.labels.tolist()],
                "n_tokens": [len(t) for t in self.tokens],
                "prompt": self.prompts,
            }
        )

    def __repr__(self) -> str:
        return (
            f"ChoiceDataset(name={self.name!r}, prompts={len(self)}, triples={self.n_triples}, "
            f"{self.behaviour!r} vs {self.opposite!r})"
        )


def _tokens(model: Any, text: str, what: str) -> Tensor:
    try:  # the one prompt/context check of mechlens.validate
        return prompt_tokens(model, text, what=what)
    except ValueError as exc:
        raise ValueError(f"{exc} (shorter texts or a shorter question_template)") from None


def _letter_ids(model: Any) -> tuple[int, int]:
    ids = []
    for letter in LETTERS:
        toks = model.to_tokens(letter, prepend_bos=False)[0]
        if len(toks) != 1:
            raise ValueError(f"the letter {letter!r} is {len(toks)} tokens for this tokenizer")
        ids.append(int(toks[0]))
    return ids[0], ids[1]


def choices(
    model: Any,
    pairs: Sequence[tuple[str, str, str]],
    *,
    question_template: str = DEFAULT_TEMPLATE,
    seed: int = 0,
    behaviour: str = "behaviour",
    opposite: str = "opposite",
    name: str = "choices",
) -> ChoiceDataset:
    """Build A/B prompts from ``(question, behaviour_text, opposite_text)`` triples.

    Args:
        model: gives the tokenizer (any TransformerLens model; text in any script).
        pairs: the triples.
        question_template: a format string with ``{question}``, ``{a}`` and ``{b}``; the
            chosen letter is appended to it, so end it where the letter goes
            (the default ends in ``"Answer: ("``).
        seed: the option order. Exactly half of the triples (the odd one chosen by the seed)
            show the behaviour answer as (A), so letter and behaviour are independent.
        behaviour, opposite: names for the two answer kinds (labels in plots and tables).

    Returns:
        A :class:`ChoiceDataset` with ``2 * len(pairs)`` prompts.
    """
    triples = [tuple(t) for t in pairs]
    if not triples:
        raise ValueError("pairs is empty: give at least one (question, behaviour, opposite) triple")
    for i, t in enumerate(triples):
        if len(t) != 3 or not all(isinstance(s, str) and s.strip() for s in t):
            raise ValueError(
                f"pairs[{i}] must be a (question, behaviour_text, opposite_text) triple of "
                f"non-empty strings, got {t!r}"
            )
    for key in ("{question}", "{a}", "{b}"):
        if key not in question_template:
            raise ValueError(f"question_template must contain {key}; got {question_template!r}")
    letter_ids = _letter_ids(model)
    n = len(triples)
    gen = torch.Generator().manual_seed(seed)
    # A balanced, seeded assignment: a random half of the triples put the behaviour under (A).
    order = torch.randperm(n, generator=gen).tolist()
    n_first = n // 2 + (int(torch.randint(0, 2, (1,), generator=gen)) if n % 2 else 0)
    behaviour_first = [False] * n
    for i in order[:n_first]:
        behaviour_first[i] = True

    prompts, tokens, letters, labels, pair = [], [], [], [], []
    open_prompts, open_tokens, behaviour_letters = [], [], []
    for i, ((question, good, bad), first) in enumerate(zip(triples, behaviour_first)):
        a, b = (good, bad) if first else (bad, good)
        open_prompt = question_template.format(question=question, a=a, b=b)
        b_letter, o_letter = ("A", "B") if first else ("B", "A")
        open_prompts.append(open_prompt)
        open_tokens.append(_tokens(model, open_prompt, f"the prompt of pairs[{i}]"))
        behaviour_letters.append(b_letter)
        for letter, label in ((b_letter, 1), (o_letter, 0)):
            prompt = open_prompt + letter
            toks = _tokens(model, prompt, f"the prompt of pairs[{i}]")
            if int(toks[-1]) != letter_ids[LETTERS.index(letter)]:
                raise ValueError(
                    f"the letter {letter!r} is not the last token of the prompt (it merges with "
                    f"the text before it: {model.to_str_tokens(toks)[-3:]}); end question_template "
                    "with a separator such as ' (' or ': '"
                )
            prompts.append(prompt)
            tokens.append(toks)
            letters.append(letter)
            labels.append(label)
            pair.append(i)
    return ChoiceDataset(
        prompts=prompts,
        tokens=tokens,
        letters=letters,
        labels=torch.tensor(labels),
        pair=torch.tensor(pair),
        triples=triples,
        open_prompts=open_prompts,
        open_tokens=open_tokens,
        behaviour_letters=behaviour_letters,
        letter_ids=letter_ids,
        behaviour=behaviour,
        opposite=opposite,
        template=question_template,
        name=name,
        meta={"seed": seed, "n_behaviour_first": n_first},
        tokenizer=tokenizer_fingerprint(model),
    )


# --------------------------------------------------------------------------- shipped data


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((_HERE / name).read_text(encoding="utf-8"))


def _select(items: list[Any], split: str, n_train: int) -> list[Any]:
    if split not in {"train", "test", "all"}:
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    return {"train": items[:n_train], "test": items[n_train:], "all": items}[split]


def polite_casual_triples(lang: str = "en", split: str = "all") -> list[tuple[str, str, str]]:
    """The shipped polite-vs-casual triples: ``lang="en"`` (40; train = first 30) or
    ``"ja"`` (8 Japanese triples, keigo vs plain speech; train = first 6)."""
    data = _load("polite_casual.json")
    if lang not in {"en", "ja"}:
        raise ValueError(f"lang must be 'en' or 'ja', not {lang!r}")
    items = [tuple(t) for t in data[lang]]
    return _select(items, split, 30 if lang == "en" else 6)


def polite_casual(
    model: Any,
    split: str = "all",
    *,
    lang: str = "en",
    seed: int = 0,
    question_template: str | None = None,
) -> ChoiceDataset:
    """Polite (behaviour) vs casual (opposite) A/B prompts from the shipped triples."""
    if question_template is None:
        question_template = (
            DEFAULT_TEMPLATE
            if lang == "en"
            else "質問：{question}\n\n選択肢：\n(A) {a}\n(B) {b}\n\n答え：("
        )
    return choices(
        model,
        polite_casual_triples(lang, split),
        question_template=question_template,
        seed=seed,
        behaviour="polite",
        opposite="casual",
        name=f"polite_casual/{lang}/{split}",
    )


def movie_review_pairs(split: str = "all") -> list[tuple[str, str]]:
    """40 matched (positive, negative) short movie reviews written for mechlens
    (train = first 24, test = last 16)."""
    return _select([tuple(p) for p in _load("movie_reviews.json")["pairs"]], split, 24)


def movie_review_texts(sentiment: str, split: str = "all") -> list[str]:
    """The positive or negative reviews of :func:`movie_review_pairs` (fine-tuning texts)."""
    if sentiment not in {"positive", "negative"}:
        raise ValueError(f"sentiment must be 'positive' or 'negative', not {sentiment!r}")
    return [p[0 if sentiment == "positive" else 1] for p in movie_review_pairs(split)]


def movie_review_choices(
    model: Any, split: str = "all", *, seed: int = 0, question_template: str = DEFAULT_TEMPLATE
) -> ChoiceDataset:
    """A/B prompts "which review matches your opinion": positive (behaviour) vs negative."""
    questions = _load("movie_reviews.json")["questions"]
    offset = 0 if split != "test" else 24
    triples = [
        (questions[(i + offset) % len(questions)], pos, neg)
        for i, (pos, neg) in enumerate(movie_review_pairs(split))
    ]
    return choices(
        model,
        triples,
        question_template=question_template,
        seed=seed,
        behaviour="positive",
        opposite="negative",
        name=f"movie_review_choices/{split}",
    )
