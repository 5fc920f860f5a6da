"""How a behaviour's logit difference moves with the steering coefficient.

:func:`evaluate_steering` runs a dataset once per coefficient ``coeff`` with an intervention
applied: an activation vector (``with steer(model, vec, coeff)``) or a weight vector
(``with apply_weights(model, w, coeff)``). The metric is a *raw behaviour logit difference*:

- on a :class:`~mechlens.data.ContrastDataset` (e.g. ToyMovieReview), the clean prompts'
  logit difference between the class-1 answer and the class-0 answer (for sentiment:
  positive word minus negative word), i.e. ``logit_diff(logits, answers)`` signed by the label;
  not centred, so the model's bias is part of the value;
- on a :class:`~mechlens.data.choices.ChoiceDataset`, at the open prompt (before the letter),
  logit(behaviour letter) - logit(opposite letter).

A working steering vector gives a curve that rises with ``coeff``: above the ``coeff = 0`` value for
``coeff > 0`` and below it for ``coeff < 0``. ``SteeringCurve.monotonic()`` checks that strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.data.choices import ChoiceDataset
from mechlens.data.contrast import ContrastDataset
from mechlens.engine import (
    fast_runner_or_none,
    logit_diff_metric,
    padded_iter,
    progress_iter,
    resolve_backend,
    run_grid,
)
from mechlens.models import model_device, model_name
from mechlens.results import Measurement, settings_of
from mechlens.steering.caa import SteeringVector, steer
from mechlens.steering.weights import WeightVector, apply_weights
from mechlens.validate import (
    check_batch_size,
    check_choice_dataset,
    check_coefficient,
    check_dataset,
)

__all__ = ["SteeringCurve", "evaluate_steering", "behaviour_logit_diff"]


@dataclass(kw_only=True)
class SteeringCurve(Measurement):
    """The behaviour logit difference under each coefficient: ``per_example[coeff, example]``,
    ``values[coeff]`` the mean (the result core, axis ``"coeff"``)."""

    kind: str
    vector: str = ""

    @property
    def coeffs(self) -> list[float]:
        return list(self.labels["coeff"])

    def monotonic(self) -> int:
        """+1 if the mean rises strictly with the coefficient, -1 if it falls strictly, else 0."""
        order = sorted(range(len(self.coeffs)), key=lambda i: self.coeffs[i])
        m = self.values[order]
        d = m[1:] - m[:-1]
        if len(d) and bool((d > 0).all()):
            return 1
        if len(d) and bool((d < 0).all()):
            return -1
        return 0

    def plot(self) -> Any:
        from mechlens.viz.steering import plot_steering_curve

        return plot_steering_curve(self)


def _check_backend(model: Any, ds: Any, backend: str) -> str:
    """The backend that runs ``ds`` (a ChoiceDataset's padded prompts refuse ``"fast"``)."""
    resolved = resolve_backend(model, backend)
    if isinstance(ds, ChoiceDataset) and backend == "fast":
        raise ValueError("backend='fast' runs prompts of one length; a ChoiceDataset's open prompts are padded: "
                         "use backend='hooks' or 'auto'")
    return resolved


def behaviour_logit_diff(
    model: Any, ds: ContrastDataset | ChoiceDataset, *, batch_size: int | None = None, backend: str = "auto"
) -> Float[Tensor, " batch"]:
    """The raw behaviour logit difference per example (see the module docstring).

    ``backend``: ``"auto"``, ``"fast"`` or ``"hooks"`` for a ContrastDataset's prompts (the
    same numbers); a ChoiceDataset's open prompts differ in length and run in right-padded
    full passes, so ``"fast"`` is refused for them.
    """
    check_batch_size(batch_size)
    _check_backend(model, ds, backend)
    if isinstance(ds, ContrastDataset):
        check_dataset(ds, model)
    elif isinstance(ds, ChoiceDataset):
        check_choice_dataset(ds, model)
    with torch.no_grad():
        if isinstance(ds, ContrastDataset):
            sign = torch.where(ds.labels == 1, 1.0, -1.0)
            ld = run_grid(model, ds.clean_tokens, logit_diff_metric(ds.answers), batch_size=batch_size, backend=backend,
                          output="last")
            return ld[0] * sign
        if isinstance(ds, ChoiceDataset):
            out = torch.zeros(ds.n_triples)
            ids = torch.tensor(ds.letter_ids)
            beh = torch.tensor([0 if x == "A" else 1 for x in ds.behaviour_letters])
            for idx, last, logits, _ in padded_iter(model, ds.open_tokens, batch_size=batch_size):
                logits = logits.float().cpu()
                lg = logits[torch.arange(len(idx)), last][:, ids]  # [b, 2] logits of A, B
                b = beh[idx]
                out[idx] = lg[torch.arange(len(idx)), b] - lg[torch.arange(len(idx)), 1 - b]
            return out
    raise TypeError(f"ds must be a ContrastDataset or a ChoiceDataset, not {type(ds).__name__}")


def evaluate_steering(
    model: Any,
    ds: ContrastDataset | ChoiceDataset,
    vector: SteeringVector | WeightVector | Tensor,
    coeffs: Sequence[float],
    *,
    layers: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> SteeringCurve:
    """The behaviour logit difference on ``ds`` for each coefficient.

    Args:
        vector: an activation :class:`SteeringVector` (or ``[d_model]`` tensor with
            ``layers``), applied with :func:`steer`; or a :class:`WeightVector`, applied
            with :func:`apply_weights`.
        coeffs: the coefficients (``k``); include 0 for the unsteered baseline.
        backend: as in :func:`behaviour_logit_diff` (``"auto"`` picks ``"hooks"`` for a
            ChoiceDataset).
    """
    if isinstance(coeffs, (int, float)) and not isinstance(coeffs, bool):
        coeffs = [coeffs]
    coeffs = [check_coefficient(c, f"coeffs[{i}]") for i, c in enumerate(coeffs)]
    check_batch_size(batch_size)
    if not coeffs:
        raise ValueError("coeffs is empty: give the coefficients to evaluate, e.g. [-2, -1, 0, 1, 2]")
    if not isinstance(ds, (ContrastDataset, ChoiceDataset)):
        raise TypeError(f"ds must be a ContrastDataset or a ChoiceDataset, not {type(ds).__name__}")
    if _check_backend(model, ds, backend) == "fast" and isinstance(ds, ContrastDataset):
        # the fast runner checks itself on its first pass: run that pass unsteered (a steered
        # one would look like a model whose blocks are not h + attention, then + MLP)
        fast_runner_or_none(model, ds.clean_tokens.to(model_device(model)), backend)
    is_weight = isinstance(vector, WeightVector)
    rows = []
    for c in progress_iter(coeffs, progress, "steering sweep", leave=True):
        ctx = apply_weights(model, vector, c) if is_weight else steer(model, vector, c, layers)
        with ctx:
            rows.append(behaviour_logit_diff(model, ds, batch_size=batch_size, backend=backend))
    if isinstance(ds, ContrastDataset):
        metric = "logit diff (class 1 - class 0 answer)"
    else:
        metric = f"logit diff ({ds.behaviour} letter - {ds.opposite} letter)"
    name = vector.name if isinstance(vector, (SteeringVector, WeightVector)) else "vector"
    return SteeringCurve(
        per_example=torch.stack(rows),
        axes=("coeff",),
        labels={"coeff": coeffs},
        dataset=ds.name,
        settings=settings_of(coeffs=coeffs, layers=layers, batch_size=batch_size),
        kind="weight" if is_weight else "activation",
        metric=metric,
        vector=name,
        fingerprint=ds.fingerprint() if isinstance(ds, ContrastDataset) else "",
        model_name=model_name(model),
    )
