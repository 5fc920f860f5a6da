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

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from mechlens.results import Measurement

__all__ = ["PatchResult"]


@dataclass(kw_only=True, repr=False)
class PatchResult(Measurement):
    """A patching-style sweep: the result core (:class:`~mechlens.results.Measurement`) plus
    what was patched (``method``, ``site``, ``mode``), the unpatched ``baselines`` (metric per
    example on the clean and corrupt runs) and method-specific ``meta``."""

    site: str
    mode: str
    method: str = "activation"
    baselines: dict[str, Tensor] = field(default_factory=dict)
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

    def plot(self, ci: bool = False, *, title: str | None = None) -> Any:
        """A matplotlib Figure: bars for one axis, a heatmap for two (layer down, the other
        axis across, token labels for positions), small multiples over a third axis.

        ``ci=True`` adds 95% bootstrap intervals: error bars on bars; on heatmaps, a dot on
        every cell whose interval excludes zero (explained in a legend under the figure) and,
        for a single heatmap, a second panel with the half-widths and its own colourbar.
        """
        from matplotlib.figure import Figure

        vals = self.values.detach().cpu().float().numpy()
        lo = hi = None
        if ci:
            lo_t, hi_t = self.ci()
            lo, hi = lo_t.cpu().numpy(), hi_t.cpu().numpy()
        title = title or self._title()
        label = self.metric
        if len(self.axes) == 1:
            fig = Figure(figsize=(max(4.0, 0.35 * len(vals) + 2), 3.5), layout="constrained")
            ax = fig.subplots()
            x = np.arange(len(vals))
            err = None if lo is None else np.stack([vals - lo, hi - vals])
            ax.bar(x, vals, yerr=err, capsize=2, color=np.where(vals >= 0, "tab:red", "tab:blue"))
            ax.set_xticks(x, [str(v) for v in self.labels[self.axes[0]]], rotation=90 if len(x) > 12 else 0)
            ax.set_xlabel(self.axes[0])
            ax.set_ylabel(label)
            ax.axhline(0, color="black", lw=0.5)
            ax.set_title(title)
            return fig
        if len(self.axes) == 2:
            panels = [(vals, lo, hi, None)]
        else:
            facet = self.axes[2]
            panels = [
                (vals[..., i], None if lo is None else lo[..., i], None if hi is None else hi[..., i],
                 f"{facet} {self.labels[facet][i]}")
                for i in range(vals.shape[2])
            ]
        n_cols = len(panels) * (2 if ci and len(self.axes) == 2 else 1)
        rows_axis, cols_axis = self.axes[0], self.axes[1]
        n_r, n_c = vals.shape[0], vals.shape[1]
        cols = min(n_cols, 4)
        grid_rows = math.ceil(n_cols / cols)
        fig = Figure(
            figsize=(min(24.0, cols * max(3.0, 0.3 * n_c + 1.5)), grid_rows * max(2.5, 0.22 * n_r + 1.5)),
            layout="constrained",
        )
        axs = np.atleast_1d(fig.subplots(grid_rows, cols, squeeze=False)).flatten()
        vmax = float(np.nanmax(np.abs(vals))) or 1.0
        k = 0
        value_axes = []
        for v, plo, phi, sub in panels:
            ax = axs[k]
            k += 1
            value_axes.append(ax)
            im = ax.imshow(v, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
            self._ticks(ax, rows_axis, cols_axis, n_r, n_c)
            ax.set_title(sub or title, fontsize=9 if sub else 10)
            if plo is not None:
                sig = (plo > 0) | (phi < 0)
                yy, xx = np.nonzero(sig)
                ax.scatter(xx, yy, s=6, c="black", marker="o")
                if len(self.axes) == 2:
                    ax2 = axs[k]
                    k += 1
                    im2 = ax2.imshow((phi - plo) / 2, cmap="viridis", aspect="auto")
                    self._ticks(ax2, rows_axis, cols_axis, n_r, n_c)
                    ax2.set_title("95% bootstrap CI half-width", fontsize=10)
                    fig.colorbar(im2, ax=ax2, shrink=0.8, label=f"half-width ({label})")
        for ax in axs[k:]:
            ax.set_visible(False)
        # one colourbar for the value panels (they share a scale), beside them only: the
        # half-width panel has its own
        fig.colorbar(im, ax=value_axes, shrink=0.8, label=label)
        if lo is not None:
            from matplotlib.lines import Line2D

            dot = Line2D([], [], ls="", marker="o", ms=3, color="black")
            fig.legend([dot], ["cell whose 95% bootstrap CI excludes 0"], loc="outside lower center",
                       fontsize=8, frameon=False)
        if len(panels) > 1:
            fig.suptitle(title)
        return fig

    def _ticks(self, ax: Any, rows_axis: str, cols_axis: str, n_r: int, n_c: int) -> None:
        ax.set_yticks(range(n_r), [str(v) for v in self.labels[rows_axis]], fontsize=7)
        ax.set_xticks(range(n_c), [str(v) for v in self.labels[cols_axis]], fontsize=7,
                      rotation=90 if cols_axis == "pos" or n_c > 12 else 0)
        ax.set_ylabel(rows_axis)
        ax.set_xlabel(cols_axis)

    def plot_interactive(self) -> Any:
        """A plotly figure (heatmap with value, stderr and CI on hover; bars for one axis)."""
        import plotly.express as px
        import plotly.graph_objects as go

        df = self.to_dataframe()
        if len(self.axes) == 1:
            a = self.axes[0]
            fig = px.bar(
                df, x=df[a].astype(str), y="value",
                error_y=df["ci_high"] - df["value"], error_y_minus=df["value"] - df["ci_low"],
                labels={"x": a, "value": self.metric}, title=self._title(),
            )
            return fig
        vals = self.values.detach().cpu().float().numpy()
        se = self.stderr().cpu().numpy()
        lo, hi = (t.cpu().numpy() for t in self.ci())
        if len(self.axes) == 3:
            n_f = vals.shape[2]
            frames_lab = [str(x) for x in self.labels[self.axes[2]]]
        else:
            n_f, frames_lab = 1, [""]
            vals, se, lo, hi = (x[..., None] for x in (vals, se, lo, hi))
        vmax = float(np.nanmax(np.abs(vals))) or 1.0
        fig = go.Figure()
        for i in range(n_f):
            custom = np.stack([se[..., i], lo[..., i], hi[..., i]], axis=-1)
            fig.add_trace(
                go.Heatmap(
                    z=vals[..., i],
                    x=[str(v) for v in self.labels[self.axes[1]]],
                    y=[str(v) for v in self.labels[self.axes[0]]],
                    customdata=custom,
                    colorscale="RdBu_r", zmin=-vmax, zmax=vmax, visible=(i == 0),
                    hovertemplate=(
                        f"{self.axes[0]}=%{{y}}<br>{self.axes[1]}=%{{x}}<br>{self.metric}=%{{z:.4f}}"
                        "<br>stderr=%{customdata[0]:.4f}<br>95% CI [%{customdata[1]:.4f}, %{customdata[2]:.4f}]"
                        "<extra></extra>"
                    ),
                    name=frames_lab[i],
                )
            )
        if n_f > 1:
            steps = [
                {"method": "update", "args": [{"visible": [j == i for j in range(n_f)]}], "label": frames_lab[i]}
                for i in range(n_f)
            ]
            fig.update_layout(sliders=[{"steps": steps, "currentvalue": {"prefix": f"{self.axes[2]}: "}}])
        fig.update_layout(title=self._title(), xaxis_title=self.axes[1], yaxis_title=self.axes[0])
        fig.update_yaxes(autorange="reversed")
        return fig
