"""Labelled heatmaps: one helper that every mechlens result uses for its ``.plot()``.

A heatmap here is a 2-D array with a label for every row and column (layers, positions,
tokens, heads). ``heatmap`` draws it with matplotlib, puts the labels on the axes in a font
chain that renders CJK tokens (see ``mechlens.viz.fonts``) and returns the ``Figure``;
``save_figure`` writes it (PNG, SVG, PDF by suffix) and closes it.

Colour scales: pass ``center=0`` for signed quantities (logit-difference recovery, patching
effects) to get a diverging map symmetric around the centre, so white means "no effect";
leave it ``None`` for non-negative quantities (attention probabilities, norms).

Figures are made with ``matplotlib.figure.Figure`` directly, not ``pyplot``: nothing is
shown, no global figure list grows, and it works under any backend (notebooks display the
returned Figure as an image).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mechlens.fileio import atomic_path
from mechlens.viz.fonts import cjk_fonts, font_family

__all__ = ["heatmap", "save_figure"]


def _as_2d(values: Any, name: str = "values") -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"heatmap({name}=...) needs a 2-D array [rows, cols], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"heatmap({name}=...) is empty (shape {arr.shape})")
    return arr


def _check_labels(labels: Sequence[Any] | None, n: int, name: str, axis: str) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(x) for x in labels]
    if len(labels) != n:
        raise ValueError(f"heatmap({name}=...) has {len(labels)} labels but values has {n} {axis}")
    return labels


def heatmap(
    values: Float[Tensor, "row col"] | np.ndarray | Sequence[Sequence[float]],
    x_labels: Sequence[Any] | None = None,
    y_labels: Sequence[Any] | None = None,
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cmap: str | None = None,
    center: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    colorbar_label: str | None = None,
    annotate: bool = False,
    fmt: str = ".2f",
    x_rotation: float = 90,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Draw ``values[row, col]`` with ``x_labels`` under the columns and ``y_labels`` by the rows.

    Args:
        values: 2-D tensor/array; NaN cells are left blank (e.g. the masked upper triangle of
            a causal attention pattern).
        x_labels, y_labels: one label per column / row (tokens, positions, layers, heads).
        title, xlabel, ylabel, colorbar_label: text; CJK characters render.
        cmap: matplotlib colour map; default ``"RdBu_r"`` when ``center`` is set (red =
            positive) and ``"viridis"`` otherwise.
        center: value at the middle of a diverging colour scale; limits become symmetric
            around it unless ``vmin``/``vmax`` are given.
        vmin, vmax: colour limits (default: the data range).
        annotate: write each cell's value (with ``fmt``) in the cell.
        x_rotation: angle of the column labels.
        ax: draw into this Axes (for grids of heatmaps); the Axes' Figure is returned.
        figsize: inches; default grows with the number of rows and columns.

    Returns:
        The matplotlib ``Figure``.
    """
    arr = _as_2d(values)
    n_rows, n_cols = arr.shape
    xl = _check_labels(x_labels, n_cols, "x_labels", "columns")
    yl = _check_labels(y_labels, n_rows, "y_labels", "rows")
    finite = arr[np.isfinite(arr)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if center is not None:
        half = max(abs(hi - center), abs(lo - center)) or 1.0
        vmin = center - half if vmin is None else vmin
        vmax = center + half if vmax is None else vmax
    cmap = cmap or ("RdBu_r" if center is not None else "viridis")
    family = font_family()

    with cjk_fonts():
        if ax is None:
            if figsize is None:
                longest_x = max((len(s) for s in xl), default=2) if xl else 2
                longest_y = max((len(s) for s in yl), default=2) if yl else 2
                width = 1.6 + 0.075 * longest_y + 0.32 * n_cols + (1.2 if colorbar else 0)
                height = 1.2 + (0.5 if title else 0) + 0.075 * longest_x + 0.3 * n_rows
                figsize = (min(max(width, 3.5), 40.0), min(max(height, 2.5), 40.0))
            fig = Figure(figsize=figsize, layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        masked = np.ma.masked_invalid(arr)
        image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(n_cols), xl if xl is not None else [str(i) for i in range(n_cols)],
                      rotation=x_rotation)
        ax.set_yticks(range(n_rows), yl if yl is not None else [str(i) for i in range(n_rows)])
        # Ticks made later (on resize) copy these properties, so the CJK chain sticks.
        ax.tick_params(labelfontfamily=family, length=2)
        if title:
            ax.set_title(title, fontfamily=family)
        if xlabel:
            ax.set_xlabel(xlabel, fontfamily=family)
        if ylabel:
            ax.set_ylabel(ylabel, fontfamily=family)
        if annotate:
            for (r, c), v in np.ndenumerate(arr):
                if math.isfinite(v):
                    red, green, blue, _ = image.cmap(image.norm(v))
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                    ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        if colorbar:
            cbar = fig.colorbar(image, ax=ax, shrink=0.9)
            if colorbar_label:
                cbar.set_label(colorbar_label, fontfamily=family)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150, close: bool = True) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: .png, .svg, .pdf), making parent folders.

    ``close=True`` also releases the figure from pyplot's registry if pyplot made it.
    """
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"save_figure(path={str(path)!r}) needs a file suffix such as .png or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    if close and "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return path
