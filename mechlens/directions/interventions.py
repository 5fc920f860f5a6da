"""Intervening along a direction: directional patching, directional ablation, activation addition.

With ``d`` a unit vector and ``h`` the residual stream at one layer:

- **Directional patching** (causal test of "the model reads sentiment along d"). Run the
  corrupt prompts, and at the chosen layers/positions replace ``h_corr`` by
  ``h_corr + d d^T (h_clean - h_corr)``: only the component along ``d`` is taken from the
  clean run. If that alone restores the clean answer, ``d`` carries the information.
  Read: *LD recovered* = (LD_patched - LD_corr) / (LD_clean - LD_corr) (1 = fully clean, 0 =
  no effect; the paper reports it x100), and *logit flip* = how much of the gap in centred
  accuracy it closes. A random direction should give ~0.
- **Directional ablation** (necessity). Run the clean prompts and remove the component
  along ``d``: ``h - d d^T h + d c`` where ``c`` is 0 (``zero``), the mean projection over
  the dataset at that position (``mean``), or the projection of another, randomly chosen
  example (``resample``). Read the drop in logit difference and accuracy.
- **Activation addition** (steering). Add ``coeff * d`` to the residual stream at every
  position, in forward passes and during ``model.generate``: ``with add(model, d, 8.0): ...``.

All three attach hooks through a context manager, so the model is always restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlens.data.contrast import ContrastDataset
from mechlens.directions.fit import (
    Direction,
    _check_site,
    _directional_hook,
    _layers_arg,
    hook_name,
)
from mechlens.engine import (
    HOWS,
    cache_batched,
    first_changed_position,
    logit_diff_metric,
    resolve_backend,
    run_grid,
)
from mechlens.hooks import hooked
from mechlens.metrics import accuracy, fraction_recovered, logit_flip
from mechlens.results import Measurement, provenance
from mechlens.validate import (
    check_batch_size,
    check_binary_labels,
    check_coefficient,
    check_dataset,
    check_direction,
    check_layer,
    check_vector,
)

__all__ = [
    "DirectionalPatchResult",
    "AblationResult",
    "directional_patch",
    "ablate",
    "add",
    "as_direction",
    "ABLATION_MODES",
    "patched_logit_diffs",
]

PositionSpec = str | int | Sequence[str | int] | Bool[Tensor, "batch pos"]


# --------------------------------------------------------------------------- argument handling


def as_direction(direction: Direction | Tensor, *, layer: int | None = None, site: str = "resid_pre") -> Direction:
    """A :class:`Direction` from a Direction or a raw ``[d_model]`` vector (then ``layer`` is needed)."""
    if isinstance(direction, Direction):
        return direction
    if isinstance(direction, Tensor):
        check_vector(direction, "direction")
        if layer is None:
            raise ValueError("a raw vector has no layer: pass layers=... (or a Direction from fit())")
        return Direction(vector=direction.detach().float().cpu(), method="vector", layer=layer, site=site, position="all")
    raise TypeError(f"direction must be a mechlens Direction or a [d_model] tensor, not {type(direction).__name__}")


def _check_model_dir(model: Any, d: Direction, *, own_layer: bool = True) -> None:
    check_direction(model, d, own_layer=own_layer)


# --------------------------------------------------------------------------- core mechanism


@torch.no_grad()
def patched_logit_diffs(
    model: Any,
    ds: ContrastDataset,
    vectors: Float[Tensor, "k d_model"],
    clean_acts: dict[str, Float[Tensor, "batch pos d_model"]],
    mask: Bool[Tensor, "batch pos"],
    *,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "directional patching",
    backend: str = "auto",
) -> Float[Tensor, "k batch"]:
    """Logit differences of the corrupt prompts with each direction patched in from the clean run.

    ``clean_acts`` maps hook names to the clean run's activations there; every hook in it is
    patched (with the same direction). Rows of ``vectors`` must be unit vectors. The
    ``k x batch`` (direction, example) grid is run in chunks of ``batch_size`` prompts.
    """

    def hooks(v: Tensor, e: Tensor) -> list[tuple[str, Any]]:
        return [(name, _directional_hook(acts[e], vectors[v], mask[e])) for name, acts in clean_acts.items()]

    return run_grid(model, ds.corrupt_tokens, logit_diff_metric(ds.answers), n_configs=vectors.shape[0],
                    hooks=hooks, batch_size=batch_size, progress=progress, desc=desc, backend=backend, output="last",
                    from_position=first_changed_position(ds.clean_tokens, ds.corrupt_tokens, mask))


# --------------------------------------------------------------------------- directional patching


@dataclass(kw_only=True)
class DirectionalPatchResult(Measurement):
    """One directional-patching experiment: ``per_example`` is the corrupt run's logit
    difference with the direction patched in (``ld_patched``), beside the clean and corrupt
    runs' (``ld_clean``, ``ld_corrupt``; clean-prompt answers throughout).
    ``ld_recovered`` (fraction) / ``ld_recovered_pct`` (x100) and ``logit_flip`` summarise them
    (definitions in :mod:`mechlens.metrics`); ``class_labels`` are the examples' 0/1 labels.
    """

    ld_clean: Float[Tensor, " batch"]
    ld_corrupt: Float[Tensor, " batch"]
    class_labels: Int[Tensor, " batch"]
    layers: list[int]
    position: str = "all"
    method: str = ""
    site: str = "resid_pre"

    @property
    def ld_patched(self) -> Float[Tensor, " batch"]:
        return self.per_example

    @property
    def ld_recovered(self) -> float:
        return float(fraction_recovered(self.ld_patched.mean(), self.ld_clean.mean(), self.ld_corrupt.mean()))

    @property
    def ld_recovered_pct(self) -> float:
        return 100.0 * self.ld_recovered

    @property
    def logit_flip(self) -> float:
        return logit_flip(self.ld_patched, self.ld_clean, self.ld_corrupt, self.class_labels)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layers": self.layers,
            "position": self.position,
            "ld_clean": float(self.ld_clean.mean()),
            "ld_corrupt": float(self.ld_corrupt.mean()),
            "ld_patched": float(self.ld_patched.mean()),
            "ld_recovered": self.ld_recovered,
            "ld_recovered_pct": self.ld_recovered_pct,
            "logit_flip": self.logit_flip,
        }

    def to_dataframe(self, per_example: bool = False) -> Any:
        """The mean (``value``, ``stderr``, CI); ``per_example=True``: one row per example with
        its label and the clean, corrupt and patched logit differences (``value`` = patched)."""
        df = super().to_dataframe(per_example)
        if per_example:
            df["label"] = self.class_labels.tolist()
            df["ld_clean"] = self.ld_clean.tolist()
            df["ld_corrupt"] = self.ld_corrupt.tolist()
            df["ld_patched"] = self.ld_patched.tolist()
        return df

    def plot(self) -> Any:
        """Per-example logit differences: clean, corrupt and patched."""
        from mechlens.viz.directions import plot_directional_patch

        return plot_directional_patch(self)

    def _summary_lines(self) -> list[str]:
        return [
            f"{self.method} direction patched at layers {self.layers}, position {self.position!r}, "
            f"{self.n_examples} examples",
            f"ld_recovered={self.ld_recovered:.3f}, logit_flip={self.logit_flip:.3f}",
        ]


def directional_patch(
    model: Any,
    ds: ContrastDataset,
    direction: Direction | Float[Tensor, " d_model"],
    *,
    layers: int | Sequence[int] | None = None,
    position: PositionSpec = "all",
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> DirectionalPatchResult:
    """Patch the component along ``direction`` from the clean into the corrupt run.

    Args:
        direction: a :class:`Direction` (its site is used) or a raw ``[d_model]`` vector
            (then ``layers`` is required and the site is ``resid_pre``); it is normalised.
        layers: layers to patch at (default: the direction's own layer).
        position: where, together: ``"all"`` (the default), a named position (``"ADJ"``), a
            list of names, or a ``[batch, pos]`` bool mask (:meth:`ContrastDataset.position_mask`).
        batch_size: sequences per forward pass.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge, where each pass runs
            from the first layer it changes and unembeds only the final position), ``"fast"``
            or ``"hooks"`` (full ``run_with_hooks`` passes); the same numbers.

    Returns:
        :class:`DirectionalPatchResult` with per-example clean/corrupt/patched logit
        differences, ``ld_recovered`` and ``logit_flip``.
    """
    ds = check_dataset(ds, model)
    check_batch_size(batch_size)
    resolve_backend(model, backend)
    layer_list = None if layers is None else _layers_arg(model, layers)
    d = as_direction(direction, layer=layer_list[0] if layer_list else None)
    _check_model_dir(model, d, own_layer=layer_list is None)
    layer_list = layer_list or [d.layer]
    mask, label = ds.position_mask(position).cpu(), ds.position_label(position)
    names = [hook_name(layer, d.site) for layer in layer_list]
    acts, ld_clean = cache_batched(model, ds.clean_tokens, names, batch_size=batch_size, answers=ds.answers)
    _, ld_corr = cache_batched(model, ds.corrupt_tokens, [], batch_size=batch_size, answers=ds.answers)
    ld_patched = patched_logit_diffs(
        model, ds, d.unit()[None], acts, mask, batch_size=batch_size, progress=progress, backend=backend
    )[0]
    return DirectionalPatchResult(
        per_example=ld_patched,
        metric="logit_diff",
        ld_clean=ld_clean.float().cpu(),
        ld_corrupt=ld_corr.float().cpu(),
        class_labels=ds.labels.cpu(),
        layers=layer_list,
        position=label,
        method=d.method,
        site=d.site,
        **provenance(model, ds, layers=layers, position=label, batch_size=batch_size),
    )


# --------------------------------------------------------------------------- ablation

ABLATION_MODES = HOWS  # the one list of ablated values (mechlens.engine.HOWS)


@dataclass(kw_only=True)
class AblationResult(Measurement):
    """Clean-prompt logit differences after removing a direction (``per_example``, also
    ``ld_after``) and before (``ld_before``).

    ``ld_change`` is the relative change of the mean logit difference (-1 = all of it gone);
    accuracies are centred (see :func:`mechlens.metrics.accuracy`), each set by its own bias;
    ``class_labels`` are the examples' 0/1 labels.
    """

    ld_before: Float[Tensor, " batch"]
    class_labels: Int[Tensor, " batch"]
    layers: list[int]
    position: str = "all"
    how: str = "mean"
    method: str = ""

    @property
    def ld_after(self) -> Float[Tensor, " batch"]:
        return self.per_example

    @property
    def ld_change(self) -> float:
        return float(self.ld_after.mean() / self.ld_before.mean() - 1)

    @property
    def accuracy_before(self) -> float:
        return accuracy(self.ld_before, self.class_labels)

    @property
    def accuracy_after(self) -> float:
        return accuracy(self.ld_after, self.class_labels)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "how": self.how,
            "layers": self.layers,
            "position": self.position,
            "ld_before": float(self.ld_before.mean()),
            "ld_after": float(self.ld_after.mean()),
            "ld_change": self.ld_change,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
        }

    def to_dataframe(self, per_example: bool = False) -> Any:
        """The mean after ablation (``value``, ``stderr``, CI); ``per_example=True``: one row per
        example with its label and the logit difference before and after (``value`` = after)."""
        df = super().to_dataframe(per_example)
        if per_example:
            df["label"] = self.class_labels.tolist()
            df["ld_before"] = self.ld_before.tolist()
            df["ld_after"] = self.ld_after.tolist()
        return df

    def plot(self) -> Any:
        """Per-example logit difference before vs after the ablation."""
        from mechlens.viz.directions import plot_direction_ablation

        return plot_direction_ablation(self)

    def _summary_lines(self) -> list[str]:
        return [
            f"{self.how}-ablating the {self.method} direction at layers {self.layers}, position {self.position!r}, "
            f"{self.n_examples} examples",
            f"ld_change={self.ld_change:+.3f}, accuracy {self.accuracy_before:.3f} -> {self.accuracy_after:.3f}",
        ]


def _ablation_hook(d: Tensor, target: Tensor, mask: Tensor):
    """h <- h - d (d.h) + d target, where ``mask`` is true (``d`` is each row's unit direction,
    ``[batch, d_model]``; ``target`` and ``mask`` are ``[batch, pos]``)."""

    def hook(h: Tensor, hook: Any = None) -> Tensor:
        dd = d.to(h.device, h.dtype)
        coef = (target.to(h.device, h.dtype) - torch.einsum("bpd,bd->bp", h, dd)) * mask.to(h.device, h.dtype)
        return h + coef[..., None] * dd[:, None, :]

    return hook


@torch.no_grad()
def ablate(
    model: Any,
    ds: ContrastDataset,
    direction: Direction | Float[Tensor, " d_model"],
    *,
    position: PositionSpec = "all",
    how: str = "mean",
    layers: int | Sequence[int] | str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> AblationResult:
    """Remove the component along ``direction`` on the clean prompts and measure the damage.

    Args:
        direction: a :class:`Direction` or a raw vector (then ``layers`` is required).
        position: where, together: ``"all"`` (the default), a named position (``"COMMA"``, or
            a multi-position mask such as SST's commas), a list of names, or a ``[batch, pos]``
            bool mask (:meth:`ContrastDataset.position_mask`).
        how: what the component is replaced by: ``"mean"`` (its mean over the dataset's
            clean prompts at the same position), ``"zero"``, or ``"resample"`` (its value in
            another example at the same position, drawn with ``seed``).
        layers: where (default: the direction's layer; ``"all"``: every layer). Mean and
            resample values come from the un-ablated clean run.
        backend: ``"auto"`` (default: ``"fast"`` on a TransformerBridge, where each pass runs
            from the first layer it changes and unembeds only the final position), ``"fast"``
            or ``"hooks"`` (full ``run_with_hooks`` passes); the same numbers.

    Returns:
        :class:`AblationResult` with logit differences and centred accuracy before/after.
        :func:`ablate_each` ablates several directions or positions with one clean run.
    """
    return ablate_each(model, ds, [direction], positions=[position], how=how, layers=layers, seed=seed,
                       batch_size=batch_size, progress=progress, backend=backend)[0]


@torch.no_grad()
def ablate_each(
    model: Any,
    ds: ContrastDataset,
    directions: Sequence[Direction | Float[Tensor, " d_model"]],
    *,
    positions: Sequence[PositionSpec] = ("all",),
    how: str = "mean",
    layers: int | Sequence[int] | str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> list[AblationResult]:
    """:func:`ablate` for every (direction, position) pair, in that order (directions outer):
    one clean run caches the activations they all read, and the ablated runs share forward
    passes. The directions must share their layer (or ``layers``) and site.

    Returns:
        one :class:`AblationResult` per pair, each equal to the one :func:`ablate` gives.
    """
    ds = check_dataset(ds, model)
    check_batch_size(batch_size)
    resolve_backend(model, backend)
    if how not in ABLATION_MODES:
        raise ValueError(f"how={how!r} is unknown; choose one of {ABLATION_MODES}")
    if not directions or not positions:
        raise ValueError("ablate_each needs at least one direction and one position")
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers={layers!r}: give an int, a list of ints, None or 'all'")
        layers = list(range(model.cfg.n_layers))
    layer_list = None if layers is None else _layers_arg(model, layers)
    dirs = [as_direction(v, layer=layer_list[0] if layer_list else None) for v in directions]
    for d in dirs:
        _check_model_dir(model, d, own_layer=layer_list is None)
    if len({(d.layer if layer_list is None else None, d.site) for d in dirs}) > 1:
        raise ValueError("ablate_each: the directions differ in layer or site; give layers= or ablate them apart")
    check_binary_labels(ds)
    layer_list = layer_list or [dirs[0].layer]
    names = [hook_name(layer, dirs[0].site) for layer in layer_list]
    acts, ld_before = cache_batched(model, ds.clean_tokens, names, batch_size=batch_size, answers=ds.answers)
    configs = [(d, position) for d in dirs for position in positions]
    units = torch.stack([d.unit() for d, _ in configs])  # [config, d_model]
    masks = torch.stack([ds.position_mask(position).cpu() for _, position in configs])  # [config, batch, pos]
    # targets[name]: [config, batch, pos], the value the component takes where it is ablated
    targets = {name: torch.stack([_ablation_target(acts[name], unit, mask, how, seed)
                                  for unit, mask in zip(units, masks)]) for name in names}

    def hooks(c: Tensor, e: Tensor) -> list[tuple[str, Any]]:
        # a pass may hold rows of several configurations: each row its own direction
        return [(name, _ablation_hook(units[c], targets[name][c, e], masks[c, e])) for name in names]

    ld_after = run_grid(model, ds.clean_tokens, logit_diff_metric(ds.answers), n_configs=len(configs), hooks=hooks,
                        batch_size=batch_size, progress=progress, desc=f"{how}-ablation", backend=backend,
                        output="last")
    results = []
    for i, (d, position) in enumerate(configs):
        label = ds.position_label(position)
        results.append(AblationResult(
            per_example=ld_after[i],
            metric="logit_diff",
            ld_before=ld_before.float().cpu(),
            class_labels=ds.labels.cpu(),
            layers=layer_list,
            position=label,
            how=how,
            method=d.method,
            **provenance(model, ds, layers=layers, position=label, how=how, seed=seed, batch_size=batch_size),
        ))
    return results


def _ablation_target(act: Tensor, unit: Tensor, mask: Tensor, how: str, seed: int) -> Tensor:
    """``[batch, pos]``: what the component along ``unit`` becomes where ``mask`` is true."""
    proj = (act.float() @ unit.to(act.device)).cpu()  # [batch, pos]
    if how == "zero":
        return torch.zeros_like(proj)
    if how == "mean":
        # mean over the examples that are ablated at each position
        m = mask.float()
        return ((proj * m).sum(0) / m.sum(0).clamp(min=1)).expand_as(proj).clone()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(proj.shape[0], generator=g)
    if proj.shape[0] > 1:  # never resample an example from itself
        same = perm == torch.arange(proj.shape[0])
        perm[same] = (perm[same] + 1) % proj.shape[0]
    return proj[perm]


# --------------------------------------------------------------------------- activation addition


@contextlib.contextmanager
def add(
    model: Any,
    direction: Direction | Float[Tensor, " d_model"],
    coeff: float,
    *,
    layer: int | None = None,
) -> Iterator[Any]:
    """Add ``coeff * d`` (``d`` the unit direction) to the residual stream at every position.

    Works around plain forward passes and ``model.generate`` (every generated token gets it
    too)::

        with add(model, direction, 8.0):
            text = model.generate("I thought this movie was", max_new_tokens=10)

    Args:
        direction: a :class:`Direction` (its layer and site are used) or a raw vector.
        coeff: the multiple of the unit vector to add (negative steers the other way).
        layer: the layer (default: the direction's; required for a raw vector).
    """
    coeff = check_coefficient(coeff, "coeff")
    d = as_direction(direction, layer=layer)
    _check_model_dir(model, d, own_layer=layer is None)
    _check_site(d.site)
    where = check_layer(model, d.layer if layer is None else layer)
    name = hook_name(where, d.site)
    vec = float(coeff) * d.unit()

    def hook(h: Tensor, hook: Any = None) -> Tensor:
        return h + vec.to(h.device, h.dtype)

    with hooked(model, [(name, hook)]):
        yield model
