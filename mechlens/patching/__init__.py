"""Patching: exact activation patching, attribution patching and path patching.

- :func:`activation_patch` — exact, batched sweeps over (layer, position[, head]) that skip
  the layers a patch cannot change;
- :func:`attribution_patch` — the gradient approximation of the same sweep (two forward
  passes and one backward), same :class:`PatchResult` shape;
- :func:`path_patch` — the effect of sender nodes on receiver nodes along direct paths
  only (Wang et al. 2022 / ARENA semantics), batched over senders;
- :class:`PatchResult` — labelled values with per-example numbers, stderr, bootstrap
  intervals, tables, plots, save/load.

See ``docs/patching.md`` for a guide and benchmark numbers.
"""

from mechlens.engine.sites import SITES, Site, get_site
from mechlens.patching.activation import activation_patch
from mechlens.patching.attribution import attribution_patch
from mechlens.patching.path import Node, parse_node, path_patch
from mechlens.patching.result import PatchResult

__all__ = [
    "activation_patch", "attribution_patch", "path_patch", "PatchResult", "SITES", "Site", "get_site",
    "Node", "parse_node",
]
