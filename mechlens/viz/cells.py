"""Figures of a :class:`~mechlens.results.Measurement`: its cells as bars (one axis), a
heatmap (two axes, token labels for positions) or small multiples (three axes), with
bootstrap intervals; and the same as an interactive plotly figure."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _ticks(r: Any, ax: Any, rows_axis: str, cols_axis: str, n_r: int, n_c: int) -> None:
    ax.set_yticks(range(n_r), [str(v) for v in r.labels[rows_axis]], fontsize=7)
    ax.set_xticks(range(n_c), [str(v) for v in r.labels[cols_axis]], fontsize=7,
                  rotation=90 if cols_axis == "pos" or n_c > 12 else 0)
    ax.set_ylabel(rows_axis)
    ax.set_xlabel(cols_axis)


def plot_cells(r: Any, ci: bool = False, *, title: str | None = None) -> Any:
    """A matplotlib Figure: bars for one axis, a heatmap for two (layer down, the other
    axis across, token labels for positions), small multiples over a third axis.

    ``ci=True`` adds 95% bootstrap intervals: error bars on bars; on heatmaps, a dot on
    every cell whose interval excludes zero (explained in a legend under the figure) and,
    for a single heatmap, a second panel with the half-widths and its own colourbar.
    """
    from matplotlib.figure import Figure

    vals = r.values.detach().cpu().float().numpy()
    lo = hi = None
    if ci:
        lo_t, hi_t = r.ci()
        lo, hi = lo_t.cpu().numpy(), hi_t.cpu().numpy()
    title = title or r._title()
    label = r.metric
    if not r.axes:  # one number: the mean with its standard error (and CI)
        fig = Figure(figsize=(3.5, 3.5), layout="constrained")
        ax = fig.subplots()
        v = float(vals)
        ax.errorbar([0], [v], yerr=[float(r.stderr())], fmt="o", capsize=4, label="mean +- stderr")
        if lo is not None:
            ax.plot([0, 0], [float(lo), float(hi)], lw=6, alpha=0.3, color="tab:blue", label="95% bootstrap CI")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks([])
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        return fig
    if len(r.axes) == 1:
        # narrow bars, and about half as high as wide: readable when scaled to a page's width
        width = max(4.0, 0.22 * len(vals) + 2)
        fig = Figure(figsize=(width, max(3.5, 0.55 * width)), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(vals))
        err = None if lo is None else np.stack([vals - lo, hi - vals])
        ax.bar(x, vals, yerr=err, capsize=2, color=np.where(vals >= 0, "tab:red", "tab:blue"))
        ax.set_xticks(x, [str(v) for v in r.labels[r.axes[0]]], rotation=90 if len(x) > 12 else 0)
        ax.set_xlabel(r.axes[0])
        ax.set_ylabel(label)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(title)
        return fig
    if len(r.axes) == 2:
        panels = [(vals, lo, hi, None)]
    else:
        facet = r.axes[2]
        panels = [
            (vals[..., i], None if lo is None else lo[..., i], None if hi is None else hi[..., i],
             f"{facet} {r.labels[facet][i]}")
            for i in range(vals.shape[2])
        ]
    n_cols = len(panels) * (2 if ci and len(r.axes) == 2 else 1)
    rows_axis, cols_axis = r.axes[0], r.axes[1]
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
        _ticks(r, ax, rows_axis, cols_axis, n_r, n_c)
        ax.set_title(sub or title, fontsize=9 if sub else 10)
        if plo is not None:
            sig = (plo > 0) | (phi < 0)
            yy, xx = np.nonzero(sig)
            ax.scatter(xx, yy, s=6, c="black", marker="o")
            if len(r.axes) == 2:
                ax2 = axs[k]
                k += 1
                im2 = ax2.imshow((phi - plo) / 2, cmap="viridis", aspect="auto")
                _ticks(r, ax2, rows_axis, cols_axis, n_r, n_c)
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


def plot_cells_interactive(r: Any) -> Any:
    """A plotly figure (heatmap with value, stderr and CI on hover; bars for one axis)."""
    import plotly.express as px
    import plotly.graph_objects as go

    df = r.to_dataframe()
    if not r.axes:
        return px.bar(
            x=[r.metric], y=df["value"], error_y=df["ci_high"] - df["value"],
            error_y_minus=df["value"] - df["ci_low"], labels={"x": "", "y": r.metric}, title=r._title(),
        )
    if len(r.axes) == 1:
        a = r.axes[0]
        fig = px.bar(
            df, x=df[a].astype(str), y="value",
            error_y=df["ci_high"] - df["value"], error_y_minus=df["value"] - df["ci_low"],
            labels={"x": a, "value": r.metric}, title=r._title(),
        )
        return fig
    vals = r.values.detach().cpu().float().numpy()
    se = r.stderr().cpu().numpy()
    lo, hi = (t.cpu().numpy() for t in r.ci())
    if len(r.axes) == 3:
        n_f = vals.shape[2]
        frames_lab = [str(x) for x in r.labels[r.axes[2]]]
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
                x=[str(v) for v in r.labels[r.axes[1]]],
                y=[str(v) for v in r.labels[r.axes[0]]],
                customdata=custom,
                colorscale="RdBu_r", zmin=-vmax, zmax=vmax, visible=(i == 0),
                hovertemplate=(
                    f"{r.axes[0]}=%{{y}}<br>{r.axes[1]}=%{{x}}<br>{r.metric}=%{{z:.4f}}"
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
        fig.update_layout(sliders=[{"steps": steps, "currentvalue": {"prefix": f"{r.axes[2]}: "}}])
    fig.update_layout(title=r._title(), xaxis_title=r.axes[1], yaxis_title=r.axes[0])
    fig.update_yaxes(autorange="reversed")
    return fig
