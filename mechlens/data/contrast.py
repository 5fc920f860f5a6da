"""``ContrastDataset``: paired clean/corrupt prompts, the answers to compare, named positions.

Every mechlens method takes one. A dataset holds, for ``batch`` examples of one token length:

- ``clean_tokens`` / ``corrupt_tokens`` ``[batch, pos]``: the two runs to contrast;
- ``answers`` ``[batch, n_pairs, 2]``: token ids of (correct, incorrect) answers *for the
  clean prompt*; the logit difference is taken at the final position and averaged over pairs;
- ``positions``: name -> ``[batch]`` index of a named position (``"ADJ"``, ``"COMMA"``, ...;
  ``"END"`` is always there);
- ``masks``: name -> ``[batch, pos]`` boolean, for positions that occur several times per
  prompt (every comma of an SST sentence);
- ``labels`` ``[batch]``: the clean prompt's class (1 positive, 0 negative for sentiment);
- ``clean_prompts`` / ``corrupt_prompts``: the strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

# the dataset checks live in mechlens.validate; re-exported here for old imports
from mechlens.validate import (
    as_token_tensor,
    check_binary_labels,
    check_contrast_dataset,
    prompt_tokens,
    tokenizer_fingerprint,
)

__all__ = ["ContrastDataset", "single_token", "find_token_position", "check_contrast_dataset", "check_binary_labels"]


def single_token(model: Any, word: str, *, what: str = "answer") -> int:
    """The token id of ``word``; raises a clear error when it is not exactly one token."""
    ids = model.to_tokens(word, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = model.to_str_tokens(word, prepend_bos=False)
        raise ValueError(
            f"{what} {word!r} is {len(ids)} tokens for this tokenizer ({pieces}); "
            f"use a word that is one token (often it needs a leading space, e.g. {' ' + word.strip()!r})"
        )
    return ids[0]


def find_token_position(str_tokens: Sequence[str], word: str, *, prompt: str = "") -> int:
    """Index of the first token equal to ``word`` (ignoring surrounding spaces)."""
    target = word.strip()
    for i, tok in enumerate(str_tokens):
        if tok.strip() == target and target:
            return i
    raise ValueError(
        f"position word {word!r} is not a token of the prompt {prompt!r} "
        f"(tokens: {list(str_tokens)}); give its index instead, or a word that is one token"
    )


@dataclass
class ContrastDataset:
    clean_tokens: Int[Tensor, "batch pos"]
    corrupt_tokens: Int[Tensor, "batch pos"]
    answers: Int[Tensor, "batch n_pairs 2"]
    positions: dict[str, Int[Tensor, " batch"]] = field(default_factory=dict)
    labels: Int[Tensor, " batch"] | None = None
    clean_prompts: list[str] = field(default_factory=list)
    corrupt_prompts: list[str] = field(default_factory=list)
    masks: dict[str, Bool[Tensor, "batch pos"]] = field(default_factory=dict)
    name: str = "contrast"
    meta: dict[str, Any] = field(default_factory=dict)
    #: fingerprint of the tokenizer that built the dataset (``validate.tokenizer_fingerprint``);
    #: every method checks it against the model's. ``None`` (built by hand): not checked.
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        self.clean_tokens = as_token_tensor(self.clean_tokens, "clean_tokens")
        self.corrupt_tokens = as_token_tensor(self.corrupt_tokens, "corrupt_tokens")
        self.answers = as_token_tensor(self.answers, "answers")
        if self.answers.ndim == 2:
            self.answers = self.answers[:, None, :]
        if self.labels is None:
            self.labels = torch.ones(len(self.clean_tokens), dtype=torch.long)
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        self.positions = {k: torch.as_tensor(v, dtype=torch.long) for k, v in self.positions.items()}
        self.masks = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in self.masks.items()}
        self._validate()
        if "END" not in self.positions:
            self.positions["END"] = torch.full((self.batch,), self.seq_len - 1, dtype=torch.long)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        c, k = self.clean_tokens, self.corrupt_tokens
        if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
            raise ValueError(
                f"clean_tokens must be a non-empty [batch, pos] tensor, got shape {tuple(c.shape)}; "
                "an empty dataset has nothing to analyse"
            )
        if k.shape != c.shape:
            raise ValueError(
                f"clean_tokens {tuple(c.shape)} and corrupt_tokens {tuple(k.shape)} differ in shape: "
                "every clean prompt needs a corrupt partner of the same token length"
            )
        b = c.shape[0]
        if self.answers.ndim != 3 or self.answers.shape[0] != b or self.answers.shape[2] != 2:
            raise ValueError(
                f"answers must be [batch={b}, n_pairs, 2] (correct, incorrect token ids), "
                f"got {tuple(self.answers.shape)}"
            )
        if self.labels.shape != (b,):
            raise ValueError(f"labels must have shape [{b}], got {tuple(self.labels.shape)}")
        for name, idx in self.positions.items():
            if idx.shape != (b,):
                raise ValueError(f"positions[{name!r}] must have shape [{b}], got {tuple(idx.shape)}")
            if (idx < 0).any() or (idx >= c.shape[1]).any():
                raise ValueError(
                    f"positions[{name!r}] has indices {idx.tolist()} outside 0..{c.shape[1] - 1}"
                )
        for name, m in self.masks.items():
            if m.shape != c.shape:
                raise ValueError(f"masks[{name!r}] must have shape {tuple(c.shape)}, got {tuple(m.shape)}")
        for what, prompts in (("clean_prompts", self.clean_prompts), ("corrupt_prompts", self.corrupt_prompts)):
            if prompts and len(prompts) != b:
                raise ValueError(f"{what} has {len(prompts)} strings for {b} examples")

    # ------------------------------------------------------------------ basics
    @property
    def batch(self) -> int:
        return int(self.clean_tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_tokens.shape[1])

    @property
    def n_pairs(self) -> int:
        return int(self.answers.shape[1])

    @property
    def device(self) -> torch.device:
        return self.clean_tokens.device

    def __len__(self) -> int:
        return self.batch

    def __getitem__(self, idx: int | slice | Sequence[int] | Tensor) -> ContrastDataset:
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, slice):
            sel = torch.arange(self.batch)[idx]
        else:
            sel = torch.as_tensor(idx)
            if sel.dtype == torch.bool:
                sel = sel.nonzero().flatten()
            sel = sel.long()
        if len(sel) == 0:
            raise IndexError("selection is empty: a ContrastDataset needs at least one example")
        cpu = sel.cpu().tolist()
        sel = sel.to(self.device)
        return replace(
            self,
            clean_tokens=self.clean_tokens[sel],
            corrupt_tokens=self.corrupt_tokens[sel],
            answers=self.answers[sel],
            positions={k: v[sel] for k, v in self.positions.items()},
            masks={k: v[sel] for k, v in self.masks.items()},
            labels=self.labels[sel],
            clean_prompts=[self.clean_prompts[i] for i in cpu] if self.clean_prompts else [],
            corrupt_prompts=[self.corrupt_prompts[i] for i in cpu] if self.corrupt_prompts else [],
            meta=dict(self.meta),
        )

    def to(self, device: str | torch.device) -> ContrastDataset:
        return replace(
            self,
            clean_tokens=self.clean_tokens.to(device),
            corrupt_tokens=self.corrupt_tokens.to(device),
            answers=self.answers.to(device),
            positions={k: v.to(device) for k, v in self.positions.items()},
            masks={k: v.to(device) for k, v in self.masks.items()},
            labels=self.labels.to(device),
            meta=dict(self.meta),
        )

    def swapped(self) -> ContrastDataset:
        """The same pairs with clean and corrupt exchanged (answers flipped to match)."""
        return replace(
            self,
            clean_tokens=self.corrupt_tokens,
            corrupt_tokens=self.clean_tokens,
            answers=self.answers.flip(-1),
            labels=1 - self.labels if set(self.labels.unique().tolist()) <= {0, 1} else self.labels,
            clean_prompts=list(self.corrupt_prompts),
            corrupt_prompts=list(self.clean_prompts),
            meta=dict(self.meta),
        )

    def fingerprint(self) -> str:
        """A short hash of tokens and answers, to tie a result to the data it came from."""
        h = hashlib.sha256()
        for t in (self.clean_tokens, self.corrupt_tokens, self.answers):
            h.update(t.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def position_names(self) -> list[str]:
        return list(self.positions) + [m for m in self.masks if m not in self.positions]

    def position_mask(self, position: Any = "all") -> Bool[Tensor, "batch pos"]:
        """``[batch, pos]`` mask of a set of positions taken together: ``"all"`` (every
        position), a position name (``"ADJ"``; a multi-position mask such as SST's commas),
        an index (negative counts from the end), a list of them (their union), or a
        ``[batch, pos]`` bool mask. The one reading of a ``position`` argument in mechlens (a
        *swept* ``positions`` argument gives one such set per entry)."""
        b, s = self.batch, self.seq_len
        if isinstance(position, Tensor):
            if position.dtype != torch.bool or tuple(position.shape) != (b, s):
                raise ValueError(
                    f"a position mask must be a bool tensor of shape {(b, s)}, got {position.dtype} {tuple(position.shape)}"
                )
            return position.to(self.device)
        if isinstance(position, str):
            if position.lower() == "all":
                return torch.ones_like(self.clean_tokens, dtype=torch.bool)
            if position in self.masks:
                return self.masks[position]
            if position in self.positions:
                m = torch.zeros_like(self.clean_tokens, dtype=torch.bool)
                m[torch.arange(b, device=self.device), self.positions[position]] = True
                return m
            raise ValueError(
                f"{position!r} is not a position of dataset {self.name!r}; it has {self.position_names()} "
                "(or 'all', an index, a list of them, or a [batch, pos] bool mask)"
            )
        if isinstance(position, int) and not isinstance(position, bool):
            if not -s <= position < s:
                raise ValueError(f"position {position} is out of range: the prompts have positions 0..{s - 1}")
            m = torch.zeros_like(self.clean_tokens, dtype=torch.bool)
            m[:, position % s] = True
            return m
        if isinstance(position, (list, tuple)):
            if not position:
                raise ValueError("position is an empty list: give 'all', a name, an index or a non-empty list")
            return torch.stack([self.position_mask(p) for p in position]).any(0)
        raise TypeError(
            f"position must be 'all', a position name, an int index, a list of them or a [batch, pos] bool mask, "
            f"not {position!r}"
        )

    def position_label(self, position: Any = "all") -> str:
        """A short name for a ``position`` argument (``"all"``, ``"ADJ"``, ``"ADJ+VRB"``, ``"mask"``)."""
        if isinstance(position, Tensor):
            return "mask"
        if isinstance(position, (list, tuple)):
            return "+".join(self.position_label(p) for p in position)
        if isinstance(position, str) and position.lower() == "all":
            return "all"
        if isinstance(position, int):
            return str(position % self.seq_len)
        return str(position)

    def position_labels(self, model: Any | None = None, example: int = 0) -> list[str]:
        """Labels for the token axis: ``"3: ' great' (ADJ)"`` style, from one example."""
        if model is not None:
            toks = model.to_str_tokens(self.clean_tokens[example])
        else:
            toks = [str(int(t)) for t in self.clean_tokens[example]]
        names = {int(v[example]): k for k, v in self.positions.items()}
        return [f"{i}: {t!r}" + (f" ({names[i]})" if i in names else "") for i, t in enumerate(toks)]

    def __repr__(self) -> str:
        return (
            f"ContrastDataset(name={self.name!r}, batch={self.batch}, seq_len={self.seq_len}, "
            f"n_pairs={self.n_pairs}, positions={self.position_names()})"
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_prompts(
        cls,
        model: Any,
        clean: Sequence[str],
        corrupt: Sequence[str],
        answers: Sequence[tuple[str, str]] | Sequence[Sequence[tuple[str, str]]],
        *,
        positions: Mapping[str, int | str | Sequence[int] | Sequence[str]] | None = None,
        labels: Sequence[int] | None = None,
        name: str = "contrast",
        prepend_bos: bool | None = None,
        where: Sequence[str] | None = None,
    ) -> ContrastDataset:
        """Build a dataset from prompt strings.

        Every prompt is tokenised through :func:`mechlens.validate.prompt_tokens`: an empty
        prompt, or one longer than the model's context, is refused (never cut).

        Args:
            model: gives the tokenizer.
            clean: the clean prompts; each pair, and all prompts, must have the same token
                length.
            corrupt: as many corrupt prompts, one per clean prompt.
            answers: one list of ``(correct, incorrect)`` word pairs used for every example,
                or one such list per example. Every word must be a single token.
            positions: name -> an index (negative counts from the end), a word to find in
                each clean prompt, or one index/word per example.
            labels: class of each clean prompt (default all 1).
            where: where each pair came from (``"pairs.jsonl, line 3"``), one per pair; every
                error about a pair starts with it. Default ``"pair 1"``, ``"pair 2"``, ...
        """
        clean, corrupt = list(clean), list(corrupt)
        if not clean:
            raise ValueError("clean is empty: give at least one prompt pair")
        if len(clean) != len(corrupt):
            raise ValueError(f"clean has {len(clean)} prompts but corrupt has {len(corrupt)}")
        locs = [f"pair {i + 1}" for i in range(len(clean))] if where is None else [str(w) for w in where]
        if len(locs) != len(clean):
            raise ValueError(f"where has {len(locs)} entries for {len(clean)} prompt pairs")
        toks_c = [prompt_tokens(model, p, what="clean prompt", where=w, prepend_bos=prepend_bos)
                  for p, w in zip(clean, locs)]
        toks_k = [prompt_tokens(model, p, what="corrupt prompt", where=w, prepend_bos=prepend_bos)
                  for p, w in zip(corrupt, locs)]
        for i, (a, b) in enumerate(zip(toks_c, toks_k)):
            if len(a) != len(b):
                raise ValueError(
                    f"{locs[i]}: clean prompt {clean[i]!r} is {len(a)} tokens but corrupt prompt "
                    f"{corrupt[i]!r} is {len(b)}; patching needs pairs of equal token length"
                )
        lengths = sorted({len(t) for t in toks_c})
        if len(lengths) > 1:
            first = {n: next(locs[i] for i, t in enumerate(toks_c) if len(t) == n) for n in lengths}
            raise ValueError(
                f"prompts have different token lengths {lengths} (e.g. "
                + ", ".join(f"{n} tokens at {w}" for n, w in first.items())
                + "); mechlens datasets hold one length (split them into one dataset per length)"
            )
        per_example = _per_example_answers(answers, len(clean), locs)
        ans = torch.tensor(
            [[[_answer_token(model, c, locs[i]), _answer_token(model, w, locs[i])] for c, w in ex]
             for i, ex in enumerate(per_example)]
        )
        seq_len = lengths[0]
        pos: dict[str, Tensor] = {}
        for pname, spec in (positions or {}).items():
            specs = spec if isinstance(spec, (list, tuple)) else [spec] * len(clean)
            if len(specs) != len(clean):
                raise ValueError(f"positions[{pname!r}] has {len(specs)} entries for {len(clean)} prompts")
            idx = []
            for i, s in enumerate(specs):
                if isinstance(s, str):
                    try:
                        idx.append(find_token_position(model.to_str_tokens(toks_c[i]), s, prompt=clean[i]))
                    except ValueError as exc:
                        raise ValueError(f"{locs[i]}: positions[{pname!r}]: {exc}") from None
                elif isinstance(s, bool) or not isinstance(s, int):
                    raise ValueError(
                        f"{locs[i]}: positions[{pname!r}]={s!r} must be a word of the prompt or an int index"
                    )
                else:
                    j = s + seq_len if s < 0 else s
                    if not 0 <= j < seq_len:
                        raise ValueError(
                            f"{locs[i]}: positions[{pname!r}]={s} is outside the prompt's {seq_len} tokens"
                        )
                    idx.append(j)
            pos[pname] = torch.tensor(idx)
        return cls(
            clean_tokens=torch.stack(toks_c).cpu(),
            corrupt_tokens=torch.stack(toks_k).cpu(),
            answers=ans,
            positions=pos,
            labels=torch.tensor(list(labels)) if labels is not None else None,
            clean_prompts=clean,
            corrupt_prompts=corrupt,
            name=name,
            tokenizer=tokenizer_fingerprint(model),
        )


def _answer_token(model: Any, word: Any, where: str) -> int:
    """One answer word's token id; errors start with where its pair came from."""
    if not isinstance(word, str):
        raise TypeError(f"{where}: answer {word!r} must be a string (a word such as ' loved'), not {type(word).__name__}")
    try:
        return single_token(model, word)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _per_example_answers(answers: Any, n: int, locs: Sequence[str]) -> list[list[tuple[str, str]]]:
    answers = list(answers)
    if not answers:
        raise ValueError("answers is empty: give at least one (correct, incorrect) pair")

    def is_pair(a: Any) -> bool:
        return isinstance(a, (tuple, list)) and len(a) == 2 and not any(isinstance(w, (tuple, list)) for w in a)

    if all(is_pair(a) for a in answers):  # one list of pairs for every example
        return [[tuple(a) for a in answers]] * n
    if len(answers) != n:
        raise ValueError(f"answers has {len(answers)} entries for {n} prompts")
    out = []
    for i, ex in enumerate(answers):
        if not isinstance(ex, (list, tuple)) or not ex or not all(is_pair(p) for p in ex):
            raise ValueError(f"{locs[i]}: answers must be a list of (correct, incorrect) pairs, got {ex!r}")
        out.append([tuple(p) for p in ex])
    if len({len(ex) for ex in out}) != 1:
        counts = {len(ex): locs[i] for i, ex in enumerate(out)}
        raise ValueError(
            "every example needs the same number of answer pairs; got "
            + ", ".join(f"{k} at {w}" for k, w in sorted(counts.items()))
        )
    return out
