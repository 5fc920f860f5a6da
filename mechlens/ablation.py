"""Ablation: remove a component's output and see what the model loses.

**The method.** Replace what one component (an attention head, an MLP, a whole layer, one
MLP neuron) writes with a value that carries no information about the prompt, run the
model, and measure how much the metric (by default the answer logit difference) changes.
A large drop means the rest of the model relies on that component for this task. Three
replacement values are in use (Wang et al. 2022, Appendix; Chan et al. 2022 on causal
scrubbing; Nanda's and ARENA's tutorials):

- ``how="zero"``: zero. Simple, but zero may be far from any value the component ever
  takes, so it can break the model in ways unrelated to the task.
- ``how="mean"``: the component's mean activation over a reference distribution, per
  position (default: the clean *and* corrupt prompts of ``ds``; or another
  :class:`~mechlens.data.ContrastDataset` of the same token length as ``reference=``).
  Keeps the typical value and removes only what is prompt-specific.
- ``how="resample"``: the activation on another prompt. By default each example takes it
  from its own corrupt partner, which is exactly activation patching in ``mode="noise"``
  (tested equal); with ``reference=`` each example takes it from a random prompt of the
  reference dataset (seeded by ``seed``).

**How to read the result.** :func:`ablate_sweep` ablates one component at a time and
returns an :class:`AblationSweepResult` whose value per component and example is
``metric(ablated) - metric(unablated)`` (negative = the component helps); ``.stderr()`` gives
its standard error over examples and ``baselines["clean"]`` the unablated metric.
:func:`knockout` ablates any set of components for arbitrary code (a context manager; the
hooks are removed on exit, also after an exception), and :func:`knockout_curve` removes
components cumulatively, most harmful first, and reports the metric after each.

Ablations run on :mod:`mechlens.engine` (:func:`~mechlens.engine.run_patches`), many stacked
on the batch axis: on a TransformerBridge the fast backend runs an ablation in block ``L``
from the residual stream cached at ``L`` (blocks ``0..L-1`` run once, not once per
ablation); ``backend="hooks"`` runs full passes on any TransformerLens model.

Example::

    from mechlens.models import load_model
    from mechlens.data import ioi
    from mechlens.ablation import ablate_sweep, knockout, knockout_curve

    model = load_model("smollm2-135m")
    ds = ioi(model, n_prompts=32)
    heads = ablate_sweep(model, ds, "heads", how="mean")     # (layer, head) grid of changes
    heads.top(5)
    with knockout(model, ["L21H3", "L23 mlp"], how="mean", ds=ds):
        logits = model(ds.clean_tokens)
    knockout_curve(model, ds, max_k=10).plot()
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.engine import (
    HOWS,
    Location,
    Patch,
    PatchMetric,
    Replace,
    Zero,
    batches,
    cache_batched,
    cached_run,
    patch,
    prepare_dataset,
    resolve_backend,
    run_patches,
)
from mechlens.engine.sites import resolve_layers, resolve_positions
from mechlens.hooks import hooked
from mechlens.model_protocol import check_model
from mechlens.results import Measurement, provenance
from mechlens.validate import check_batch_size

__all__ = [
    "COMPONENTS", "HOWS", "RANKED_COMPONENTS", "AblationSweepResult", "Component", "KnockoutCurve", "ablate_sweep",
    "knockout", "knockout_curve", "parse_component",
]

COMPONENTS = ("heads", "heads_pos", "mlp", "layer", "neurons")
RANKED_COMPONENTS = ("heads", "mlp", "layer")  # what knockout_curve can rank by its own sweep


@dataclass(kw_only=True, repr=False)
class AblationSweepResult(Measurement):
    """What :func:`ablate_sweep` measures: ``metric(ablated) - metric(unablated)`` per ablated
    component (and position) and example.

    ``component`` is what was ablated one at a time (``"heads"``, ``"heads_pos"``, ``"mlp"``,
    ``"layer"``, ``"neurons"``), ``how`` the replacement value (``"zero"``, ``"mean"``,
    ``"resample"``), ``reference`` where means and resamples came from (``"ds"``: the
    dataset's own prompts, else the reference dataset's name), ``positions`` where it was
    ablated, ``seed`` the resampling seed, ``baselines["clean"]`` the unablated metric.
    """

    LEGACY = ("PatchResult", "ablation", {"component": "site", "how": "mode", "reference": "meta.reference",
                                          "positions": "meta.positions", "seed": "meta.seed"})

    component: str
    how: str
    reference: str = "ds"
    positions: str = "all"
    seed: int = 0
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)

    def _title(self) -> str:
        return f"{self.how} ablation of {self.component}: change in {self.metric} on {self.dataset or 'dataset'}"

    def _summary_lines(self) -> list[str]:
        return [f"{self.how} ablation of each of the {self.component} (change in {self.metric})",
                *super()._summary_lines()]


@dataclass(kw_only=True, repr=False)
class KnockoutCurve(Measurement):
    """What :func:`knockout_curve` measures: the metric per example with the first ``k``
    components of ``order`` ablated together (axis ``"k"``; entry 0 is the unablated run).

    ``component`` is the kind ranked (``"custom"`` when the order was given), ``how``, ``reference``
    and ``seed`` as in :class:`AblationSweepResult`, ``baselines["clean"]`` the unablated metric.
    """

    LEGACY = ("PatchResult", "knockout", {"order": "meta.order", "component": "site", "how": "mode",
                                          "reference": "meta.reference", "seed": "meta.seed"})

    order: list[str]
    component: str
    how: str
    reference: str = "ds"
    seed: int = 0
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)

    def _title(self) -> str:
        return f"{self.how} knock-out of {self.component}, cumulative, on {self.dataset or 'dataset'}"

    def _summary_lines(self) -> list[str]:
        return [f"{self.how} knock-out of up to {len(self.order)} {self.component} components",
                *super()._summary_lines()]


@dataclass(frozen=True)
class Component:
    """One ablatable component: ``kind`` ``"head"`` / ``"mlp"`` / ``"layer"`` / ``"neuron"``
    at ``layer``; ``index`` is the head or neuron (``None`` otherwise)."""

    kind: str
    layer: int
    index: int | None = None

    def __str__(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.index}"
        if self.kind == "neuron":
            return f"L{self.layer}N{self.index}"
        if self.kind == "mlp":
            return f"L{self.layer} mlp"
        return f"L{self.layer}"

    def locations(self, position: Tensor | None = None) -> list[Location]:
        """Where ablating this component intervenes (at ``position``, ``None`` = everywhere)."""
        if self.kind == "head":
            return [Location("z", self.layer, self.index, position)]
        if self.kind == "neuron":
            return [Location("mlp_post", self.layer, self.index, position)]
        if self.kind == "mlp":
            return [Location("mlp_out", self.layer, None, position)]
        return [Location("attn_out", self.layer, None, position), Location("mlp_out", self.layer, None, position)]

    def hooks(self) -> list[str]:
        site = {"head": "blocks.{l}.attn.hook_z", "neuron": "blocks.{l}.mlp.hook_post", "mlp": "blocks.{l}.hook_mlp_out"}
        if self.kind in site:
            return [site[self.kind].format(l=self.layer)]
        return [f"blocks.{self.layer}.hook_attn_out", f"blocks.{self.layer}.hook_mlp_out"]

    def mask(self, hook: str, n: int) -> Tensor:
        """Broadcastable mask over the activation at ``hook`` (``n`` heads or neurons)."""
        if self.kind == "head":
            m = torch.zeros(1, 1, n, 1, dtype=torch.bool)
            m[0, 0, self.index] = True
            return m
        if self.kind == "neuron":
            m = torch.zeros(1, 1, n, dtype=torch.bool)
            m[0, 0, self.index] = True
            return m
        return torch.ones(1, 1, 1, dtype=torch.bool)


_PATTERNS = [
    (re.compile(r"^L(\d+)H(\d+)$"), "head"),
    (re.compile(r"^L(\d+)N(\d+)$"), "neuron"),
    (re.compile(r"^L(\d+)[ .]?mlp$"), "mlp"),
    (re.compile(r"^L(\d+)$"), "layer"),
]


def parse_component(model: Any, c: Any) -> Component:
    """A :class:`Component` from ``"L3H2"`` (head), ``"L3N100"`` (neuron), ``"L3 mlp"``,
    ``"L3"`` (the layer's attention and MLP), a tuple ``("head", 3, 2)`` or a Component."""
    if isinstance(c, Component):
        comp = c
    elif isinstance(c, str):
        for pat, kind in _PATTERNS:
            m = pat.match(c.strip())
            if m:
                nums = [int(x) for x in m.groups()]
                comp = Component(kind, nums[0], nums[1] if len(nums) > 1 else None)
                break
        else:
            raise ValueError(
                f"components: cannot read {c!r}; write 'L3H2' (head), 'L3N100' (neuron), 'L3 mlp' or 'L3' (layer)"
            )
    elif isinstance(c, tuple) and c and c[0] in ("head", "mlp", "layer", "neuron"):
        comp = Component(c[0], int(c[1]), int(c[2]) if len(c) > 2 else None)
    else:
        raise TypeError(f"components entries must be strings like 'L3H2', tuples or Components, not {c!r}")
    n = int(model.cfg.n_layers)
    if not 0 <= comp.layer < n:
        raise ValueError(f"components: {c!r} names layer {comp.layer}; the model has layers 0..{n - 1}")
    limit = {"head": int(model.cfg.n_heads), "neuron": _d_mlp(model)}.get(comp.kind)
    if limit is not None and (comp.index is None or not 0 <= comp.index < limit):
        raise ValueError(f"components: {c!r} is out of range: there are {comp.kind}s 0..{limit - 1}")
    return comp


def _d_mlp(model: Any) -> int:
    return int(getattr(model.cfg, "d_mlp", None) or 4 * model.cfg.d_model)


def _n_at(model: Any, hook: str) -> int:
    return int(model.cfg.n_heads) if hook.endswith("attn.hook_z") else _d_mlp(model)


def _check_how(how: str) -> None:
    if how not in HOWS:
        raise ValueError(f"how={how!r}: choose one of {list(HOWS)}")


def _reference_tokens(model: Any, ds: Any, reference: Any) -> Tensor:
    if reference is None:
        return torch.cat([ds.clean_tokens, ds.corrupt_tokens])
    if not hasattr(reference, "clean_tokens"):
        raise TypeError(f"reference must be a ContrastDataset or None, not {type(reference).__name__}")
    reference = prepare_dataset(model, reference)
    return torch.cat([reference.clean_tokens, reference.corrupt_tokens])


def _sources(
    model: Any, ds: Any, hooks: Iterable[str], how: str, reference: Any, seed: int, batch_size: int | None
) -> dict[str, Tensor]:
    """The replacement value at each hook: ``[1 or batch, pos, ...]``."""
    hooks = sorted(set(hooks))
    if how == "resample" and reference is None:
        cache, _ = cache_batched(model, ds.corrupt_tokens, hooks, batch_size=batch_size)
        return cache
    ref = _reference_tokens(model, ds, reference)
    if ref.shape[1] != ds.seq_len:
        raise ValueError(
            f"reference has prompts of {ref.shape[1]} tokens but ds has {ds.seq_len}; mean and resample "
            "ablation replace values position by position, so the reference needs the same length"
        )
    if how == "mean":
        sums: dict[str, Tensor] = {}
        dev: dict[str, torch.device] = {}
        for sl in batches(len(ref), batch_size):
            _, cache = cached_run(model, ref[sl], hooks)
            for k, v in cache.items():
                sums[k] = sums.get(k, 0) + v.to("cpu", torch.float64).sum(0, keepdim=True)
                dev[k] = v.device
        # summed in float64 (on the CPU: some accelerators have none): where every reference
        # prompt has the same value (a shared first token) the mean is exactly that value, so
        # the ablation changes nothing there
        return {k: (v / len(ref)).float().to(dev[k]) for k, v in sums.items()}
    # resample from the reference: each example takes a random reference prompt (seeded)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(ref), (ds.batch,), generator=g).to(ref.device)
    cache, _ = cache_batched(model, ref[pick], hooks, batch_size=batch_size)
    return cache


def _patches(model: Any, comps: Sequence[Component], pos_mask: Tensor | None, src: dict[str, Tensor],
             how: str) -> list[Patch]:
    """One configuration: every location of ``comps`` (at ``pos_mask``) takes the ablated value."""
    out = []
    for c in comps:
        for loc in c.locations(pos_mask):
            value = Zero() if how == "zero" else Replace(src[loc.hook(model)])
            out.append(patch(model, loc, value))
    return out


def _metric(metric: Any) -> Any:
    if not callable(metric) and metric != "logit_diff":
        raise ValueError(f"metric={metric!r}: choose 'logit_diff' or a callable(logits, ds) -> [batch]")
    return metric


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")


def ablate_sweep(
    model: Any,
    ds: Any,
    component: str = "heads",
    *,
    how: str = "mean",
    reference: Any = None,
    layers: int | Iterable[int] | None = None,
    heads: int | Iterable[int] | None = None,
    neurons: int | Iterable[int] | None = None,
    positions: None | str | int | Sequence[int | str] = "all",
    metric: str | Callable[..., Tensor] = "logit_diff",
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> AblationSweepResult:
    """Ablate one component at a time on the clean prompts; the change in the metric.

    Args:
        model: a TransformerLens model.
        ds: a :class:`~mechlens.data.ContrastDataset`; its clean prompts are run.
        component: ``"heads"`` (each head's ``hook_z``; axes ``("layer", "head")``),
            ``"heads_pos"`` (each head at each position separately: ``positions=None``),
            ``"mlp"`` (``hook_mlp_out``), ``"layer"`` (attention and MLP outputs together)
            or ``"neurons"`` (``mlp.hook_post``, one neuron; axes ``("layer", "neuron")``).
        how: ``"zero"``, ``"mean"`` (default) or ``"resample"`` (see the module docstring).
        reference: ``None`` (mean over the clean and corrupt prompts of ``ds``; resample
            from each example's corrupt partner) or another ContrastDataset of the same
            token length.
        layers: layers to sweep (default all).
        heads: ``"heads"`` only: heads to sweep (default all).
        neurons: ``"neurons"`` only: neurons to sweep (default all ``d_mlp``: that is many
            runs on a real model; give a list).
        positions: where to ablate: ``"all"`` (default, every position at once), ``None``
            (each position separately: a ``"pos"`` axis), an index or name, or a list.
        metric: ``"logit_diff"`` or ``metric(logits, ds) -> [batch]``.
        seed: seeds ``how="resample"`` with a ``reference``.
        batch_size: sequences per forward pass (default 128; several ablations share a pass).
        progress: show a progress bar.
        backend: ``"fast"`` (TransformerBridge: an ablation in block ``L`` runs only blocks
            ``L..n-1``, from the residual stream cached at ``L``), ``"hooks"`` (full
            ``run_with_hooks`` passes, any TransformerLens model) or ``"auto"`` (fast where
            it applies). Both give the same numbers.

    Returns:
        An :class:`AblationSweepResult` holding ``metric(ablated) - metric(unablated)`` per
        cell and example.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    if component not in COMPONENTS:
        raise ValueError(f"component={component!r}: choose one of {list(COMPONENTS)}")
    _check_how(how)
    _check_seed(seed)
    check_batch_size(batch_size)
    metric = _metric(metric)
    resolve_backend(model, backend)
    if component == "heads_pos":
        component, positions = "heads", None
    if heads is not None and component != "heads":
        raise ValueError(f"heads={heads!r} only applies to component='heads'")
    if neurons is not None and component != "neurons":
        raise ValueError(f"neurons={neurons!r} only applies to component='neurons'")
    ds = prepare_dataset(model, ds)
    layer_list = resolve_layers(model, layers)
    pos = resolve_positions(model, ds, positions)
    kind, idx_name, idx_list = {
        "heads": ("head", "head", _indices(heads, int(model.cfg.n_heads), "heads")),
        "neurons": ("neuron", "neuron", _indices(neurons, _d_mlp(model), "neurons")),
        "mlp": ("mlp", None, [None]),
        "layer": ("layer", None, [None]),
    }[component]
    cells = [(layer, p, i) for layer in layer_list for p in range(len(pos.masks)) for i in idx_list]
    comps = {(layer, i): Component(kind, layer, i) for layer in layer_list for i in idx_list}
    hooks = {h for c in comps.values() for h in c.hooks()}
    src = {} if how == "zero" else _sources(model, ds, hooks, how, reference, seed, batch_size)
    pm = PatchMetric.measured(model, ds, metric, batch_size=batch_size)
    base = pm.baselines["clean"].float().cpu()
    all_pos = not pos.has_axis and bool(pos.masks.all())
    configs = [
        _patches(model, [comps[(layer, i)]], None if all_pos else pos.masks[p], src, how) for layer, p, i in cells
    ]
    out = run_patches(model, ds.clean_tokens, configs, pm.on_rows, output=pm.output, backend=backend,
                      batch_size=batch_size, progress=progress, desc=f"ablating {component}")
    change = out - base[None]
    shape = [len(layer_list)] + ([len(pos.masks)] if pos.has_axis else []) + ([len(idx_list)] if idx_name else [])
    axes = ("layer",) + (("pos",) if pos.has_axis else ()) + ((idx_name,) if idx_name else ())
    labels: dict[str, list] = {"layer": layer_list}
    if pos.has_axis:
        labels["pos"] = pos.labels
    if idx_name:
        labels[idx_name] = idx_list
    return AblationSweepResult(
        per_example=change.view(*shape, ds.batch), axes=axes, labels=labels, metric=pm.name,
        component=component, how=how, reference="ds" if reference is None else reference.name,
        positions=pos.description, seed=seed, baselines={"clean": base}, **provenance(model, ds, args=args),
    )


def _indices(x: Any, n: int, what: str) -> list[int]:
    if x is None:
        return list(range(n))
    if isinstance(x, int) and not isinstance(x, bool):
        x = [x]
    out = []
    for i in x:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"{what}: {i!r} is out of range 0..{n - 1}")
        out.append(i % n)
    if not out:
        raise ValueError(f"{what} is empty: give at least one (or None for all)")
    return sorted(set(out))


@contextmanager
def knockout(
    model: Any,
    components: Iterable[Any],
    *,
    how: str = "zero",
    ds: Any = None,
    reference: Any = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Iterator[Any]:
    """Ablate ``components`` (``"L3H2"``, ``"L3 mlp"``, ``"L3"``, ``"L3N100"``, ...) for the
    code inside the ``with`` block; the hooks are removed on exit, even after an exception.

    ``how="zero"`` works on any input. ``"mean"`` needs ``ds`` (the mean over its clean and
    corrupt prompts, or over ``reference``'s) and inputs of the same token length.
    ``"resample"`` needs ``ds``, and the code must run ``ds.clean_tokens``-shaped batches: each
    row takes its corrupt partner's value (or a random ``reference`` prompt's).
    """
    check_model(model)
    _check_how(how)
    _check_seed(seed)
    comps = [parse_component(model, c) for c in components]
    src: dict[str, Tensor] = {}
    if how != "zero":
        if ds is None:
            raise ValueError(f"knockout(how={how!r}) needs ds= (the prompts the values come from)")
        ds = prepare_dataset(model, ds)
        src = _sources(model, ds, {h for c in comps for h in c.hooks()}, how, reference, seed, batch_size)
    by_hook: dict[str, list[Component]] = {}
    for c in comps:
        for h in c.hooks():
            by_hook.setdefault(h, []).append(c)

    def make(hook_name: str, cs: list[Component]) -> Callable[..., Tensor]:
        mask = cs[0].mask(hook_name, _n_at(model, hook_name))
        for c in cs[1:]:
            mask = mask | c.mask(hook_name, _n_at(model, hook_name))

        def hook(act: Tensor, hook: Any) -> Tensor:
            if how == "zero":
                value: Tensor = torch.zeros((), dtype=act.dtype, device=act.device)
            else:
                value = src[hook_name]
                if value.shape[1] != act.shape[1] or (value.shape[0] not in (1, act.shape[0])):
                    raise ValueError(
                        f"knockout(how={how!r}): the values are for batches of shape {tuple(value.shape[:2])} "
                        f"but the model is running {tuple(act.shape[:2])}; run inputs shaped like ds.clean_tokens"
                    )
            return torch.where(mask.to(act.device), value.to(act.dtype), act)

        return hook

    with hooked(model, [(h, make(h, cs)) for h, cs in by_hook.items()]):
        yield model


def knockout_curve(
    model: Any,
    ds: Any,
    order: Sequence[Any] | None = None,
    *,
    component: str = "heads",
    how: str = "mean",
    reference: Any = None,
    max_k: int | None = None,
    metric: str | Callable[..., Tensor] = "logit_diff",
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> KnockoutCurve:
    """Remove components cumulatively and report the metric after each removal.

    ``order``: the components to remove, first first (``"L3H2"``, ...). Default: an
    :func:`ablate_sweep` over ``component`` (``"heads"``, ``"mlp"``, ``"layer"``) with the same
    ``how``, sorted by effect, most harmful (most negative change) first. ``max_k``: stop
    after that many (default all).
    ``backend``: as in :func:`ablate_sweep` (the same numbers on both).

    Returns:
        A :class:`KnockoutCurve` with axis ``("k",)``: entry 0 is the unablated metric, entry
        ``k`` the metric with the first ``k`` components removed together (labels ``"none"``,
        ``"+L9H6"``, ...); ``order`` lists the components.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    _check_how(how)
    check_batch_size(batch_size)
    metric = _metric(metric)
    ds = prepare_dataset(model, ds)
    if order is None:
        if component not in RANKED_COMPONENTS:
            raise ValueError(f"component={component!r}: knockout_curve ranks 'heads', 'mlp' or 'layer'")
        sweep = ablate_sweep(model, ds, component, how=how, reference=reference, metric=metric, seed=seed,
                             batch_size=batch_size, progress=progress, backend=backend)
        kind = {"heads": "head", "mlp": "mlp", "layer": "layer"}[component]
        vals = sweep.values.flatten()
        cells = [
            Component(kind, layer, i)
            for layer in sweep.labels["layer"]
            for i in (sweep.labels["head"] if component == "heads" else [None])
        ]
        comps = [cells[int(j)] for j in torch.argsort(vals, stable=True)]
    else:
        comps = [parse_component(model, c) for c in order]
        if not comps:
            raise ValueError("order is empty: give at least one component (or None to rank them)")
    if max_k is not None:
        if isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1:
            raise ValueError(f"max_k={max_k!r} must be a positive int or None")
        comps = comps[:max_k]
    hooks = {h for c in comps for h in c.hooks()}
    src = {} if how == "zero" else _sources(model, ds, hooks, how, reference, seed, batch_size)
    pm = PatchMetric.measured(model, ds, metric, batch_size=batch_size)
    configs = [_patches(model, comps[:k], None, src, how) for k in range(1, len(comps) + 1)]
    out = run_patches(model, ds.clean_tokens, configs, pm.on_rows, output=pm.output, backend=backend,
                      batch_size=batch_size, progress=progress, desc="knockout curve")
    per_example = torch.cat([pm.baselines["clean"].float().cpu()[None], out])
    names = [str(c) for c in comps]
    return KnockoutCurve(
        per_example=per_example, axes=("k",), labels={"k": ["none"] + [f"+{n}" for n in names]},
        metric=pm.name, order=names, component=component if order is None else "custom", how=how,
        reference="ds" if reference is None else reference.name, seed=seed,
        baselines={"clean": pm.baselines["clean"].float().cpu()}, **provenance(model, ds, args=args),
    )
