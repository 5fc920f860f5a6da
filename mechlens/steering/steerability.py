"""Steering you can trust: per-example steerability, side effects, a prompting baseline.

The mean shift of a behaviour under a steering vector hides three things that users of
steering methods have learned to ask about:

1. **Per-example steerability** (Tan et al. 2024, arXiv 2407.12404). Steering moves some
   inputs a lot, some not at all, and some the *wrong way*. :func:`steerability` runs a
   coefficient sweep and fits, for every example, the least-squares slope of the behaviour's
   logit difference against the coefficient. :class:`Steerability` reports the slopes, the
   *anti-steerable fraction* (examples whose slope has the wrong sign: negative, since a
   positive coefficient is meant to add the behaviour), and the mean shift from the
   unsteered run with bootstrap intervals; ``.plot()`` draws one line per example and the
   mean.
2. **Side effects.** :func:`side_effects` measures, on a neutral corpus
   (:func:`mechlens.data.neutral_texts`), the KL divergence of the next-token distribution
   ``KL(p_unsteered || p_steered)`` averaged over the positions of each text, and the
   perplexity of the corpus, at each coefficient. :func:`at_equal_effect` finds the
   coefficient that reaches a target mean shift (linear interpolation between swept
   coefficients) and the KL there, so that methods are compared at equal effect.
3. **A prompting baseline** (AxBench, Wu et al. 2025, arXiv 2501.17148): asking for the
   behaviour in the prompt is a strong baseline. :func:`prompt_baseline` measures the same
   logit difference on the same prompts with and without an instruction (through the chat
   template on instruct models), and its side effects on the same neutral corpus.

Every steering vector mechlens makes works here: a CAA :class:`~mechlens.steering.SteeringVector`
(``coeff * vector``), a :class:`~mechlens.directions.Direction` from any fit method, DAS
included (``coeff * unit vector``, as :func:`mechlens.directions.add`), a raw ``[d_model]``
tensor with ``layers``, and a :class:`~mechlens.steering.WeightVector` (task vector or
contrastive weight vector: ``theta + coeff * w``).

How they run. Activation vectors: all coefficients are one engine grid
(:func:`mechlens.engine.run_grid`), stacked on the batch axis; ``batch_size`` bounds the
sequences per forward pass. Weight vectors change the weights themselves, which cannot be
stacked on the batch axis: one engine run per coefficient, inside
:func:`~mechlens.steering.apply_weights` (the weights are restored exactly afterwards).

The metric is the raw behaviour logit difference of :mod:`mechlens.steering.evaluate`: on a
:class:`~mechlens.data.ContrastDataset`, the class-1 answer minus the class-0 answer (for
ToyMovieReview: positive minus negative), i.e. the logit difference signed by the label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechlens.data.contrast import ContrastDataset
from mechlens.engine import logit_diff_metric, pad_id, resolve_backend, run_grid
from mechlens.models import model_name
from mechlens.results import Measurement, settings_of
from mechlens.steering.caa import SteeringVector, hook_name
from mechlens.steering.weights import WeightVector, apply_weights
from mechlens.validate import (
    check_batch_size,
    check_coefficient,
    check_dataset,
    check_layers,
    check_vector,
)

__all__ = [
    "Steerability",
    "SideEffects",
    "PromptBaseline",
    "steerability",
    "side_effects",
    "prompt_baseline",
    "at_equal_effect",
    "least_squares_slopes",
    "generate_steered",
]


# --------------------------------------------------------------------------- what is added


@dataclass
class _Steer:
    """A steering vector reduced to what the engine needs: hooks (activation) or weights."""

    kind: str  # "activation" | "weight"
    name: str
    hooks: list[str]
    vec: Tensor | None = None
    weights: WeightVector | None = None


def _as_steer(model: Any, vector: Any, layers: Any, site: str | None) -> _Steer:
    from mechlens.directions.fit import Direction

    if isinstance(vector, WeightVector):
        if layers is not None or site is not None:
            raise ValueError("layers and site apply to activation vectors; a WeightVector changes the weights")
        return _Steer("weight", vector.name, [], weights=vector)
    if isinstance(vector, SteeringVector):
        vec, name = vector.vector, vector.name
        layers = vector.layer if layers is None else layers
        site = site or vector.site
    elif isinstance(vector, Direction):
        vec, name = vector.unit(), f"{vector.method}:L{vector.layer}"
        layers = vector.layer if layers is None else layers
        site = site or vector.site
    elif isinstance(vector, Tensor):
        vec, name = vector, "vector"
        if layers is None:
            raise ValueError("a raw [d_model] vector has no layer: pass layers=... (or a SteeringVector / Direction)")
    else:
        raise TypeError(
            "vector must be a SteeringVector, a Direction, a WeightVector or a [d_model] tensor, "
            f"not {type(vector).__name__}"
        )
    vec = check_vector(vec.detach().float().cpu(), "vector", d_model=model.cfg.d_model)
    site = site or "resid_post"
    names = [hook_name(x, site) for x in check_layers(model, layers, what="layers")]
    return _Steer("activation", name, names, vec=vec)


def _coeffs(coeffs: Any) -> list[float]:
    if isinstance(coeffs, (int, float)) and not isinstance(coeffs, bool):
        coeffs = [coeffs]
    out = [check_coefficient(c, f"coeffs[{i}]") for i, c in enumerate(coeffs)]
    if not out:
        raise ValueError("coeffs is empty: give the coefficients to sweep, e.g. [-4, -2, 0, 2, 4]")
    return out


def _sweep(
    model: Any,
    tokens: Tensor,
    metric: Callable[[Tensor, Tensor], Tensor],
    steer: _Steer,
    coeffs: list[float],
    *,
    batch_size: int | None,
    progress: bool,
    desc: str,
    backend: str = "hooks",
    output: str = "all",
) -> Tensor:
    """``metric`` of every (coefficient, example), ``[len(coeffs), n]``; ``backend`` and
    ``output`` as in :func:`~mechlens.engine.run_grid` (a weight vector changes the weights in
    place, so each coefficient is a plain run, without hooks, on either backend)."""
    if steer.kind == "weight":
        # weights cannot differ between rows of one pass: one engine run per coefficient
        rows = []
        for c in coeffs:
            with apply_weights(model, steer.weights, c):
                rows.append(run_grid(model, tokens, metric, batch_size=batch_size, progress=progress, desc=desc,
                                     backend=backend, output=output)[0])
        return torch.stack(rows)
    k = torch.tensor(coeffs, dtype=torch.float32)
    vec = steer.vec

    def hooks(c: Tensor, e: Tensor) -> list[tuple[str, Any]]:
        delta = k[c][:, None] * vec[None, :]  # [rows, d_model]: each row its own coefficient

        def add(act: Tensor, hook: Any) -> Tensor:
            return act + delta.to(act.device, act.dtype)[:, None, :]

        return [(name, add) for name in steer.hooks]

    return run_grid(model, tokens, metric, n_configs=len(coeffs), hooks=hooks, batch_size=batch_size,
                    progress=progress, desc=desc, backend=backend, output=output)


def _behaviour_metric(ds: ContrastDataset) -> Callable[[Tensor, Tensor], Tensor]:
    sign = torch.where(ds.labels == 1, 1.0, -1.0)
    ld = logit_diff_metric(ds.answers)

    def metric(logits: Tensor, e: Tensor) -> Tensor:
        return ld(logits, e) * sign[e].to(logits.device)

    return metric


# --------------------------------------------------------------------------- steerability


def least_squares_slopes(coeffs: Sequence[float], y: Tensor) -> Tensor:
    """Per-column least-squares slope of ``y[coeff, example]`` against ``coeffs``."""
    c = torch.tensor(list(coeffs), dtype=torch.float64)
    if len(c) < 2 or float(c.var()) == 0:
        raise ValueError("a slope needs at least two different coefficients")
    cc = (c - c.mean())[:, None]
    yy = y.double() - y.double().mean(0, keepdim=True)
    return ((cc * yy).sum(0) / (cc**2).sum()).float()


def _interp_coeff(coeffs: Sequence[float], mean_shift: Sequence[float], target: float) -> float:
    """The coefficient where the mean shift first reaches ``target``, walking away from 0 in
    the direction that moves the shift towards ``target`` (linear interpolation); NaN if the
    swept coefficients never reach it."""
    pts = sorted(zip(coeffs, mean_shift))
    c = np.array([p[0] for p in pts])
    s = np.array([p[1] for p in pts])
    if target == 0:
        return 0.0
    i0 = int(np.argmin(np.abs(c)))
    best = math.nan
    for step in (1, -1):  # walk right (positive coefficients), then left
        i = i0
        while 0 <= i + step < len(c):
            a, b = i, i + step
            lo, hi = sorted((s[a], s[b]))
            if lo <= target <= hi and s[a] != s[b]:
                x = c[a] + (target - s[a]) * (c[b] - c[a]) / (s[b] - s[a])
                if math.isnan(best) or abs(x) < abs(best):
                    best = float(x)
                break
            i += step
    return best


@dataclass(kw_only=True)
class Steerability(Measurement):
    """The behaviour logit difference for every coefficient and example.

    ``per_example[coeff, example]`` (axes ``("coeff",)``, the batch axis is the example);
    ``values[coeff]`` the mean. ``kind`` is ``"activation"`` or ``"weight"``; ``vector`` names
    the vector. Derived numbers:

    - :meth:`slopes`: per-example least-squares slope against the coefficient;
    - :meth:`anti_steerable_fraction`: share of examples with a negative slope;
    - :meth:`shift`: ``per_example - per_example[coeff 0]`` as a :class:`Measurement`
      (``.values``, ``.ci()``), the mean shift with its intervals;
    - :meth:`coeff_for`: the coefficient at which the mean shift reaches a target.
    """

    kind: str = "activation"
    vector: str = ""

    @property
    def coeffs(self) -> list[float]:
        return [float(c) for c in self.labels["coeff"]]

    def _zero(self) -> int:
        if 0.0 not in self.coeffs:
            raise ValueError("this sweep has no coefficient 0 (the unsteered run); include 0 in coeffs")
        return self.coeffs.index(0.0)

    def slopes(self) -> Tensor:
        """``[example]`` least-squares slope of the logit difference against the coefficient."""
        return least_squares_slopes(self.coeffs, self.per_example)

    def slope(self) -> Measurement:
        """The slopes as a :class:`Measurement` with no axes: ``.values`` is the mean slope
        (shift per unit coefficient), ``.ci()`` its bootstrap interval."""
        return Measurement(per_example=self.slopes(), metric=f"slope of {self.metric}", model_name=self.model_name,
                           dataset=self.dataset)

    def anti_steerable_fraction(self) -> float:
        """Share of examples whose slope is negative (steered the wrong way)."""
        return float((self.slopes() < 0).float().mean())

    def shift(self) -> Measurement:
        """``per_example - per_example[coeff 0]``: the shift from the unsteered run, per coefficient."""
        d = self.per_example - self.per_example[self._zero()]
        return Measurement(per_example=d, axes=("coeff",), labels={"coeff": self.coeffs},
                           metric=f"shift of {self.metric}", model_name=self.model_name, dataset=self.dataset)

    def coeff_for(self, target: float) -> float:
        """The coefficient at which the mean shift reaches ``target`` (linear interpolation
        between swept coefficients, the one closest to 0); NaN if the sweep never gets there."""
        return _interp_coeff(self.coeffs, self.shift().values.tolist(), float(target))

    def summary(self) -> dict[str, Any]:
        s = self.slope()
        lo, hi = s.ci()
        return {
            "vector": self.vector, "kind": self.kind, "n": self.n_examples,
            "shift_per_coeff": float(s.values), "ci_low": float(lo), "ci_high": float(hi),
            "anti_steerable": self.anti_steerable_fraction(),
        }

    def plot(self) -> Any:
        """One line per example (red: anti-steerable) and the mean with its 95% interval."""
        from mechlens.viz.steering import plot_steerability

        return plot_steerability(self)

    def _summary_lines(self) -> list[str]:
        s = self.summary()
        return [
            f"{self.kind} steering with {self.vector}: coeffs {self.coeffs}, {self.n_examples} examples",
            f"shift per unit coeff {s['shift_per_coeff']:+.4g} [{s['ci_low']:+.3g}, {s['ci_high']:+.3g}], "
            f"anti-steerable {100 * s['anti_steerable']:.0f}%",
        ]


def steerability(
    model: Any,
    ds: ContrastDataset,
    vector: Any,
    coeffs: Sequence[float],
    *,
    layers: int | Sequence[int] | None = None,
    site: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> Steerability:
    """Per-example steerability: the behaviour logit difference for every coefficient.

    Activation vectors run as one engine grid (all coefficients stacked on the batch axis;
    ``batch_size`` sequences per forward pass). A :class:`~mechlens.steering.WeightVector`
    changes the model's weights, which cannot differ between rows of one pass: it runs once
    per coefficient (``theta + coeff * w``, restored exactly afterwards).

    Args:
        model: a TransformerLens model (TransformerBridge or HookedTransformer).
        ds: a contrast dataset with 0/1 labels (e.g. ToyMovieReview); the metric is the
            class-1 answer's logit minus the class-0 answer's on the clean prompts.
        vector: a :class:`~mechlens.steering.SteeringVector` (adds ``coeff * vector``), a
            :class:`~mechlens.directions.Direction` (adds ``coeff * unit vector``), a
            ``[d_model]`` tensor (with ``layers``) or a :class:`~mechlens.steering.WeightVector`.
        coeffs: the coefficients; include 0 (the unsteered run) for :meth:`Steerability.shift`.
        layers: where to add an activation vector (default: its own layer).
        site: hook site (default: the vector's site, else ``"resid_post"``).
        batch_size: sequences per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: a progress bar over the passes.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge, where an activation
            vector's runs start at its first layer and unembed only the final position),
            ``"fast"`` or ``"hooks"``; the same numbers.
    """
    ds = check_dataset(ds, model)
    check_batch_size(batch_size)
    resolve_backend(model, backend)
    coeffs = _coeffs(coeffs)
    st = _as_steer(model, vector, layers, site)
    per = _sweep(model, ds.clean_tokens, _behaviour_metric(ds), st, coeffs, batch_size=batch_size,
                 progress=progress, desc="steerability", backend=backend, output="last")
    return Steerability(
        per_example=per, axes=("coeff",), labels={"coeff": coeffs},
        metric="logit diff (class 1 - class 0 answer)", kind=st.kind, vector=st.name,
        model_name=model_name(model), dataset=ds.name, fingerprint=ds.fingerprint(),
        settings=settings_of(coeffs=coeffs, layers=layers, site=site, batch_size=batch_size),
    )


# --------------------------------------------------------------------------- side effects


def _tokenize_texts(model: Any, texts: Sequence[str], prefix: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """Right-padded ``[n, pos]`` tokens of ``texts`` (after ``prefix`` tokens when given), the
    number of real tokens per row, and where the text starts (the prefix length)."""
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    if prefix is None:
        toks = [model.to_tokens(t, truncate=False)[0].cpu() for t in texts]
        start = 0
    else:
        toks = [torch.cat([prefix, model.to_tokens(t, prepend_bos=False, truncate=False)[0].cpu()]) for t in texts]
        start = len(prefix)
    lens = torch.tensor([len(t) for t in toks])
    out = torch.full((len(toks), int(lens.max())), pad_id(model), dtype=torch.long)
    for i, t in enumerate(toks):
        out[i, : len(t)] = t
    return out, lens, start


class _TextMetrics:
    """Metrics over the real positions of right-padded neutral texts: the reference run's
    log-probabilities are kept (``record``), later runs give KL and NLL against them."""

    def __init__(self, tokens: Tensor, lens: Tensor, start: int = 0):
        self.tokens, self.lens, self.start = tokens, lens, start
        self.ref: Tensor | None = None  # [n, pos, vocab] log-probs of the reference run
        self.nll: Tensor | None = None

    def _mask(self, e: Tensor, n_pos: int, predict: bool) -> Tensor:
        pos = torch.arange(n_pos)[None, :]
        # KL at every position of the text; NLL where the next token is a real text token
        end = self.lens[e][:, None] - (1 if predict else 0)
        lo = max(self.start - 1, 0) if predict else self.start
        return (pos >= lo) & (pos < end)

    def _nll(self, lp: Tensor, e: Tensor) -> Tensor:
        tgt = self.tokens[e][:, 1:].to(lp.device)
        nll = -lp[:, :-1].gather(-1, tgt[..., None])[..., 0]
        m = self._mask(e, lp.shape[1], True)[:, :-1].to(lp.device)
        return (nll * m).sum(-1)

    def record(self, logits: Tensor, e: Tensor) -> Tensor:
        lp = torch.log_softmax(logits.float(), -1)
        if self.ref is None:  # only the text's positions (not a prompt prefix): [n, pos - start, vocab]
            self.ref = torch.zeros(len(self.tokens), lp.shape[1] - self.start, lp.shape[2])
        self.ref[e] = lp[:, self.start :].cpu()
        return self._nll(lp, e)

    def _kl(self, lp: Tensor, e: Tensor) -> Tensor:
        lp = lp[:, self.start :]
        ref = self.ref[e].to(lp.device)
        kl = (ref.exp() * (ref - lp)).sum(-1)  # KL(reference || steered) per position
        m = self._mask(e, lp.shape[1] + self.start, False)[:, self.start :].to(lp.device)
        return (kl * m).sum(-1) / m.sum(-1)

    def kl_keeping_nll(self, n_configs: int) -> Callable[[Tensor, Tensor], Tensor]:
        """The KL metric for a sweep of ``n_configs`` configurations that also fills
        ``self.nll[config, text]`` from the same logits (one pass gives both). Rows arrive in
        the engine grid's order (row ``r`` is configuration ``r // n`` of text ``r % n``), also
        when each configuration is its own run, so a running row count places them."""
        n = len(self.tokens)
        self.nll = torch.zeros(n_configs, n)
        seen = [0]

        def metric(logits: Tensor, e: Tensor) -> Tensor:
            lp = torch.log_softmax(logits.float(), -1)
            rows = torch.arange(seen[0], seen[0] + len(e))
            seen[0] += len(e)
            self.nll.view(-1)[rows] = self._nll(lp, e).detach().float().cpu()
            return self._kl(lp, e)

        return metric

    @property
    def n_predicted(self) -> Tensor:
        return (self.lens - max(self.start, 1)).clamp_min(0)


@dataclass(kw_only=True)
class SideEffects(Measurement):
    """KL divergence of the next-token distribution on neutral text, per coefficient and text.

    ``per_example[coeff, text]``: ``KL(p_unsteered || p_steered)`` (nats) averaged over the
    positions of each text; ``values`` the mean over texts. ``nll[coeff, text]``: summed
    next-token negative log-likelihood, ``n_tokens[text]`` the tokens predicted; ``perplexity()``
    of the whole corpus per coefficient and ``base_perplexity`` unsteered.
    """

    nll: Tensor
    n_tokens: Tensor
    base_perplexity: float = math.nan
    kind: str = "activation"
    vector: str = ""

    @property
    def coeffs(self) -> list[float]:
        return [float(c) for c in self.labels["coeff"]]

    def perplexity(self) -> Tensor:
        """``[coeff]`` perplexity of the corpus: ``exp(total NLL / total tokens)``."""
        return torch.exp(self.nll.double().sum(-1) / self.n_tokens.double().sum()).float()

    def perplexity_change(self) -> Tensor:
        """``[coeff]`` perplexity minus the unsteered perplexity."""
        return self.perplexity() - self.base_perplexity

    def kl_at(self, coeff: float) -> float:
        """Mean KL at ``coeff``, linearly interpolated between swept coefficients (NaN outside)."""
        return _interp_at(self.coeffs, self.values.tolist(), coeff)

    def perplexity_at(self, coeff: float) -> float:
        return _interp_at(self.coeffs, self.perplexity().tolist(), coeff)

    def to_dataframe(self, per_example: bool = False) -> Any:
        df = super().to_dataframe(per_example)
        if not per_example:
            df["perplexity"] = self.perplexity().numpy()
            df["perplexity_change"] = self.perplexity_change().numpy()
        return df

    def plot(self) -> Any:
        from mechlens.viz.steering import plot_side_effects

        return plot_side_effects(self)


def _interp_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if x is None or math.isnan(x):
        return math.nan
    pts = sorted(zip(xs, ys))
    xa, ya = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if x < xa[0] or x > xa[-1]:
        return math.nan
    return float(np.interp(x, xa, ya))


def side_effects(
    model: Any,
    vector: Any,
    coeffs: Sequence[float],
    *,
    texts: Sequence[str] | None = None,
    layers: int | Sequence[int] | None = None,
    site: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> SideEffects:
    """KL divergence and perplexity on neutral text under each coefficient.

    The unsteered run of ``texts`` (default :func:`mechlens.data.neutral_texts`) is the
    reference; then every coefficient runs as in :func:`steerability` (one engine grid for an
    activation vector, one run per coefficient for a weight vector). KL is
    ``KL(p_unsteered || p_steered)`` of the next-token distribution, averaged over each
    text's positions (0 at coefficient 0).

    Args:
        vector: as in :func:`steerability`.
        coeffs: as in :func:`steerability`.
        layers: as in :func:`steerability`.
        site: as in :func:`steerability`.
        batch_size: as in :func:`steerability`.
        progress: as in :func:`steerability`.
        texts: the neutral corpus (a list of strings).
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge, where an activation
            vector's runs start at its first layer), ``"fast"`` or ``"hooks"``; the same numbers.
    """
    from mechlens.data.neutral import neutral_texts

    check_batch_size(batch_size)
    resolve_backend(model, backend)
    coeffs = _coeffs(coeffs)
    st = _as_steer(model, vector, layers, site)
    texts = list(neutral_texts() if texts is None else texts)
    tokens, lens, _ = _tokenize_texts(model, texts)
    tm = _TextMetrics(tokens, lens)
    base_nll = run_grid(model, tokens, tm.record, batch_size=batch_size, progress=progress, desc="side effects: base",
                        backend=backend)[0]
    n_tok = tm.n_predicted
    kl = _sweep(model, tokens, tm.kl_keeping_nll(len(coeffs)), st, coeffs, batch_size=batch_size, progress=progress,
                desc="side effects", backend=backend)
    nll = tm.nll
    return SideEffects(
        per_example=kl, axes=("coeff",), labels={"coeff": coeffs}, metric="KL(unsteered || steered), nats/token",
        nll=nll, n_tokens=n_tok, base_perplexity=float(torch.exp(base_nll.double().sum() / n_tok.sum())),
        kind=st.kind, vector=st.name, model_name=model_name(model), dataset=f"neutral text ({len(texts)})",
        settings=settings_of(coeffs=coeffs, layers=layers, site=site, batch_size=batch_size),
    )


def at_equal_effect(steer: Steerability, effects: SideEffects, target: float) -> dict[str, float]:
    """The coefficient at which ``steer``'s mean shift reaches ``target`` and the side effects
    there: ``{"coeff", "kl", "perplexity"}`` (KL and perplexity linearly interpolated between
    the swept coefficients of ``effects``; NaN where the sweep does not reach the target)."""
    c = steer.coeff_for(target)
    return {"coeff": c, "kl": effects.kl_at(c), "perplexity": effects.perplexity_at(c)}


# --------------------------------------------------------------------------- prompting baseline


def _chat_prefix(model: Any, content: str) -> Tensor | None:
    """Tokens of a user turn asking ``content`` and the start of the assistant's reply, through
    the tokenizer's chat template; None for a model without one."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        return None
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _prefix(model: Any, content: str) -> Tensor:
    p = _chat_prefix(model, content)
    if p is None:  # a base model: the request as plain text, a blank line, then the prompt
        p = model.to_tokens(content + "\n\n", truncate=False)[0].cpu()
    return p


@dataclass(kw_only=True)
class PromptBaseline(Measurement):
    """The behaviour logit difference when the prompt asks for the behaviour.

    ``per_example[prompt, example]`` with ``labels["prompt"] = ["plain", "task", "instructed"]``:
    the dataset's prompts as they are; inside the request ``task`` (the chat template on
    an instruct model, else plain text before the prompt); inside ``task + " " + instruction``.
    The model's reply is pre-filled with the prompt, so the same next-token logit difference
    is measured. :meth:`shift` is instructed minus task (what the instruction adds), the
    counterpart of a steering shift. ``kl`` and ``perplexity`` are the side effects of the
    instruction on the neutral corpus (KL between the reply distributions with and without the
    instruction, averaged over the text's positions; perplexity with the instruction).
    """

    instruction: str = ""
    task: str = ""
    kl: float = math.nan
    kl_per_text: Tensor | None = None
    perplexity: float = math.nan
    base_perplexity: float = math.nan

    def shift(self) -> Tensor:
        """``[example]`` instructed minus task-only logit difference."""
        return self.per_example[2] - self.per_example[1]

    def anti_steerable_fraction(self) -> float:
        """Share of examples the instruction moves the wrong way (negative shift)."""
        return float((self.shift() < 0).float().mean())

    def summary(self) -> dict[str, Any]:
        s = Measurement(per_example=self.shift(), metric="instruction shift")
        lo, hi = s.ci()
        return {"shift": float(s.values), "ci_low": float(lo), "ci_high": float(hi),
                "anti_steerable": self.anti_steerable_fraction(), "kl": self.kl,
                "perplexity": self.perplexity, "base_perplexity": self.base_perplexity}


def prompt_baseline(
    model: Any,
    ds: ContrastDataset,
    instruction: str = "Answer positively.",
    *,
    task: str = "Complete the text.",
    texts: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> PromptBaseline:
    """Prompting as a steering baseline: ask for the behaviour, measure the same metric.

    Each prompt of ``ds`` is placed as the start of the model's reply to a user request
    ``task`` (through the chat template when the tokenizer has one, e.g. SmolLM2-Instruct;
    otherwise as plain text before it) and again to ``task + " " + instruction``. The
    difference of the two logit differences is what the instruction does, measured like a
    steering shift; its side effects are measured on the neutral corpus (``texts``, default
    :func:`mechlens.data.neutral_texts`) as the reply text under both requests.

    Args:
        instruction: the behaviour asked for (``"Answer positively."``).
        task: the request without the behaviour.
        texts: as in :func:`side_effects`.
        batch_size: as in :func:`side_effects`.
        progress: as in :func:`side_effects`.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge), ``"fast"`` or
            ``"hooks"``; the same numbers.
    """
    from mechlens.data.neutral import neutral_texts

    ds = check_dataset(ds, model)
    check_batch_size(batch_size)
    resolve_backend(model, backend)
    for what, s in (("instruction", instruction), ("task", task)):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"{what} must be a non-empty string, got {s!r}")
    metric = _behaviour_metric(ds)
    plain = run_grid(model, ds.clean_tokens, metric, batch_size=batch_size, progress=progress, desc="prompting",
                     backend=backend)[0]
    rows = [plain]
    prefixes = [_prefix(model, task), _prefix(model, f"{task} {instruction}")]
    for p in prefixes:
        # the dataset's prompts start with BOS on most models; the reply continues the prefix
        body = ds.clean_tokens
        bos = getattr(model.tokenizer, "bos_token_id", None) if getattr(model, "tokenizer", None) else None
        if bos is not None and bool((body[:, 0] == bos).all()):
            body = body[:, 1:]
        toks = torch.cat([p[None, :].expand(len(body), -1), body], 1)
        rows.append(run_grid(model, toks, metric, batch_size=batch_size, progress=progress, desc="prompting",
                             backend=backend)[0])
    neutral = list(neutral_texts() if texts is None else texts)
    t0, lens0, s0 = _tokenize_texts(model, neutral, prefixes[0])
    t1, lens1, s1 = _tokenize_texts(model, neutral, prefixes[1])
    tm0, tm1 = _TextMetrics(t0, lens0, s0), _TextMetrics(t1, lens1, s1)
    nll0 = run_grid(model, t0, tm0.record, batch_size=batch_size, progress=progress, desc="prompting: KL",
                    backend=backend)[0]
    nll1 = run_grid(model, t1, tm1.record, batch_size=batch_size, progress=progress, desc="prompting: KL",
                    backend=backend)[0]
    kls = []
    for i in range(len(neutral)):  # compare the text's positions under both prefixes
        a = tm0.ref[i, : lens0[i] - s0]
        b = tm1.ref[i, : lens1[i] - s1]
        kls.append(float((a.exp() * (a - b)).sum(-1).mean()))
    n0, n1 = tm0.n_predicted.sum(), tm1.n_predicted.sum()
    return PromptBaseline(
        per_example=torch.stack(rows), axes=("prompt",), labels={"prompt": ["plain", "task", "instructed"]},
        metric="logit diff (class 1 - class 0 answer)", instruction=instruction, task=task,
        kl=float(np.mean(kls)), kl_per_text=torch.tensor(kls),
        perplexity=float(torch.exp(nll1.double().sum() / n1)), base_perplexity=float(torch.exp(nll0.double().sum() / n0)),
        model_name=model_name(model), dataset=ds.name, fingerprint=ds.fingerprint(),
        settings=settings_of(instruction=instruction, task=task, batch_size=batch_size),
    )


# --------------------------------------------------------------------------- steered generation


def generate_steered(
    model: Any,
    prompts: Sequence[str],
    vector: Any,
    coeff: float,
    max_new_tokens: int = 20,
    *,
    layers: int | Sequence[int] | None = None,
    site: str | None = None,
    batch_size: int | None = None,
    as_text: bool = True,
) -> list[str] | list[Tensor]:
    """Greedy steered generation for many prompts at once (:func:`mechlens.engine.generate_batched`:
    left padding, attention mask, KV cache; the same tokens as one prompt at a time).

    An activation vector is added (``coeff * vector``, as in :func:`steerability`) at every
    position of every step; a :class:`~mechlens.steering.WeightVector` runs the whole
    generation with ``theta + coeff * w``.

    Returns:
        The continuations (new text only; tokens with ``as_text=False``).
    """
    from mechlens.engine import generate_batched

    coeff = check_coefficient(coeff, "coeff")
    st = _as_steer(model, vector, layers, site)
    if st.kind == "weight":
        with apply_weights(model, st.weights, coeff):
            out = generate_batched(model, prompts, max_new_tokens, batch_size=batch_size)
    else:
        delta = coeff * st.vec

        def add(act: Tensor, hook: Any) -> Tensor:
            return act + delta.to(act.device, act.dtype)

        out = generate_batched(model, prompts, max_new_tokens, hooks=[(n, add) for n in st.hooks],
                               batch_size=batch_size)
    if not as_text:
        return out
    return [model.tokenizer.decode(t) for t in out]
