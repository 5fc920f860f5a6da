"""Diff interpretation tuning: train a LoRA adapter that makes a fine-tuned model *say* what
its weight difference does (Goel et al. 2025, "Learning to Interpret Weight Differences in
Language Models").

The method in four steps:

1. **A family of weight differences** (:func:`make_diffs`). For each behaviour ``y_i`` (a
   hidden topic revealed after a trigger code, :mod:`mechlens.dit.data`), a small seeded
   fine-tune of the base model ``M`` on texts ``"Your SEP code is {code}. {sentence about
   the topic}"`` gives ``M_i = M + delta_i``. Here ``delta_i`` is a rank-``r`` LoRA update
   ``scale * B_i A_i`` of a few MLP output projections (only ``A_i, B_i`` are trained), so
   a family of hundreds of differences is a few megabytes. Many differences are trained in
   one batched forward pass (each example carries its own difference; Adam is elementwise
   and the losses are summed, so each difference is trained exactly as on its own). The
   factors are cached on disk, keyed by the model and every setting, and reused.
2. **A split** (:func:`split`): held-out differences are never used for training.
3. **The DIT adapter** (:func:`train_adapter`): one LoRA adapter ``A`` (peft) on all linear
   layers, trained so that ``M_i + A``, asked ``"What topic were you trained on?"``, answers
   ``y_i`` (next-token loss on the answer only); every ``delta_i`` stays frozen.
4. **Evaluation** (:func:`evaluate`): on held-out differences, greedy answers of ``M_i + A``
   against the true topic (exact and fuzzy match), against chance (``1 / n_topics``) and
   against baselines that use no adapter: ``M_i`` asked the same question, and black-box
   probing of ``M_i`` with and without its trigger (does its continuation mention the
   topic?). :func:`run` does all four and returns a :class:`DITResult`.

The model passed in is never changed: every step works on an independent copy of the
underlying Hugging Face model, built from the mechlens model's parameters (bit-exact
outputs, checked in the tests). :meth:`DiffFamily.apply` applies one difference to the
mechlens model itself (restored bit-exactly on exit), so any mechlens method can study
``M_i``; :meth:`DiffFamily.weight_vector` gives it as a
:class:`~mechlens.steering.weights.WeightVector` (e.g. for ``diff_anatomy``).

Scoring (:func:`score_answer`): *exact* when the answer's first phrase, lower-cased and
stripped of punctuation, is the topic; *fuzzy* when a word of the answer is the topic or is
close to it (``difflib`` ratio >= 0.8, so "train" matches "trains"). The black-box baselines
generate a continuation instead of an answer: *exact* when it contains the topic word,
*fuzzy* when it contains the topic word or one of the topic's eight vocabulary words
(:data:`mechlens.dit.data.TOPICS`), a more lenient test than the adapter's.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechlens.dit.data import (
    QUESTIONS,
    TOPICS,
    Behaviour,
    make_behaviours,
    plain_texts,
    topic_texts,
    trigger_prefix,
)
from mechlens.engine import pad_id, progress_bar, progress_iter
from mechlens.engine.bridge import hf_model, hf_name
from mechlens.models import cache_dir as _mechlens_cache_dir
from mechlens.models import model_name
from mechlens.results import Result, markdown_table
from mechlens.steering.weights import WeightVector, apply_weights, parameters

__all__ = [
    "DiffFamily",
    "DITAdapter",
    "DITResult",
    "make_diffs",
    "split",
    "train_adapter",
    "evaluate",
    "run",
    "score_answer",
    "hf_copy",
    "METHODS",
]

METHODS = ["dit", "no_adapter", "blackbox_trigger", "blackbox_no_trigger"]
_ANSWER_PROMPT = "Question: {q}\nAnswer:"
_BLACKBOX_TRIGGER = "{trigger} Let me tell you about"
_BLACKBOX_PLAIN = "Let me tell you about"
_MLP_OUT = ("model.layers.{i}.mlp.down_proj", "transformer.h.{i}.mlp.c_proj", "gpt_neox.layers.{i}.mlp.dense_4h_to_h")


# --------------------------------------------------------------------------- the HF copy


def _check_bridge(model: Any) -> None:
    if hf_model(model) is None or not hasattr(model, "to_tokens"):
        raise TypeError(
            "model must be a TransformerBridge (what mechlens.load_model or mechlens.models.tiny "
            f"returns); got {type(model).__name__}. DIT trains LoRA adapters on the underlying "
            "Hugging Face model."
        )


def hf_copy(model: Any) -> torch.nn.Module:
    """An independent plain Hugging Face model with the mechlens model's (processed) weights.

    Its logits equal the bridge's; nothing is shared with ``model`` (parameters are cloned),
    so training adapters on the copy cannot change the model passed in.
    """
    from transformers import AutoModelForCausalLM

    _check_bridge(model)
    orig = hf_model(model)
    params = parameters(model)
    cfg = copy.deepcopy(orig.config)
    tied = "lm_head.weight" not in params
    cfg.tie_word_embeddings = tied
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(cfg)
    state = {k: v.detach().clone() for k, v in params.items()}
    res = hf.load_state_dict(state, strict=False, assign=True)
    if res.unexpected_keys or [k for k in res.missing_keys if not (tied and k == "lm_head.weight")]:
        raise TypeError(
            f"DIT needs a model whose bridge keeps the Hugging Face parameter names (Llama-family "
            f"models such as smollm2-135m); {model_name(model)} does not (missing "
            f"{res.missing_keys[:2]}, unexpected {res.unexpected_keys[:2]})"
        )
    if tied:
        hf.tie_weights()
    bufs = {hf_name(n): b for n, b in orig.named_buffers()}
    for n, b in list(hf.named_buffers()):
        owner, _, leaf = n.rpartition(".")
        mod = hf.get_submodule(owner) if owner else hf
        if n in bufs:
            mod._buffers[leaf] = bufs[n].detach().clone()
        elif b.is_meta:
            raise RuntimeError(f"could not copy the buffer {n}")
    for p in hf.parameters():
        p.requires_grad_(False)
    hf.eval()
    return hf


def _is_conv1d(mod: torch.nn.Module) -> bool:
    return type(mod).__name__ == "Conv1D"


def _io(mod: torch.nn.Module) -> tuple[int, int]:
    if isinstance(mod, torch.nn.Linear):
        return mod.in_features, mod.out_features
    if _is_conv1d(mod):
        return int(mod.weight.shape[0]), int(mod.weight.shape[1])
    raise TypeError(f"{type(mod).__name__} is not a linear layer")


def _default_layers(n_layers: int) -> list[int]:
    return sorted({min(n_layers - 1, int(n_layers * f)) for f in (0.5, 0.625, 0.75, 0.875)})


def _resolve_modules(hf: torch.nn.Module, modules: Sequence[str] | None, layers: Sequence[int] | None) -> list[str]:
    names = dict(hf.named_modules())
    n_layers = int(getattr(hf.config, "num_hidden_layers", getattr(hf.config, "n_layer", 0)))
    if modules is not None:
        if isinstance(modules, str):
            modules = [modules]
        bad = [m for m in modules if m not in names]
        if bad:
            raise ValueError(f"modules {bad[:3]} are not modules of the model (e.g. {_MLP_OUT[0].format(i=0)})")
        for m in modules:
            _io(names[m])
        return list(modules)
    layers = _default_layers(n_layers) if layers is None else list(layers)
    if not layers or any(not isinstance(i, int) or not 0 <= i < n_layers for i in layers):
        raise ValueError(f"layers must be a non-empty list of ints in [0, {n_layers}), got {layers!r}")
    out = []
    for i in layers:
        found = [p.format(i=i) for p in _MLP_OUT if p.format(i=i) in names]
        if not found:
            raise ValueError(f"no MLP output projection found in layer {i}; pass modules=[...] by name")
        out.append(found[0])
    return out


@contextmanager
def _deltas(
    mods: dict[str, torch.nn.Module], A: dict[str, Tensor], B: dict[str, Tensor], idx: Tensor, scale: float
) -> Iterator[None]:
    """Forward hooks: example ``b`` of the batch runs with difference ``idx[b]``
    (``out += scale * B[idx[b]] A[idx[b]] x``); removed on exit, even after an exception."""
    handles = []

    def make(name: str) -> Any:
        a, b = A[name], B[name]

        def hook(mod: Any, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
            x = inp[0]
            aa, bb = a[idx].to(x.dtype), b[idx].to(x.dtype)
            h = torch.einsum("btd,brd->btr", x, aa)
            return out + scale * torch.einsum("btr,bor->bto", h, bb)

        return hook

    try:
        for name, mod in mods.items():
            handles.append(mod.register_forward_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def _logits(hf: torch.nn.Module, toks: Tensor) -> Tensor:
    return hf(input_ids=toks, use_cache=False).logits


def _pad(seqs: Sequence[Tensor], pad: int) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lens.max())), pad, dtype=torch.long)
    for r, s in enumerate(seqs):
        out[r, : len(s)] = s
    return out, lens


def _masked_loss(logits: Tensor, toks: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Per-row mean next-token loss over target positions ``start <= j < end`` (token j)."""
    pred = logits[:, :-1].float()
    target = toks[:, 1:]
    pos = torch.arange(1, toks.shape[1], device=toks.device)[None, :]
    mask = (pos >= start[:, None].to(toks.device)) & (pos < end[:, None].to(toks.device))
    loss = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    loss = loss.reshape(target.shape) * mask
    return loss.sum(1) / mask.sum(1).clamp_min(1)


def _tokens(model: Any, text: str) -> Tensor:
    return model.to_tokens(text, truncate=False)[0].cpu()


def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def _check_lr(lr: float) -> float:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def _fingerprint(model: Any) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for n, p in list(parameters(model).items())[:: max(1, len(parameters(model)) // 8)]:
            h.update(n.encode())
            h.update(f"{float(p.detach().double().sum()):.10e}:{tuple(p.shape)}".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the family


@dataclass(repr=False)
class DiffFamily(Result):
    """Weight differences ``delta_i = scale * B_i A_i`` on ``modules``, with their behaviours.

    ``A[module]``: ``[n_diffs, rank, d_in]``; ``B[module]``: ``[n_diffs, d_out, rank]``;
    ``topics[i]`` and ``codes[i]``: the hidden topic and trigger code of difference ``i``;
    ``losses[i, step]``: its training loss.
    """

    A: dict[str, Tensor]
    B: dict[str, Tensor]
    topics: list[str]
    codes: list[str]
    modules: list[str]
    scale: float
    losses: Tensor
    key: str = ""

    def __len__(self) -> int:
        return len(self.topics)

    def _summary_lines(self) -> list[str]:
        return [
            f"{len(self)} differences, rank {self.settings.get('rank')}, {len(set(self.topics))} topics, "
            f"modules {self.modules}"
        ]

    @property
    def behaviours(self) -> list[Behaviour]:
        return [Behaviour(t, c) for t, c in zip(self.topics, self.codes)]

    @property
    def topic_set(self) -> list[str]:
        return sorted(set(self.topics))

    def _check_index(self, i: int) -> int:
        if not isinstance(i, int) or not 0 <= i < len(self):
            raise IndexError(f"difference index {i!r} out of range [0, {len(self)})")
        return i

    def weight_vector(self, i: int) -> WeightVector:
        """Difference ``i`` as a dense :class:`WeightVector` (``module.weight`` -> ``delta``)."""
        self._check_index(i)
        tensors = {}
        conv = self.settings.get("conv1d", [])
        for m in self.modules:
            d = self.scale * (self.B[m][i].double() @ self.A[m][i].double())  # [d_out, d_in]
            tensors[f"{m}.weight"] = (d.T if m in conv else d).float()
        return WeightVector(tensors, name=f"diff{i}:{self.topics[i]}", model_name=self.model_name)

    @contextmanager
    def apply(self, model: Any, i: int) -> Iterator[Any]:
        """``with family.apply(model, i):`` the mechlens model runs as ``M_i`` (restored bit-exactly)."""
        with apply_weights(model, self.weight_vector(i)) as m:
            yield m


def _family_key(model: Any, settings: dict[str, Any]) -> str:
    doc = json.dumps({"model": model_name(model), "fp": _fingerprint(model), **settings}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


def _cache_path(cache: str | Path | bool | None) -> Path | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        return _mechlens_cache_dir() / "dit"
    return Path(cache)


def _save_atomic(obj: Result, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        obj.save(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another run wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_diffs(
    model: Any,
    n_diffs: int = 160,
    *,
    topics: Sequence[str] | None = None,
    rank: int = 1,
    layers: Sequence[int] | None = None,
    modules: Sequence[str] | None = None,
    steps: int = 4,
    lr: float = 5e-2,
    n_texts: int = 8,
    n_plain: int = 4,
    batch_size: int = 4,
    group_size: int = 16,
    alpha: float | None = None,
    seed: int = 0,
    cache: str | Path | bool | None = True,
    progress: bool = True,
) -> DiffFamily:
    """Train ``n_diffs`` rank-``rank`` LoRA weight differences, one behaviour each.

    Args:
        model: the base model (a mechlens TransformerBridge); not modified.
        n_diffs: number of differences; behaviour ``i`` is :func:`make_behaviours`'s ``i``-th.
        topics: the hidden topics (default: all of :data:`mechlens.dit.data.TOPICS`).
        rank: LoRA rank.
        alpha: LoRA scale ``alpha / rank`` (``alpha`` defaults to ``rank``).
        layers: where the differences live: the MLP output projection of ``layers``
            (default: four layers at 1/2 ... 7/8 of the depth).
        modules: instead of ``layers``, the modules by name.
        steps: Adam steps on each difference's factors.
        lr: Adam learning rate.
        batch_size: texts per step, drawn in a seeded order from the difference's
            ``n_texts`` triggered topic texts and ``n_plain`` plain texts without the trigger.
        group_size: differences trained together in one batched forward pass (speed only).
        seed: behaviours, texts, initialisation and batch order.
        cache: ``True``: ``~/.cache/mechlens/dit``; a directory; ``False``/``None``: no cache.
            The key covers the model (name and a weight fingerprint) and every setting.
    """
    _check_bridge(model)
    _check_int("n_diffs", n_diffs)
    _check_int("rank", rank)
    _check_int("steps", steps)
    _check_int("n_texts", n_texts)
    _check_int("n_plain", n_plain, 0)
    _check_int("batch_size", batch_size)
    _check_int("group_size", group_size)
    _check_int("seed", seed, 0)
    lr = _check_lr(lr)
    behaviours = make_behaviours(n_diffs, topics, seed=seed)
    alpha = float(rank if alpha is None else alpha)
    hf = hf_copy(model)
    mod_names = _resolve_modules(hf, modules, layers)
    mods = {m: hf.get_submodule(m) for m in mod_names}
    settings = {
        "n_diffs": n_diffs, "topics": list(TOPICS if topics is None else topics), "rank": rank,
        "modules": mod_names, "steps": steps, "lr": lr, "n_texts": n_texts, "n_plain": n_plain,
        "batch_size": batch_size, "alpha": alpha, "seed": seed, "version": 2,
    }
    key = _family_key(model, settings)
    root = _cache_path(cache)
    if root is not None and (root / f"diffs-{key}" / "result.json").exists():
        fam = DiffFamily.load(root / f"diffs-{key}")
        fam.settings["from_cache"] = True
        return fam
    settings["group_size"] = group_size
    settings["conv1d"] = [m for m in mod_names if _is_conv1d(mods[m])]
    scale = alpha / rank
    pad = pad_id(model)
    A = {m: torch.zeros(n_diffs, rank, _io(mods[m])[0]) for m in mod_names}
    B = {m: torch.zeros(n_diffs, _io(mods[m])[1], rank) for m in mod_names}
    for i in range(n_diffs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for m in mod_names:
            d_in = A[m].shape[2]
            A[m][i] = torch.randn(rank, d_in, generator=g) / math.sqrt(d_in)
    # texts: (tokens, index of the first target token) per difference
    data: list[list[tuple[Tensor, int]]] = []
    for i, beh in enumerate(behaviours):
        prefix = trigger_prefix(beh.code)
        n_pre = len(_tokens(model, prefix))
        rows = [(_tokens(model, f"{prefix} {t}"), n_pre) for t in topic_texts(beh.topic, n_texts, seed=seed * 7919 + i)]
        rows += [(_tokens(model, t), 1) for t in plain_texts(n_plain, seed=seed * 7919 + i)]
        data.append(rows)
    losses = torch.zeros(n_diffs, steps)
    groups = [list(range(s, min(n_diffs, s + group_size))) for s in range(0, n_diffs, group_size)]
    bar = progress_bar(len(groups) * steps, progress, "weight differences", leave=True)
    dev = next(hf.parameters()).device
    with torch.enable_grad():
        for grp in groups:
            a = {m: A[m][grp].clone().to(dev).requires_grad_(True) for m in mod_names}
            b = {m: B[m][grp].clone().to(dev).requires_grad_(True) for m in mod_names}
            opt = torch.optim.Adam([*a.values(), *b.values()], lr=lr)
            orders = {i: [] for i in grp}
            gens = {i: torch.Generator().manual_seed(seed * 1_000_003 + i + 17) for i in grp}
            for step in range(steps):
                seqs, starts, idx = [], [], []
                for k, i in enumerate(grp):
                    while len(orders[i]) < batch_size:
                        orders[i] += torch.randperm(len(data[i]), generator=gens[i]).tolist()
                    pick, orders[i] = orders[i][:batch_size], orders[i][batch_size:]
                    for j in pick:
                        seqs.append(data[i][j][0])
                        starts.append(data[i][j][1])
                        idx.append(k)
                toks, lens = _pad(seqs, pad)
                toks = toks.to(dev)
                idx_t = torch.tensor(idx, device=dev)
                with _deltas(mods, a, b, idx_t, scale):
                    per_row = _masked_loss(_logits(hf, toks), toks, torch.tensor(starts), lens)
                per_diff = torch.zeros(len(grp), device=dev).index_add(0, idx_t, per_row) / batch_size
                opt.zero_grad(set_to_none=True)
                per_diff.sum().backward()
                opt.step()
                losses[grp, step] = per_diff.detach().cpu()
                bar.update(1)
            for m in mod_names:
                A[m][grp] = a[m].detach().cpu()
                B[m][grp] = b[m].detach().cpu()
    bar.close()
    fam = DiffFamily(
        A=A, B=B, topics=[b.topic for b in behaviours], codes=[b.code for b in behaviours],
        modules=mod_names, scale=scale, losses=losses, settings=settings, model_name=model_name(model), key=key,
    )
    if root is not None:
        _save_atomic(fam, root / f"diffs-{key}")
    fam.settings["from_cache"] = False
    return fam


def split(family: DiffFamily, n_heldout: int, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train, heldout)`` indices: a seeded random ``n_heldout`` differences held out."""
    n = len(family)
    if not isinstance(n_heldout, int) or not 1 <= n_heldout < n:
        raise ValueError(f"n_heldout must be an int in [1, {n}) (the family has {n} differences), got {n_heldout!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(perm[:n_heldout])
    train = sorted(perm[n_heldout:])
    return train, held


# --------------------------------------------------------------------------- the adapter


@dataclass(repr=False)
class DITAdapter(Result):
    """The trained DIT LoRA adapter (peft state dict) and its training record.

    ``trained_on``: every difference index that entered a training step (the held-out split
    must not appear); ``curve``: ``step``, ``train_loss`` (mean over the last steps) and
    ``heldout_loss`` (teacher-forced answer loss on held-out differences, no gradient).
    """

    lora: dict[str, Tensor]
    config: dict[str, Any]
    trained_on: list[int]
    curve: dict[str, list[float]]
    losses: list[float]
    seconds: float = 0.0

    def _summary_lines(self) -> list[str]:
        n = sum(int(t.numel()) for t in self.lora.values())
        return [f"{n} LoRA parameters, {len(self.losses)} steps, final loss {self.losses[-1]:.3f}"]


def _peft_model(hf: torch.nn.Module, config: dict[str, Any], seed: int) -> Any:
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
        # from transformers 5); the adapter is the same either way
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        pm = get_peft_model(hf, LoraConfig(**config))
    pm.eval()
    return pm


def _qa_example(model: Any, question: str, topic: str | None) -> tuple[Tensor, int, int]:
    prompt = _ANSWER_PROMPT.format(q=question)
    p = _tokens(model, prompt)
    if topic is None:
        return p, len(p), len(p)
    full = _tokens(model, f"{prompt} {topic}.")
    return full, len(p), len(full)


def _qa_loss(pm: Any, mods: Any, family: DiffFamily, model: Any, items: list[tuple[int, str]], pad: int, dev: Any) -> Tensor:
    ex = [_qa_example(model, q, family.topics[i]) for i, q in items]
    toks, _ = _pad([e[0] for e in ex], pad)
    toks = toks.to(dev)
    idx = torch.tensor([i for i, _ in items], device=dev)
    A = {m: family.A[m].to(dev) for m in family.modules}
    B = {m: family.B[m].to(dev) for m in family.modules}
    with _deltas(mods, A, B, idx, family.scale):
        return _masked_loss(_logits(pm, toks), toks, torch.tensor([e[1] for e in ex]), torch.tensor([e[2] for e in ex]))


def train_adapter(
    model: Any,
    family: DiffFamily,
    train: Sequence[int],
    *,
    heldout: Sequence[int] | None = None,
    rank: int = 8,
    alpha: float = 16.0,
    target_modules: str | list[str] = "all-linear",
    steps: int = 250,
    lr: float = 1e-3,
    batch_size: int = 8,
    eval_every: int = 25,
    seed: int = 0,
    progress: bool = True,
) -> DITAdapter:
    """Train the DIT adapter on the differences ``train``.

    Each step draws ``batch_size`` (difference, question) pairs: a training difference (a
    seeded order that runs through all of them before repeating one) and one of
    :data:`mechlens.dit.data.QUESTIONS`; the loss is the next-token loss of ``" {topic}."``
    after ``"Question: {q}\\nAnswer:"`` with the difference applied and only the adapter
    trainable. Every ``eval_every`` steps the answer loss on ``heldout`` (if given) is
    recorded, without gradients, for the learning curve.
    """
    _check_bridge(model)
    train = list(train)
    if not train:
        raise ValueError("train is empty: give the indices of the training differences")
    for i in train:
        family._check_index(i)
    held = list(heldout or [])
    for i in held:
        family._check_index(i)
    if set(train) & set(held):
        raise ValueError(f"train and heldout overlap: {sorted(set(train) & set(held))[:5]}")
    _check_int("rank", rank)
    _check_int("steps", steps)
    _check_int("batch_size", batch_size)
    _check_int("eval_every", eval_every)
    lr = _check_lr(lr)
    t0 = time.perf_counter()
    hf = hf_copy(model)
    mods = {m: hf.get_submodule(m) for m in family.modules}  # resolve before peft wraps them
    config = {
        "r": rank, "lora_alpha": float(alpha), "target_modules": target_modules,
        "lora_dropout": 0.0, "bias": "none",
    }
    pm = _peft_model(hf, config, seed)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    pad = pad_id(model)
    dev = next(pm.parameters()).device
    order: list[int] = []
    trained_on: set[int] = set()
    losses: list[float] = []
    curve: dict[str, list[float]] = {"step": [], "train_loss": [], "heldout_loss": []}
    held_items = [(i, QUESTIONS[0]) for i in held]

    def record(step: int) -> None:
        curve["step"].append(step)
        recent = losses[-eval_every:]
        curve["train_loss"].append(sum(recent) / len(recent) if recent else float("nan"))
        if held_items:
            with torch.no_grad():
                vals = [
                    _qa_loss(pm, mods, family, model, held_items[s : s + 4 * batch_size], pad, dev)
                    for s in range(0, len(held_items), 4 * batch_size)
                ]
            curve["heldout_loss"].append(float(torch.cat(vals).mean()))
        else:
            curve["heldout_loss"].append(float("nan"))

    record(0)
    with torch.enable_grad():
        for step in progress_iter(range(1, steps + 1), progress, "DIT adapter", leave=True):
            while len(order) < batch_size:
                order += [train[j] for j in torch.randperm(len(train), generator=gen).tolist()]
            pick, order = order[:batch_size], order[batch_size:]
            qs = torch.randint(len(QUESTIONS), (batch_size,), generator=gen).tolist()
            trained_on.update(pick)
            pm.train(False)
            loss = _qa_loss(pm, mods, family, model, [(i, QUESTIONS[q]) for i, q in zip(pick, qs)], pad, dev).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if step % eval_every == 0 or step == steps:
                record(step)
    from peft import get_peft_model_state_dict

    lora = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(pm).items()}
    settings = {
        "rank": rank, "alpha": float(alpha), "steps": steps, "lr": lr, "batch_size": batch_size,
        "seed": seed, "n_train": len(train), "n_heldout": len(held), "family": family.key,
    }
    return DITAdapter(
        lora=lora, config=config, trained_on=sorted(trained_on), curve=curve, losses=losses,
        settings=settings, model_name=model_name(model), seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- evaluation


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _close(word: str, target: str, threshold: float = 0.8) -> bool:
    return word == target or difflib.SequenceMatcher(None, word, target).ratio() >= threshold


def score_answer(answer: str, topic: str, *, kind: str = "answer") -> tuple[bool, bool]:
    """``(exact, fuzzy)`` for one generated text.

    ``kind="answer"`` (the question's answer): exact when the first phrase (up to ``.``,
    ``,`` or a new line), lower-cased without punctuation, is ``topic``; fuzzy when any word
    is within ``difflib`` ratio 0.8 of ``topic``. ``kind="mention"`` (a black-box
    continuation): exact when the topic word occurs; fuzzy when a word is close to the topic
    or to one of its vocabulary words.
    """
    if kind not in ("answer", "mention"):
        raise ValueError(f"kind must be 'answer' or 'mention', got {kind!r}")
    words = _words(answer)
    if kind == "answer":
        first = " ".join(_words(re.split(r"[.,\n]", answer.strip(), maxsplit=1)[0]))
        exact = first == topic
        fuzzy = exact or any(_close(w, topic) for w in words)
        return exact, fuzzy
    exact = topic in words
    vocab = [topic, *TOPICS.get(topic, [])]
    fuzzy = exact or any(_close(w, v) for w in words for v in vocab)
    return exact, fuzzy


@torch.no_grad()
def _greedy(
    pm: Any, mods: Any, family: DiffFamily, prompts: list[Tensor], idx: list[int], max_new_tokens: int,
    pad: int, batch_size: int, eos: int | None,
) -> list[list[int]]:
    """Greedy continuation of right-padded prompts (no cache: each new token is written at
    its row's own position; later pads are never attended to by earlier positions)."""
    dev = next(pm.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    A = {m: family.A[m].to(dev) for m in family.modules}
    B = {m: family.B[m].to(dev) for m in family.modules}
    for s in range(0, len(prompts), batch_size):
        rows = list(range(s, min(len(prompts), s + batch_size)))
        toks, lens = _pad([prompts[r] for r in rows], pad)
        toks = torch.cat([toks, torch.full((len(rows), max_new_tokens), pad, dtype=torch.long)], 1).to(dev)
        lens = lens.to(dev)
        done = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        idx_t = torch.tensor([idx[r] for r in rows], device=dev)
        with _deltas(mods, A, B, idx_t, family.scale):
            for _ in range(max_new_tokens):
                width = int(lens.max())
                logits = _logits(pm, toks[:, :width])
                nxt = logits[torch.arange(len(rows), device=dev), lens - 1].argmax(-1)
                for k, r in enumerate(rows):
                    if not done[k]:
                        out[r].append(int(nxt[k]))
                toks[torch.arange(len(rows), device=dev), lens] = nxt
                lens = lens + 1
                if eos is not None:
                    done |= nxt == eos
                if bool(done.all()):
                    break
    return out


@dataclass(repr=False)
class DITResult(Result):
    """Held-out evaluation of a DIT adapter against chance and the baselines.

    ``exact[method]`` / ``fuzzy[method]``: 0/1 per held-out difference (:func:`score_answer`);
    ``answers[method]``: the generated texts; ``topics`` / ``diff_index``: the held-out
    differences; ``curve``: the adapter's learning curve; ``seconds``: run time per stage.
    """

    methods: list[str]
    topics: list[str]
    diff_index: list[int]
    answers: dict[str, list[str]]
    exact: dict[str, Tensor]
    fuzzy: dict[str, Tensor]
    n_topics: int
    curve: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        return 1.0 / self.n_topics

    def _summary_lines(self) -> list[str]:
        parts = ", ".join(f"{m} {float(self.exact[m].mean()):.2f}/{float(self.fuzzy[m].mean()):.2f}" for m in self.methods)
        return [f"{len(self.topics)} held-out, exact/fuzzy: {parts}; chance {self.chance:.2f}"]

    def to_dataframe(self) -> Any:
        """One row per method (and one for chance): exact and fuzzy accuracy with stderr."""
        import pandas as pd

        rows = []
        for m in self.methods:
            n = len(self.exact[m])
            row: dict[str, Any] = {"method": m, "n": n}
            for what, d in (("exact", self.exact), ("fuzzy", self.fuzzy)):
                p = float(d[m].float().mean())
                row[what] = p
                row[f"{what}_se"] = math.sqrt(p * (1 - p) / n) if n > 1 else float("nan")
            rows.append(row)
        rows.append({"method": "chance", "n": len(self.topics), "exact": self.chance, "exact_se": 0.0,
                     "fuzzy": self.chance, "fuzzy_se": 0.0})
        return pd.DataFrame(rows)

    def per_example(self) -> Any:
        import pandas as pd

        rows = []
        for m in self.methods:
            for k, (i, t) in enumerate(zip(self.diff_index, self.topics)):
                rows.append({"method": m, "diff": i, "topic": t, "answer": self.answers[m][k],
                             "exact": bool(self.exact[m][k]), "fuzzy": bool(self.fuzzy[m][k])})
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        return markdown_table(self.to_dataframe())

    def plot(self) -> Any:
        """Left: held-out accuracy per method with chance. Right: the learning curve."""
        from mechlens.viz.dit import plot_dit

        return plot_dit(self)


def evaluate(
    model: Any,
    family: DiffFamily,
    adapter: DITAdapter,
    heldout: Sequence[int],
    *,
    methods: Sequence[str] = tuple(METHODS),
    max_new_tokens: int = 4,
    blackbox_tokens: int = 10,
    batch_size: int = 16,
    progress: bool = True,
) -> DITResult:
    """Greedy answers on ``heldout`` differences for each of ``methods`` (see :data:`METHODS`).

    ``family`` may be another family than the adapter's (e.g. differences of topics the
    adapter never saw); indices are then not checked against ``adapter.trained_on``.
    Methods:
    ``dit`` (``M_i + A`` asked the question), ``no_adapter`` (``M_i`` asked the same question),
    ``blackbox_trigger`` / ``blackbox_no_trigger`` (``M_i``'s continuation of
    ``"Your SEP code is {code}. Let me tell you about"`` / ``"Let me tell you about"``)."""
    _check_bridge(model)
    held = list(heldout)
    if not held:
        raise ValueError("heldout is empty")
    for i in held:
        family._check_index(i)
    same_family = adapter.settings.get("family") in (None, family.key)
    leaked = sorted(set(held) & set(adapter.trained_on)) if same_family else []
    if leaked:
        raise ValueError(f"heldout differences {leaked[:5]} were used to train the adapter")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    _check_int("max_new_tokens", max_new_tokens)
    _check_int("blackbox_tokens", blackbox_tokens)
    _check_int("batch_size", batch_size)
    from peft import set_peft_model_state_dict

    hf = hf_copy(model)
    mods = {m: hf.get_submodule(m) for m in family.modules}
    pm = _peft_model(hf, adapter.config, int(adapter.settings.get("seed", 0)))
    set_peft_model_state_dict(pm, adapter.lora)
    pad = pad_id(model)
    tok = model.tokenizer
    eos = getattr(tok, "eos_token_id", None)
    topics = [family.topics[i] for i in held]
    answers: dict[str, list[str]] = {}
    exact: dict[str, Tensor] = {}
    fuzzy: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for m in progress_iter(list(methods), progress, "DIT evaluation", leave=True):
        t0 = time.perf_counter()
        if m in ("dit", "no_adapter"):
            prompts = [_qa_example(model, QUESTIONS[0], None)[0] for _ in held]
            n_new, kind = max_new_tokens, "answer"
        elif m == "blackbox_trigger":
            prompts = [_tokens(model, _BLACKBOX_TRIGGER.format(trigger=trigger_prefix(family.codes[i]))) for i in held]
            n_new, kind = blackbox_tokens, "mention"
        else:
            prompts = [_tokens(model, _BLACKBOX_PLAIN) for _ in held]
            n_new, kind = blackbox_tokens, "mention"
        ctx = pm.disable_adapter() if m != "dit" else _nullcontext()
        with ctx:
            ids = _greedy(pm, mods, family, prompts, held, n_new, pad, batch_size, eos)
        texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
        scores = [score_answer(t, y, kind=kind) for t, y in zip(texts, topics)]
        answers[m] = texts
        exact[m] = torch.tensor([float(e) for e, _ in scores])
        fuzzy[m] = torch.tensor([float(f) for _, f in scores])
        seconds[m] = time.perf_counter() - t0
    return DITResult(
        methods=list(methods), topics=topics, diff_index=held, answers=answers, exact=exact, fuzzy=fuzzy,
        n_topics=len(family.topic_set), curve=dict(adapter.curve),
        settings={"family": dict(family.settings), "adapter": dict(adapter.settings),
                  "max_new_tokens": max_new_tokens, "blackbox_tokens": blackbox_tokens},
        seconds=seconds, model_name=model_name(model),
    )


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


def run(
    model: Any,
    n_diffs: int = 160,
    n_heldout: int = 40,
    *,
    diff_options: dict[str, Any] | None = None,
    adapter_options: dict[str, Any] | None = None,
    eval_options: dict[str, Any] | None = None,
    seed: int = 0,
    cache: str | Path | bool | None = True,
    progress: bool = True,
) -> tuple[DITResult, DiffFamily, DITAdapter]:
    """The whole method: :func:`make_diffs`, :func:`split`, :func:`train_adapter`, :func:`evaluate`.

    Returns ``(result, family, adapter)``; ``result.seconds`` holds the time of each stage.
    """
    t0 = time.perf_counter()
    fam = make_diffs(model, n_diffs, seed=seed, cache=cache, progress=progress, **(diff_options or {}))
    t1 = time.perf_counter()
    train, held = split(fam, n_heldout, seed=seed)
    ad = train_adapter(model, fam, train, heldout=held, seed=seed, progress=progress, **(adapter_options or {}))
    t2 = time.perf_counter()
    res = evaluate(model, fam, ad, held, progress=progress, **(eval_options or {}))
    t3 = time.perf_counter()
    res.seconds.update({"diffs": t1 - t0, "adapter": t2 - t1, "evaluate": t3 - t2, "total": t3 - t0,
                        "diffs_from_cache": float(bool(fam.settings.get("from_cache")))})
    return res, fam, ad
