"""Steering in weight space: task vectors, contrastive weight steering, monitoring, anatomy.

A *weight vector* is a difference of two parameter sets of one architecture, kept as a dict
``parameter name -> tensor`` (:class:`WeightVector`; names are the model's
``named_parameters()`` with TransformerLens' wrapper names removed, e.g.
``model.layers.3.mlp.down_proj.weight``).

- **Task vector** (Ilharco et al. 2023): ``tau = theta_tuned - theta_base``, what a
  fine-tune changed. :func:`finetune` makes a small seeded full fine-tune (a deep copy; the
  original model is untouched) and :func:`task_vector` takes the difference.
- **Contrastive weight steering** (arXiv 2511.05408): fine-tune the base once on texts that
  show a behaviour and once on texts that show its opposite; ``w = theta_pos - theta_neg``
  cancels what the two fine-tunes share (the topic, the style of the data) and keeps the
  behaviour. ``with apply_weights(model, w, coeff):`` runs the model with
  ``theta_base + coeff * w``: ``coeff > 0`` adds the behaviour, ``coeff < 0`` removes it (also from an
  already fine-tuned model, to undo a side effect). The weights are restored bit-exactly on
  exit, even after an exception.
- **Monitoring**: during a fine-tune, the cosine between the update so far
  (``theta_t - theta_base``) and a known behaviour vector, per layer, flags a fine-tune that
  is drifting towards (cosine > 0) or away from (cosine < 0) that behaviour, before any
  evaluation is run. :func:`monitor` takes saved checkpoints; :class:`WeightMonitor` is a
  callback for :func:`finetune` that computes the same numbers on the fly without keeping
  copies of the weights.
- **Anatomy of an update**: :func:`diff_anatomy` gives, per parameter tensor, the Frobenius
  norm of the update, its norm relative to the base weight, and the *effective rank* of
  2-D updates: ``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` over the singular values ``s``
  (Roy & Vetterli 2007; entropy-based, no threshold). It is 1 for a rank-one update and
  ``min(shape)`` for an update with equal singular values; a small effective rank says the
  fine-tune changed few directions of that matrix.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.engine import padded_batches, progress_iter, train_forward
from mechlens.engine.bridge import drop_copied_capture_hooks, hf_name
from mechlens.models import model_name
from mechlens.results import Result
from mechlens.validate import check_coefficient

__all__ = [
    "WeightVector",
    "MonitorResult",
    "WeightMonitor",
    "DiffAnatomy",
    "parameters",
    "clone_model",
    "finetune",
    "task_vector",
    "contrastive_weight_vector",
    "apply_weights",
    "monitor",
    "diff_anatomy",
    "layer_group",
    "effective_rank",
]

_LAYER = re.compile(r"(?:^|\.)(?:h|layers|blocks|layer)\.(\d+)(?:\.|$)")
_EMBED = re.compile(r"emb|wte|wpe")


def parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """The model's parameters by readable name (tied parameters once)."""
    return {hf_name(n): p for n, p in model.named_parameters()}


def layer_group(name: str) -> str:
    """``"L{i}"`` for a parameter of block ``i``, ``"embed"`` for embeddings, else ``"final"``."""
    m = _LAYER.search(name)
    if m:
        return f"L{int(m.group(1))}"
    return "embed" if _EMBED.search(name) else "final"


def _group_order(groups: Sequence[str]) -> list[str]:
    def key(g: str) -> tuple[int, int]:
        if g == "embed":
            return (0, 0)
        if g.startswith("L"):
            return (1, int(g[1:]))
        return (2, 0)

    return sorted(set(groups), key=key)


# --------------------------------------------------------------------------- weight vectors


@dataclass
class WeightVector(Result):
    """A direction in weight space: ``tensors[name]`` has the shape of that parameter."""

    tensors: dict[str, Tensor]
    name: str = "weights"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("a WeightVector needs at least one tensor")

    def __len__(self) -> int:
        return len(self.tensors)

    def _check(self, other: WeightVector) -> None:
        if list(self.tensors) != list(other.tensors):
            missing = sorted(set(self.tensors) ^ set(other.tensors))[:5]
            raise ValueError(f"weight vectors cover different parameters (e.g. {missing})")

    def __add__(self, other: WeightVector) -> WeightVector:
        self._check(other)
        return WeightVector({k: v + other.tensors[k] for k, v in self.tensors.items()}, f"({self.name} + {other.name})", model_name=self.model_name)

    def __sub__(self, other: WeightVector) -> WeightVector:
        self._check(other)
        return WeightVector({k: v - other.tensors[k] for k, v in self.tensors.items()}, f"({self.name} - {other.name})", model_name=self.model_name)

    def __mul__(self, k: float) -> WeightVector:
        return WeightVector({n: v * k for n, v in self.tensors.items()}, f"{k:g} * {self.name}", model_name=self.model_name)

    __rmul__ = __mul__

    def __neg__(self) -> WeightVector:
        return self * -1.0

    def norm(self) -> float:
        return math.sqrt(sum(float(v.double().pow(2).sum()) for v in self.tensors.values()))

    def dot(self, other: WeightVector) -> float:
        self._check(other)
        return sum(float((v.double() * other.tensors[k].double()).sum()) for k, v in self.tensors.items())

    def cosine(self, other: WeightVector) -> float:
        """Cosine similarity over all parameters together."""
        denom = self.norm() * other.norm()
        return self.dot(other) / denom if denom > 0 else float("nan")

    def group_norms(self) -> dict[str, float]:
        """L2 norm per layer group (``embed``, ``L0`` ... ``final``)."""
        sq: dict[str, float] = {}
        for k, v in self.tensors.items():
            g = layer_group(k)
            sq[g] = sq.get(g, 0.0) + float(v.double().pow(2).sum())
        return {g: math.sqrt(sq[g]) for g in _group_order(list(sq))}

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {"name": k, "group": layer_group(k), "shape": tuple(v.shape), "norm": float(v.double().norm())}
                for k, v in self.tensors.items()
            ]
        )

    def plot(self) -> Any:
        """Norm of the vector per layer group."""
        from mechlens.viz.steering import plot_weight_vector

        return plot_weight_vector(self)


def _check_same_arch(base: dict[str, Tensor], other: dict[str, Tensor], what: str) -> None:
    if list(base) != list(other):
        diff = sorted(set(base) ^ set(other))[:5]
        raise ValueError(f"{what} does not have the base model's parameters (differences: {diff})")
    for k, v in base.items():
        if v.shape != other[k].shape:
            raise ValueError(f"{what}: parameter {k} has shape {tuple(other[k].shape)}, base has {tuple(v.shape)}")


def task_vector(base: Any, tuned: Any) -> WeightVector:
    """``theta_tuned - theta_base`` for every parameter."""
    pb, pt = parameters(base), parameters(tuned)
    _check_same_arch(pb, pt, "tuned")
    with torch.no_grad():
        tensors = {k: (pt[k].detach() - pb[k].detach()).cpu() for k in pb}
    return WeightVector(tensors, name=f"task:{model_name(tuned)}", model_name=model_name(base))


def contrastive_weight_vector(base: Any, pos_tuned: Any, neg_tuned: Any) -> WeightVector:
    """``w = theta_pos - theta_neg`` (= task vector of pos minus task vector of neg).

    Both fine-tunes must start from ``base`` (checked by shape and name only)."""
    pb, pp, pn = parameters(base), parameters(pos_tuned), parameters(neg_tuned)
    _check_same_arch(pb, pp, "pos_tuned")
    _check_same_arch(pb, pn, "neg_tuned")
    with torch.no_grad():
        tensors = {k: (pp[k].detach() - pn[k].detach()).cpu() for k in pb}
    return WeightVector(tensors, name="contrastive", model_name=model_name(base))


@contextmanager
def apply_weights(
    model: Any, vector: WeightVector | Mapping[str, Tensor], coeff: float = 1.0
) -> Iterator[Any]:
    """``with apply_weights(model, w, coeff):`` the model runs with ``theta + coeff * w``.

    The touched parameters are copied before the change and copied back on exit, so the
    model returns to its exact (bit-for-bit) weights, even when the block raises.
    """
    tensors = vector.tensors if isinstance(vector, WeightVector) else dict(vector)
    if not tensors:
        raise ValueError("vector is empty: nothing to apply")
    coeff = check_coefficient(coeff, "coeff")
    params = parameters(model)
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise ValueError(
            f"vector has parameters the model does not have: {unknown[:3]}; "
            f"model parameters look like {list(params)[:3]}"
        )
    for n, v in tensors.items():
        if v.shape != params[n].shape:
            raise ValueError(f"vector[{n!r}] has shape {tuple(v.shape)}, the parameter has {tuple(params[n].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"vector[{n!r}] has non-finite values (NaN or inf); recompute the weight vector")
    saved = {n: params[n].detach().clone() for n in tensors}
    try:
        with torch.no_grad():
            for n, v in tensors.items():
                p = params[n]
                p.add_(v.to(device=p.device, dtype=p.dtype), alpha=float(coeff))
        yield model
    finally:
        with torch.no_grad():
            for n, old in saved.items():
                params[n].copy_(old)


# --------------------------------------------------------------------------- fine-tuning


def _transient_tensors(model: Any) -> dict[int, Tensor]:
    """Tensors from the last forward pass that bridge modules keep as attributes (attention
    patterns, captured residuals); with autograd history they cannot be deep-copied."""
    memo: dict[int, Tensor] = {}
    for mod in model.modules():
        for v in vars(mod).values():
            vals = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else [v]
            for t in vals:
                if isinstance(t, Tensor) and t.grad_fn is not None:
                    memo[id(t)] = t.detach()
    return memo


def clone_model(model: Any) -> Any:
    """An independent copy of a TransformerLens bridge (weights, hooks, config).

    ``copy.deepcopy`` alone is not enough for a ``TransformerBridge`` that has already run:
    its blocks wire forward pre-hooks whose closures hold weak proxies to the *original*
    modules (so the copy would write its captured residuals into the original), and it
    keeps tensors with autograd history that refuse to be deep-copied. This drops both
    from the copy; the copy re-wires its own capture hooks on its first forward pass.
    """
    new = copy.deepcopy(model, _transient_tensors(model))
    drop_copied_capture_hooks(new)
    return new


def _lm_loss(model: Any, toks: Tensor, lens: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the real (unpadded) tokens of a right-padded batch."""
    # the engine's training forward pass, on the hooks backend: the fast backend computes the
    # residual before start_layer without gradients, so the embedding would silently not train
    forward = train_forward(model, toks, backend="hooks", output="all")
    logits = forward(torch.arange(len(toks)), [])
    pred = logits[:, :-1].float()
    target = toks[:, 1:]
    # target position j is real when j + 1 <= last real index
    mask = torch.arange(target.shape[1], device=toks.device)[None, :] < lens.to(toks.device)[:, None]
    loss = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    return (loss * mask.reshape(-1)).sum() / mask.sum()


def finetune(
    model: Any,
    texts: Sequence[str],
    *,
    steps: int = 20,
    lr: float = 1e-5,
    seed: int = 0,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    callback: Callable[[int, Any], None] | None = None,
    progress: bool = True,
) -> Any:
    """A small seeded full fine-tune (next-token loss on ``texts``) of a deep copy of ``model``.

    Args:
        texts: training texts; each step uses ``batch_size`` of them, in a seeded order
            that runs through all texts before repeating one.
        steps: AdamW steps on every parameter.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: batch order (the only randomness: the copy is trained in eval mode, so
            dropout is off and the result is a deterministic function of the inputs).
        callback: ``callback(step, model)`` after every step (steps count from 1), e.g. a
            :class:`WeightMonitor`.

    Returns:
        The fine-tuned copy, in eval mode; ``model`` itself is not modified. Its
        ``finetune_log`` attribute holds the settings and the loss of every step.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1 (got steps={steps}, batch_size={batch_size})")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    tuned = clone_model(model)
    tuned.eval()
    toks = [tuned.to_tokens(t, truncate=False)[0].cpu() for t in texts]
    too_long = [i for i, t in enumerate(toks) if len(t) > tuned.cfg.n_ctx]
    if too_long:
        raise ValueError(f"texts {too_long[:5]} are longer than the model's context ({tuned.cfg.n_ctx} tokens)")
    if any(len(t) < 2 for t in toks):
        raise ValueError("every text needs at least one token to predict (two tokens with BOS)")
    params = [p for p in tuned.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    dev = next(iter(tuned.parameters())).device
    pad = getattr(getattr(tuned, "tokenizer", None), "pad_token_id", None) or 0
    losses = []
    with torch.enable_grad():
        for step in progress_iter(range(1, steps + 1), progress, "finetune", leave=True):
            while len(order) < batch_size:
                order += torch.randperm(len(texts), generator=gen).tolist()
            batch, order = order[:batch_size], order[batch_size:]
            _, padded, last = next(padded_batches([toks[i] for i in batch], batch_size, int(pad)))
            loss = _lm_loss(tuned, padded.to(dev), last)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, tuned)
    opt.zero_grad(set_to_none=True)
    tuned.eval()
    tuned.finetune_log = {
        "steps": steps, "lr": lr, "seed": seed, "batch_size": batch_size,
        "weight_decay": weight_decay, "n_texts": len(texts), "losses": losses,
    }
    return tuned


# --------------------------------------------------------------------------- monitoring


def _group_cosines(
    base: Mapping[str, Tensor], current: Mapping[str, Tensor] | None, update: Mapping[str, Tensor] | None,
    behaviour: WeightVector, groups: list[str],
) -> tuple[list[float], float, float]:
    """Per-group and overall cosine between the update (current - base, or given) and behaviour."""
    dot = dict.fromkeys(groups, 0.0)
    uu = dict.fromkeys(groups, 0.0)
    bb = dict.fromkeys(groups, 0.0)
    with torch.no_grad():
        for name, b in behaviour.tensors.items():
            if update is not None:
                u = update[name].detach().cpu().double().flatten()
            else:
                u = current[name].detach().cpu().double().flatten() - base[name].detach().cpu().double().flatten()
            bd = b.detach().cpu().double().flatten()
            g = layer_group(name)
            # dot products in float64, without the temporaries of elementwise products
            dot[g] += float(torch.dot(u, bd))
            uu[g] += float(torch.dot(u, u))
            bb[g] += float(torch.dot(bd, bd))

    def cos(d: float, a: float, c: float) -> float:
        return d / math.sqrt(a * c) if a > 0 and c > 0 else float("nan")

    per = [cos(dot[g], uu[g], bb[g]) for g in groups]
    overall = cos(sum(dot.values()), sum(uu.values()), sum(bb.values()))
    return per, overall, math.sqrt(sum(uu.values()))


@dataclass
class MonitorResult(Result):
    """Cosine between each checkpoint's update and a behaviour weight vector.

    ``cosine[checkpoint, group]`` per layer group (``embed``, ``L0`` ... ``final``),
    ``overall[checkpoint]`` over all parameters, ``update_norm[checkpoint]``.
    """

    steps: list[int]
    groups: list[str]
    cosine: Float[Tensor, "checkpoint group"]
    overall: Float[Tensor, " checkpoint"]
    update_norm: Float[Tensor, " checkpoint"]
    behaviour: str = "behaviour"
    name: str = "run"

    def to_dataframe(self) -> Any:
        import pandas as pd

        rows = []
        for i, s in enumerate(self.steps):
            for j, g in enumerate(self.groups):
                rows.append({"step": s, "group": g, "cosine": float(self.cosine[i, j])})
            rows.append({"step": s, "group": "all", "cosine": float(self.overall[i])})
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """Left: overall cosine over steps. Right: per-layer cosine (steps x layers heatmap)."""
        from mechlens.viz.steering import plot_monitor

        return plot_monitor(self)


def monitor(
    base: Any,
    checkpoints: Mapping[int, Any] | Sequence[Any],
    behaviour_vector: WeightVector,
    *,
    name: str = "run",
    progress: bool = True,
) -> MonitorResult:
    """Per-layer cosine between each checkpoint's update and ``behaviour_vector``.

    Args:
        base: the model the fine-tune started from.
        checkpoints: ``{step: model or task WeightVector}`` (a list counts steps from 1).
            A model's update is ``theta_ckpt - theta_base``; a WeightVector is taken as the
            update itself.
        behaviour_vector: e.g. a :func:`contrastive_weight_vector`.
    """
    if not isinstance(behaviour_vector, WeightVector):
        raise TypeError("behaviour_vector must be a WeightVector")
    items = list(checkpoints.items()) if isinstance(checkpoints, Mapping) else list(enumerate(checkpoints, 1))
    if not items:
        raise ValueError("checkpoints is empty")
    pb = parameters(base)
    missing = [n for n in behaviour_vector.tensors if n not in pb]
    if missing:
        raise ValueError(f"behaviour_vector has parameters the base model lacks: {missing[:3]}")
    groups = _group_order([layer_group(n) for n in behaviour_vector.tensors])
    rows, overall, norms = [], [], []
    for _, ck in progress_iter(items, progress, "monitor", leave=True):
        if isinstance(ck, WeightVector):
            per, o, un = _group_cosines(pb, None, ck.tensors, behaviour_vector, groups)
        else:
            pc = parameters(ck)
            _check_same_arch(pb, pc, "checkpoint")
            per, o, un = _group_cosines(pb, pc, None, behaviour_vector, groups)
        rows.append(per)
        overall.append(o)
        norms.append(un)
    return MonitorResult(
        steps=[int(s) for s, _ in items],
        groups=groups,
        cosine=torch.tensor(rows),
        overall=torch.tensor(overall),
        update_norm=torch.tensor(norms),
        behaviour=behaviour_vector.name,
        name=name,
        model_name=model_name(base),
    )


class WeightMonitor:
    """A :func:`finetune` callback that records :func:`monitor`'s numbers every ``every`` steps.

    ``mon = WeightMonitor(base, w, every=5); tuned = finetune(base, texts, callback=mon);
    mon.result()``. Only the cosines are kept, never copies of the weights.
    """

    def __init__(self, base: Any, behaviour_vector: WeightVector, *, every: int = 1, name: str = "run"):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.base = {k: v.detach().clone().cpu() for k, v in parameters(base).items()}
        self.behaviour = behaviour_vector
        self.every = every
        self.name = name
        self.model_name = model_name(base)
        self.groups = _group_order([layer_group(n) for n in behaviour_vector.tensors])
        self.steps: list[int] = []
        self.rows: list[list[float]] = []
        self.overall: list[float] = []
        self.norms: list[float] = []

    def __call__(self, step: int, model: Any) -> None:
        if step % self.every:
            return
        per, o, un = _group_cosines(self.base, parameters(model), None, self.behaviour, self.groups)
        self.steps.append(step)
        self.rows.append(per)
        self.overall.append(o)
        self.norms.append(un)

    def result(self) -> MonitorResult:
        if not self.steps:
            raise ValueError("the monitor recorded no step yet (is every larger than the number of steps?)")
        return MonitorResult(
            steps=list(self.steps), groups=list(self.groups), cosine=torch.tensor(self.rows),
            overall=torch.tensor(self.overall), update_norm=torch.tensor(self.norms),
            behaviour=self.behaviour.name, name=self.name, model_name=self.model_name,
        )


# --------------------------------------------------------------------------- anatomy


def effective_rank(s: Float[Tensor, " k"]) -> float:
    """Entropy effective rank ``exp(-sum p log p)``, ``p = s / s.sum()`` (0 for a zero matrix)."""
    s = s.double().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class DiffAnatomy(Result):
    """Per-parameter anatomy of ``tuned - base``.

    ``fro_norm``: Frobenius norm of the update; ``rel_norm``: divided by the base weight's
    norm; ``effective_rank``: entropy effective rank of the update's singular values (NaN
    for 1-D parameters such as norms and biases); ``max_rank``: ``min(shape)``.
    """

    names: list[str]
    groups: list[str]
    kinds: list[str]
    shapes: list[tuple[int, ...]]
    fro_norm: Float[Tensor, " param"]
    rel_norm: Float[Tensor, " param"]
    effective_rank: Float[Tensor, " param"]
    max_rank: list[int]
    name: str = "update"

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {
                "name": self.names,
                "group": self.groups,
                "kind": self.kinds,
                "shape": [str(tuple(s)) for s in self.shapes],
                "fro_norm": self.fro_norm.tolist(),
                "rel_norm": self.rel_norm.tolist(),
                "effective_rank": self.effective_rank.tolist(),
                "max_rank": self.max_rank,
            }
        )

    def plot(self) -> Any:
        """Per layer, one line per module kind: Frobenius norm (left), effective rank (right)."""
        from mechlens.viz.steering import plot_diff_anatomy

        return plot_diff_anatomy(self)


def _kind(name: str) -> str:
    """The module within its layer, e.g. ``self_attn.q_proj.weight`` -> ``self_attn.q_proj``."""
    m = _LAYER.search(name)
    rest = name[m.end():] if m else name
    return rest.removesuffix(".weight")


def diff_anatomy(base: Any, tuned: Any | WeightVector, *, progress: bool = True) -> DiffAnatomy:
    """Frobenius norm and effective rank (SVD) of the update of every parameter tensor.

    Args:
        base: the base model.
        tuned: the fine-tuned model, or a task :class:`WeightVector` (the update itself).
    """
    pb = parameters(base)
    if isinstance(tuned, WeightVector):
        upd = tuned.tensors
        missing = [n for n in upd if n not in pb]
        if missing:
            raise ValueError(f"tuned has parameters the base model lacks: {missing[:3]}")
        label = tuned.name
    else:
        pt = parameters(tuned)
        _check_same_arch(pb, pt, "tuned")
        upd = None
        label = f"{model_name(tuned)} - base"
    names, groups, kinds, shapes, fro, rel, erank, maxr = [], [], [], [], [], [], [], []
    with torch.no_grad():
        for n in progress_iter(list(upd or pb), progress, "diff anatomy", leave=True):
            w = pb[n].detach().float().cpu()
            d = upd[n].float().cpu() if upd is not None else pt[n].detach().float().cpu() - w
            names.append(n)
            groups.append(layer_group(n))
            kinds.append(_kind(n))
            shapes.append(tuple(d.shape))
            f = float(d.double().norm())
            fro.append(f)
            wn = float(w.double().norm())
            rel.append(f / wn if wn > 0 else float("nan"))
            if d.ndim == 2:
                erank.append(effective_rank(torch.linalg.svdvals(d)))
                maxr.append(min(d.shape))
            else:
                erank.append(float("nan"))
                maxr.append(1)
    return DiffAnatomy(
        names=names, groups=groups, kinds=kinds, shapes=shapes,
        fro_norm=torch.tensor(fro), rel_norm=torch.tensor(rel), effective_rank=torch.tensor(erank),
        max_rank=maxr, model_name=model_name(base), name=label,
    )
