"""``PatchResult``: the labelled result of every patching sweep.

A sweep measures a metric once per *cell* (a layer, a layer and position, a head, a
sender, ...) and per example. ``PatchResult`` keeps all of it:

- ``per_example`` ``[*cells, batch]``: the metric for each cell and each example;
- ``values`` ``[*cells]``: the mean over examples (for ``fraction_recovered`` exactly the
  paper's fraction of logit difference recovered);
- ``axes`` (``("layer", "pos")``, ``("layer", "pos", "head")``, ``("layer", "head")``,
  ``("sender",)`` ...) and ``labels`` (axis -> one label per entry: layer indices,
  ``"3: ' great' (ADJ)"`` position labels, head indices, sender names);
- what produced it: ``method`` (activation / attribution / path), ``site``, ``metric``,
  ``mode``, ``model_name``, the dataset's name and ``fingerprint``, and ``baselines``
  (the metric per example on the unpatched clean and corrupt runs).

Every cell has a standard error (:meth:`PatchResult.stderr`) and a percentile bootstrap
interval (:meth:`PatchResult.ci`), so a heatmap can show which cells are
distinguishable from zero (``plot(ci=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from mechlens.results import Measurement

__all__ = ["PatchResult"]


@dataclass(kw_only=True, repr=False)
class PatchResult(Measurement):
    """A patching-style sweep: the result core (:class:`~mechlens.results.Measurement`) plus
    what was patched (``method``, ``site``, ``mode``), the unpatched ``baselines`` (metric per
    example on the clean and corrupt runs) and method-specific ``meta``."""

    #: methods whose results were PatchResults before they got their own classes: ``method`` ->
    #: the class; :func:`mechlens.results.load_result` loads such a saved result as that class
    MOVED: ClassVar[dict[str, str]] = {
        "logit_lens": "mechlens.lens:LogitLensResult",
        "dla": "mechlens.lens:DLAResult",
        "ablation": "mechlens.ablation:AblationSweepResult",
        "knockout": "mechlens.ablation:KnockoutCurve",
        "eap": "mechlens.circuits.eap:EdgeScores",
        "eap_faithfulness": "mechlens.circuits.eap:EdgeFaithfulness",
    }

    site: str
    mode: str
    method: str = "activation"
    baselines: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def correlation(self, other: PatchResult, method: str = "pearson") -> float:
        """Correlation of this result's cell values with another's (same axes and shape).

        Typical use: ``attribution_patch(...).correlation(activation_patch(...))`` tells how
        well the linear approximation ranks the cells. ``method``: ``"pearson"`` or ``"spearman"``.
        """
        if not isinstance(other, PatchResult):
            raise TypeError(f"other must be a PatchResult, not {type(other).__name__}")
        if self.axes != other.axes or self.shape != other.shape:
            raise ValueError(
                f"results differ in shape: {self.axes} {self.shape} vs {other.axes} {other.shape}; "
                "run both sweeps with the same site, layers, positions and heads"
            )
        a = pd.Series(self.values.detach().cpu().flatten().numpy())
        b = pd.Series(other.values.detach().cpu().flatten().numpy())
        if method not in ("pearson", "spearman"):
            raise ValueError(f"method={method!r}: choose 'pearson' or 'spearman'")
        return float(a.corr(b, method=method))

    def _summary_lines(self) -> list[str]:
        return [f"{self.method} patching of {self.site} ({self.mode})", *super()._summary_lines()]

    # ------------------------------------------------------------------ plots
    def _title(self) -> str:
        return f"{self.method} patching: {self.site} ({self.mode}) on {self.dataset or 'dataset'}"
