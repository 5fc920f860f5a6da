"""Sentiment directions: find a direction, test it causally, evaluate methods across layers.

The hypothesis (Tigges et al. 2023): a model represents sentiment along one direction of
its residual stream. Testing it takes three steps.

1. **Fit** a direction from a contrast dataset's activations at a named position
   (``"ADJ"``): :func:`fit` with ``mean_diff``, ``kmeans``, ``logistic``, ``pca`` (all
   correlational) or ``das`` (trained so that patching along it moves the answer). Every
   :class:`Direction` is a unit vector pointing towards positive sentiment::

       d = directions.fit(model, train, "mean_diff", layer=14)

2. **Intervene** along it: :func:`directional_patch` (does the component along ``d`` alone
   carry the clean answer into the corrupt run?), :func:`ablate` (does removing it hurt?),
   :func:`add` (steer generation with ``coeff * d``)::

       directions.directional_patch(model, test, d).ld_recovered     # ~0.85 on smollm2-135m

3. **Evaluate** every method at every layer against random directions:
   :func:`evaluate` -> :class:`DirectionEvaluation` (``to_dataframe()``, ``plot()``), and look
   at single texts with :func:`project` (per-token projections as coloured tokens).
"""

from mechlens.directions.evaluate import DirectionEvaluation, evaluate
from mechlens.directions.fit import (
    DAS_DEFAULTS,
    METHODS,
    SITES,
    Direction,
    collect_activations,
    fit,
    fit_activations,
    hook_name,
    random_directions,
)
from mechlens.directions.interventions import (
    ABLATION_MODES,
    AblationResult,
    DirectionalPatchResult,
    ablate,
    ablate_each,
    add,
    directional_patch,
)
from mechlens.directions.project import Projection, project

__all__ = [
    "ABLATION_MODES",
    "DAS_DEFAULTS",
    "METHODS",
    "SITES",
    "AblationResult",
    "Direction",
    "DirectionEvaluation",
    "DirectionalPatchResult",
    "Projection",
    "ablate",
    "ablate_each",
    "add",
    "collect_activations",
    "directional_patch",
    "evaluate",
    "fit",
    "fit_activations",
    "hook_name",
    "project",
    "random_directions",
]
