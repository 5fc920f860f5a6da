"""Indirect object identification (IOI): the task of Wang et al. 2022.

**The task.** "When John and Mary went to the store, Mary gave a drink to" -> " John". Two
names are introduced; one of them (the *subject*, S) is repeated; the model should complete
with the other one, the *indirect object* (IO). A model that does this has to find the name
that occurs once, which makes IOI the standard small circuit of interpretability (name
movers, S-inhibition heads, induction and duplicate-token heads; Wang et al. 2022, and
ARENA's IOI exercises).

**The dataset.** Each clean prompt fills a template's three name slots ``{A}``, ``{B}``,
``{C}`` (left to right) in one of two orders:

- ``ABBA``: A = IO, B = S, C = S ("When John and Mary went ..., Mary gave ... to");
- ``BABA``: A = S, B = IO, C = S ("When Mary and John went ..., Mary gave ... to").

The corrupt partner is the *ABC* prompt of Wang et al.: the same template with the three
names replaced by three other, distinct names ("When Anna and Tom went ..., Kate gave ...
to"), so it has the sentence's structure but no information about which of the clean names
is the answer. Answers are ``(IO, S)`` for the clean prompt, so ``logit_diff`` is the usual
IO-minus-S logit difference (about 0 on the corrupt prompts).

Named positions: ``IO``, ``S1`` (first subject), ``S2`` (repeated subject) and ``END`` (the
final token, where the answer is predicted).

Every name must be a single token (with its leading space) for the model's tokenizer;
names that are not are dropped. Prompts in one dataset must have one token length, so a
template whose length differs from the others (for this tokenizer) is dropped with a
warning.

Example::

    from mechlens.models import load_model
    from mechlens.data import ioi

    model = load_model("smollm2-135m")
    ds = ioi(model, n_prompts=32, seed=0)
    ds.clean_prompts[0], ds.corrupt_prompts[0], ds.positions["IO"][0]
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from mechlens.data.contrast import ContrastDataset

__all__ = ["ioi", "IOI_TEMPLATES", "IOI_NAMES", "IOI_ORDERS"]

IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {C} gave a drink to",
    "After {A} and {B} went to the park, {C} gave a ball to",
    "When {A} and {B} went to the shops, {C} gave a bag to",
    "While {A} and {B} were at the office, {C} gave a letter to",
)

# the names of ARENA's IOI exercises: one token for GPT-2 and SmolLM2 tokenizers; with these
# and the four templates, smollm2-135m gets every prompt of ioi(model, 64, seed=0) right
IOI_NAMES: tuple[str, ...] = ("John", "Mary", "Tom", "James", "Dan", "Sid", "Martin", "Amy")

IOI_ORDERS = ("ABBA", "BABA")


def _check_template(t: Any) -> str:
    if not isinstance(t, str):
        raise TypeError(f"templates entries must be strings, not {type(t).__name__}")
    idx = [t.find("{A}"), t.find("{B}"), t.find("{C}")]
    if min(idx) < 0 or not idx[0] < idx[1] < idx[2] or any(t.count(s) != 1 for s in ("{A}", "{B}", "{C}")):
        raise ValueError(
            f"template {t!r} must hold the slots {{A}}, {{B}}, {{C}} once each, in that order "
            "(A and B introduce the two names, C repeats the subject), e.g. "
            f"{IOI_TEMPLATES[0]!r}"
        )
    if any(i == 0 or t[i - 1] != " " for i in idx):
        raise ValueError(f"template {t!r}: every name slot must follow a space (names are ' John'-style tokens)")
    return t


def ioi(
    model: Any,
    n_prompts: int = 64,
    *,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    orders: Sequence[str] = IOI_ORDERS,
    name: str = "ioi",
) -> ContrastDataset:
    """An IOI contrast dataset: clean ABBA/BABA prompts, ABC corrupt prompts (see the module doc).

    Args:
        model: gives the tokenizer.
        n_prompts: number of prompt pairs. Templates and orders are used in turn (prompt
            ``i`` uses template ``i % len(templates)``), names are drawn at random.
        seed: seeds the choice of names (same seed, same dataset).
        templates: strings with slots ``{A}``, ``{B}``, ``{C}`` (default :data:`IOI_TEMPLATES`).
        names: candidate names without the leading space (default :data:`IOI_NAMES`); those
            that are not one token for this tokenizer are dropped; at least 5 must remain
            (two for the clean prompt, three others for the corrupt one).
        orders: ``"ABBA"`` and/or ``"BABA"`` (which of the first two names is the IO).
        name: the dataset's name.

    Returns:
        A :class:`~mechlens.data.ContrastDataset` with answers ``(IO, S)``, positions
        ``IO``, ``S1``, ``S2``, ``END``, and ``meta`` recording templates, names, orders, seed
        and each prompt's template and order.
    """
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts!r} must be a positive int")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")
    orders = [orders] if isinstance(orders, str) else list(orders)
    if not orders or any(o not in IOI_ORDERS for o in orders):
        raise ValueError(f"orders={orders!r}: choose one or both of {list(IOI_ORDERS)}")
    tpls = [_check_template(t) for t in (IOI_TEMPLATES if templates is None else list(templates))]
    if not tpls:
        raise ValueError("templates is empty: give at least one template (or None for the defaults)")
    cand = list(IOI_NAMES if names is None else names)
    if any(not isinstance(n, str) or not n.strip() for n in cand):
        raise ValueError(f"names must be non-empty strings, got {cand!r}")
    cand = list(dict.fromkeys(n.strip() for n in cand))

    def n_tok(text: str) -> int:
        return len(model.to_tokens(text, prepend_bos=False)[0])

    kept = [n for n in cand if n_tok(" " + n) == 1]
    if len(kept) < 5:
        dropped = [n for n in cand if n not in kept]
        raise ValueError(
            f"names: only {len(kept)} of the names are one token for this tokenizer ({kept}; dropped "
            f"{dropped}); IOI needs at least 5 (two per clean prompt, three other ones for the corrupt prompt)"
        )

    # one token length per dataset: keep the templates of the most common length
    ref = dict(A=kept[0], B=kept[1], C=kept[1])
    lengths = [len(model.to_tokens(t.format(**ref), truncate=False)[0]) for t in tpls]
    common = max(set(lengths), key=lambda n: (lengths.count(n), -lengths.index(n)))
    if len(set(lengths)) > 1:
        bad = [t for t, n in zip(tpls, lengths) if n != common]
        warnings.warn(
            f"ioi: dropped {len(bad)} template(s) whose token length differs from the others "
            f"({common} tokens) for this tokenizer: {bad}",
            stacklevel=2,
        )
        tpls = [t for t, n in zip(tpls, lengths) if n == common]

    rng = random.Random(seed)
    clean, corrupt, answers, which_t, which_o = [], [], [], [], []
    slot_names: list[tuple[str, str, str]] = []
    for i in range(n_prompts):
        t = tpls[i % len(tpls)]
        order = orders[(i // len(tpls)) % len(orders)]
        io, s = rng.sample(kept, 2)
        others = rng.sample([n for n in kept if n not in (io, s)], 3)
        a, b = (io, s) if order == "ABBA" else (s, io)
        clean.append(t.format(A=a, B=b, C=s))
        corrupt.append(t.format(A=others[0], B=others[1], C=others[2]))
        answers.append([(" " + io, " " + s)])
        which_t.append(tpls.index(t))
        which_o.append(order)
        slot_names.append((a, b, s))

    ds = ContrastDataset.from_prompts(model, clean, corrupt, answers, name=name)
    # the name slots: the only positions where clean and corrupt differ (all names change)
    diff = ds.clean_tokens != ds.corrupt_tokens
    if not bool((diff.sum(1) == 3).all()):
        bad = int((diff.sum(1) != 3).nonzero()[0, 0])
        raise ValueError(
            f"templates: in prompt {clean[bad]!r} the names are not three separate tokens "
            f"(clean and corrupt differ at {diff[bad].nonzero().flatten().tolist()}); check the template"
        )
    slots = diff.nonzero()[:, 1].view(-1, 3)  # [batch, 3] positions of A, B, C
    abba = torch.tensor([o == "ABBA" for o in which_o])
    ds.positions["IO"] = torch.where(abba, slots[:, 0], slots[:, 1])
    ds.positions["S1"] = torch.where(abba, slots[:, 1], slots[:, 0])
    ds.positions["S2"] = slots[:, 2]
    ds.positions["END"] = ds.positions.pop("END")  # keep END last
    ds.meta.update(
        task="ioi",
        seed=seed,
        templates=list(tpls),
        names=kept,
        orders=list(orders),
        template_index=which_t,
        order=which_o,
    )
    return ds
