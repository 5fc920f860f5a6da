"""What can be patched, and where: sites, layers, heads and positions.

A *site* is a kind of activation that exists once per layer: the residual stream before,
in the middle of and after a block (``resid_pre``, ``resid_mid``, ``resid_post``), the
outputs of the attention and MLP sublayers (``attn_out``, ``mlp_out``), and per attention
head its output ``z`` (before the output projection), its ``q``, ``k``, ``v`` vectors and
its attention ``pattern``. Each is read and written through a standard TransformerLens
hook name (``blocks.{layer}.hook_resid_pre``, ``blocks.{layer}.attn.hook_z``, ...).

Positions say *where in the prompt* a patch goes:

- ``None``: every position separately (the result gets a ``"pos"`` axis);
- ``"all"``: every position at once (no position axis);
- an ``int`` index (negative counts from the end) or a position name of the dataset
  (``"ADJ"``, ``"END"``, or a mask name such as ``"COMMA"``): that one position per
  example (no position axis);
- a list of indices and/or names: each entry separately (a ``"pos"`` axis).

For ``pattern`` the position is the *destination* (query) position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from mechlens.validate import check_head, check_layers

__all__ = ["Site", "SITES", "STREAM_SITES", "RESIDUAL_SITES", "get_site", "resolve_layers", "resolve_heads", "resolve_positions", "PositionSpec"]


@dataclass(frozen=True)
class Site:
    """One kind of patchable activation.

    Attributes:
        name: the site's name (``"resid_pre"``, ``"z"``, ...).
        hook: hook name template with ``{layer}``.
        layout: activation layout at the hook: ``"bpd"`` [batch, pos, d], ``"bphd"``
            [batch, pos, head, d] or ``"bhqk"`` [batch, head, dest, src].
        per_head: whether the site has a head axis.
        kv: head count is ``n_key_value_heads`` (``k`` and ``v`` on grouped-query models).
        description: one line for error messages and docs.
    """

    name: str
    hook: str
    layout: str
    per_head: bool
    kv: bool
    description: str

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    def n_heads(self, model: Any) -> int:
        if not self.per_head:
            return 0
        if self.kv:
            return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
        return int(model.cfg.n_heads)


SITES: dict[str, Site] = {
    s.name: s
    for s in [
        Site("resid_pre", "blocks.{layer}.hook_resid_pre", "bpd", False, False, "residual stream entering the block"),
        Site("resid_mid", "blocks.{layer}.hook_resid_mid", "bpd", False, False,
             "residual stream between attention and MLP (sequential blocks only)"),
        Site("resid_post", "blocks.{layer}.hook_resid_post", "bpd", False, False, "residual stream leaving the block"),
        Site("attn_out", "blocks.{layer}.hook_attn_out", "bpd", False, False, "attention sublayer output"),
        Site("mlp_out", "blocks.{layer}.hook_mlp_out", "bpd", False, False, "MLP sublayer output"),
        Site("z", "blocks.{layer}.attn.hook_z", "bphd", True, False, "head output before the output projection"),
        Site("q", "blocks.{layer}.attn.hook_q", "bphd", True, False, "head queries"),
        Site("k", "blocks.{layer}.attn.hook_k", "bphd", True, True, "head keys"),
        Site("v", "blocks.{layer}.attn.hook_v", "bphd", True, True, "head values"),
        Site("pattern", "blocks.{layer}.attn.hook_pattern", "bhqk", True, False,
             "attention pattern (destination position is the patched position)"),
    ]
}
# Derived views of the one registry: sites that hold one d_model vector per position (what a
# steering vector is added to), and the residual stream itself (where directions are fitted).
STREAM_SITES: tuple[str, ...] = tuple(n for n, s in SITES.items() if s.layout == "bpd")
RESIDUAL_SITES: tuple[str, ...] = tuple(n for n in STREAM_SITES if n.startswith("resid"))
_ALIASES = {"head_out": "z", "result_z": "z", "attn_pattern": "pattern", "resid": "resid_pre"}


def has_hook(model: Any, name: str) -> bool:
    """Whether ``name`` resolves to a hook point (aliases included), without building
    the model's whole hook dictionary."""
    obj = model
    try:
        for part in name.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    except (AttributeError, IndexError, KeyError, TypeError):
        return False
    from transformer_lens.hook_points import HookPoint

    return isinstance(obj, HookPoint)


def get_site(model: Any, site: str | Site) -> Site:
    """The :class:`Site` named ``site``; raises a clear error for unknown or absent sites."""
    if isinstance(site, Site):
        return site
    if not isinstance(site, str):
        raise TypeError(f"site must be a site name such as 'resid_pre', not {type(site).__name__}")
    key = _ALIASES.get(site, site)
    if key not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITES)}")
    s = SITES[key]
    if not has_hook(model, s.hook_name(0)):
        why = (
            " (this model runs attention and MLP in parallel, so there is no residual stream "
            "between them; patch 'resid_pre', 'attn_out' or 'mlp_out' instead)"
            if s.name == "resid_mid"
            else ""
        )
        raise ValueError(f"site {site!r} does not exist on this model: no hook {s.hook_name(0)!r}{why}")
    return s


def resolve_layers(model: Any, layers: int | Iterable[int] | None, *, what: str = "layers") -> list[int]:
    """``None`` -> every layer; an int or an iterable of ints -> those layers, checked and sorted."""
    return check_layers(model, layers, what=what, sort=True)


def resolve_heads(model: Any, site: Site, heads: int | Iterable[int] | None) -> list[int]:
    """``None`` -> every head of the site; else those heads, range-checked."""
    if not site.per_head:
        if heads is not None:
            raise ValueError(
                f"heads={heads!r} was given but site {site.name!r} has no heads; "
                "use a head site ('z', 'q', 'k', 'v', 'pattern') or leave heads=None"
            )
        return []
    n = site.n_heads(model)
    if heads is None:
        return list(range(n))
    if isinstance(heads, int):
        heads = [heads]
    kind = "key/value heads" if site.kv and n != model.cfg.n_heads else "heads"
    out = [check_head(h, n, kind=f"{kind} (site {site.name!r})") for h in heads]
    if not out:
        raise ValueError("heads is empty: give at least one head (or None for all)")
    return sorted(set(out))


@dataclass
class PositionSpec:
    """Resolved positions: one ``[batch, pos]`` mask per entry, and labels when there is an axis."""

    masks: Bool[Tensor, "entry batch pos"]
    labels: list[str]
    has_axis: bool
    description: str


def _entry_mask(ds: Any, entry: int | str | tuple) -> tuple[Tensor, str]:
    if isinstance(entry, bool) or not isinstance(entry, (int, str, tuple)):
        raise TypeError(
            f"positions entries must be int indices, position names or tuples of them (a union), not {entry!r}"
        )
    return ds.position_mask(list(entry) if isinstance(entry, tuple) else entry), ds.position_label(entry)


def resolve_positions(
    model: Any, ds: Any, positions: None | str | int | Sequence[int | str]
) -> PositionSpec:
    """Turn a ``positions`` argument into masks (see the module docstring)."""
    b, s = ds.batch, ds.seq_len
    if positions is None:
        eye = torch.eye(s, dtype=torch.bool, device=ds.device)
        masks = eye[:, None, :].expand(s, b, s).clone()
        return PositionSpec(masks, ds.position_labels(model), True, "each position")
    if isinstance(positions, str) and positions.lower() == "all":
        return PositionSpec(torch.ones(1, b, s, dtype=torch.bool, device=ds.device), ["all"], False, "all")
    if isinstance(positions, (int, str)) and not isinstance(positions, bool):
        m, label = _entry_mask(ds, positions)
        return PositionSpec(m[None], [label], False, label)
    if isinstance(positions, (list, tuple)):
        if not positions:
            raise ValueError("positions is empty: give None, 'all', an index, a name or a non-empty list")
        pairs = [_entry_mask(ds, p) for p in positions]
        tok = ds.position_labels(model)
        labels = [tok[int(lab)] if lab.isdigit() else lab for _, lab in pairs]
        return PositionSpec(torch.stack([m for m, _ in pairs]), labels, True, "list")
    raise TypeError(
        f"positions must be None, 'all', an int, a position name or a list of them, not {type(positions).__name__}"
    )


def sweep_axes(
    layers: list[int], pos: PositionSpec, heads: list[int], per_head: bool
) -> tuple[tuple[str, ...], dict[str, list], list[int]]:
    """Axes, labels and shape of a layer (x position) (x head) sweep's result cells."""
    axes: tuple[str, ...] = ("layer",)
    labels: dict[str, list] = {"layer": list(layers)}
    shape = [len(layers)]
    if pos.has_axis:
        axes += ("pos",)
        labels["pos"] = pos.labels
        shape.append(len(pos.masks))
    if per_head:
        axes += ("head",)
        labels["head"] = list(heads)
        shape.append(len(heads))
    return axes, labels, shape
