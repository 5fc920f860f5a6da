"""SST-2 sentences as a contrast dataset.

Sentences come from a local TSV (``sentence<TAB>label``, label 1 positive / 0 negative; a
header line is allowed) or, when ``path`` is None, from the ``datasets`` hub copy of SST-2
(needs the Hugging Face hub). Each sentence is wrapped in a prompt template; a positive and
a negative prompt of the same token length form a pair (each is the other's corrupt
prompt). mechlens datasets hold one token length, so the length with the most pairs is kept
unless ``length`` is given. Every comma in each clean prompt is recorded in
``ds.masks["COMMA"]`` (and the first one in ``ds.positions["COMMA"]`` when all have one).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from mechlens.data.contrast import ContrastDataset

__all__ = ["SST_TEMPLATE", "sst", "read_sst_tsv"]

SST_TEMPLATE = "Review: {text}\nSentiment:"
SST_ANSWERS = [(" positive", " negative")]


def read_sst_tsv(path: str | os.PathLike) -> list[tuple[str, int]]:
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f, delimiter="\t")):
                if len(row) < 2:
                    continue
                text, label = row[0].strip(), row[1].strip()
                if i == 0 and not label.lstrip("-").isdigit():
                    continue  # header
                if not label.lstrip("-").isdigit():
                    raise ValueError(
                        f"{path}, line {i + 1}: label {label!r} is not an integer; rows are 'sentence<TAB>label' "
                        "with label 1 (positive) or 0 (negative)"
                    )
                rows.append((text, int(label)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; give the path of a 'sentence<TAB>label' TSV file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason}); give a 'sentence<TAB>label' TSV file") from None
    if not rows:
        raise ValueError(f"{path} has no 'sentence<TAB>label' rows")
    return rows


def _hub_rows(split: str) -> list[tuple[str, int]]:
    try:
        from datasets import load_dataset

        data = load_dataset("stanfordnlp/sst2", split=split)
    except Exception as exc:  # offline, no cache
        raise RuntimeError(
            "SST-2 needs the Hugging Face hub (or its local cache); offline, pass "
            "path= a TSV file of 'sentence<TAB>label' rows"
        ) from exc
    return [(r["sentence"].strip(), int(r["label"])) for r in data]


def sst(
    model: Any,
    path: str | os.PathLike | None = None,
    *,
    split: str = "validation",
    template: str = SST_TEMPLATE,
    answers: list[tuple[str, str]] | None = None,
    length: int | None = None,
    max_pairs: int | None = None,
) -> ContrastDataset:
    """SST-2 prompts paired by equal token length, positive with negative."""
    rows = read_sst_tsv(path) if path is not None else _hub_rows(split)
    if "{text}" not in template:
        raise ValueError("template must contain '{text}'")
    answers = answers or SST_ANSWERS
    by_len: dict[int, dict[int, list[str]]] = defaultdict(lambda: {0: [], 1: []})
    for text, label in rows:
        if label not in (0, 1):
            raise ValueError(f"SST labels must be 0 or 1, got {label} for {text!r}")
        prompt = template.format(text=text)
        # untruncated: a sentence longer than the context must not join the group of length n_ctx
        by_len[model.to_tokens(prompt, truncate=False).shape[-1]][label].append(prompt)
    n_ctx = getattr(model.cfg, "n_ctx", None) or float("inf")
    n_pairs = {n: min(len(g[0]), len(g[1])) for n, g in by_len.items() if n <= n_ctx or n == length}
    if length is None:
        length = max(n_pairs, key=lambda n: (n_pairs[n], -n)) if n_pairs else None
    if length is None or n_pairs.get(length, 0) == 0:
        raise ValueError(
            f"no positive/negative pair of equal token length {length}; lengths with pairs: "
            f"{sorted(n for n, k in n_pairs.items() if k)}"
        )
    group = by_len[length]
    k = n_pairs[length] if max_pairs is None else min(max_pairs, n_pairs[length])
    clean, corrupt, labels = [], [], []
    for p, q in zip(group[1][:k], group[0][:k]):
        clean += [p, q]
        corrupt += [q, p]
        labels += [1, 0]
    ans = [[(a, b) if lab else (b, a) for a, b in answers] for lab in labels]
    ds = ContrastDataset.from_prompts(model, clean, corrupt, ans, labels=labels, name="sst")
    strs = [model.to_str_tokens(t) for t in ds.clean_tokens]
    mask = torch.tensor([[s.strip() == "," for s in row] for row in strs])
    ds.masks["COMMA"] = mask
    if mask.any(1).all():
        ds.positions["COMMA"] = mask.float().argmax(1)
    ds.meta.update(length=length, source=str(Path(path)) if path else f"hub:sst2/{split}")
    return ds
