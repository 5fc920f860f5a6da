"""Figures of steering results (the result classes' ``plot()`` methods call these)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_LETTER_COLOURS = {"A": "tab:blue", "B": "tab:orange"}
_MARKERS = {1: "o", 0: "x"}


def plot_answer_activations(r: Any) -> Any:
    from mechlens.steering.caa import pca_view

    return pca_view(r, progress=False).plot()


def plot_pca_view(r: Any) -> Any:
    """Matplotlib scatter per layer: colour = letter, marker = behaviour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(r.layers)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    labels = r.labels.numpy()
    letters = np.array(r.letters)
    for li in range(n):
        ax = axes[li // cols][li % cols]
        xy = r.coords[li].numpy()
        for letter, colour in _LETTER_COLOURS.items():
            for lab, marker in _MARKERS.items():
                m = (letters == letter) & (labels == lab)
                if m.any():
                    ax.scatter(
                        xy[m, 0], xy[m, 1], c=colour, marker=marker, s=28, alpha=0.8,
                        label=f"({letter}) {r.behaviour if lab else r.opposite}",
                    )
        ax.set_title(r._title(li), fontsize=8)
        ax.set_xlabel(f"PC1 ({r.explained[li, 0]:.0%})")
        ax.set_ylabel(f"PC2 ({r.explained[li, 1]:.0%})")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{r.model_name} {r.dataset}: answer-letter activations ({r.site})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_pca_view_interactive(r: Any) -> Any:
    """The same scatter as an interactive plotly figure (one panel per layer)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(r.layers)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[r._title(i) for i in range(n)])
    labels = r.labels.numpy()
    letters = np.array(r.letters)
    colours = {"A": "#1f77b4", "B": "#ff7f0e"}
    symbols = {1: "circle", 0: "x"}
    for li in range(n):
        xy = r.coords[li].numpy()
        for letter in ("A", "B"):
            for lab in (1, 0):
                m = (letters == letter) & (labels == lab)
                if not m.any():
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=xy[m, 0], y=xy[m, 1], mode="markers",
                        marker={"color": colours[letter], "symbol": symbols[lab]},
                        name=f"({letter}) {r.behaviour if lab else r.opposite}",
                        legendgroup=f"{letter}{lab}", showlegend=li == 0,
                        text=[f"prompt {i}" for i in np.nonzero(m)[0]],
                    ),
                    row=li // cols + 1, col=li % cols + 1,
                )
    fig.update_layout(
        title=f"{r.model_name} {r.dataset}: answer-letter activations ({r.site})",
        height=330 * rows, width=430 * cols,
    )
    return fig


def plot_steering_vector(r: Any) -> Any:
    """The vector's components, largest magnitude first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = r.vector.float()
    order = v.abs().argsort(descending=True)
    fig, ax = plt.subplots(figsize=(7, 3.9))
    ax.bar(range(len(v)), v[order].numpy(), width=1.0)
    ax.set_xlabel("component (sorted by |value|)")
    ax.set_ylabel("value")
    ax.set_title(f"{r.name}  (L{r.layer} {r.site}, norm {r.norm:.2f})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_steering_curve(r: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar(r.coeffs, r.values.numpy(), yerr=r.stderr().numpy(), marker="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("coeff (weight vector)" if r.kind == "weight" else "coeff (activation vector)")
    ax.set_ylabel(r.metric)
    ax.set_title(f"{r.model_name} {r.dataset}\n{r.kind} steering: {r.vector}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_weight_vector(r: Any) -> Any:
    """Norm of the vector per layer group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = r.group_norms()
    width = max(5, 0.25 * len(norms) + 2)
    fig, ax = plt.subplots(figsize=(width, max(3, 0.55 * width)))
    ax.bar(list(norms), list(norms.values()))
    ax.set_ylabel("L2 norm")
    ax.set_title(f"{r.name}: norm per layer (total {r.norm():.3g})", fontsize=9)
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    return fig


def plot_monitor(r: Any) -> Any:
    """Left: overall cosine over steps. Right: per-layer cosine (steps x layers heatmap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 6.6), gridspec_kw={"width_ratios": [1, 2.2]})
    a.plot(r.steps, r.overall.numpy(), marker="o")
    a.axhline(0, color="grey", lw=0.8)
    a.set_xlabel("training step")
    a.set_ylabel(f"cosine(update, {r.behaviour})")
    a.set_title(f"{r.name}: all parameters", fontsize=9)
    c = r.cosine.numpy()
    lim = max(1e-6, float(r.cosine.nan_to_num(0.0).abs().max()))
    im = b.imshow(c, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    b.set_yticks(range(len(r.steps)), [str(s) for s in r.steps])
    b.set_xticks(range(len(r.groups)), r.groups, rotation=90, fontsize=7)
    b.set_ylabel("training step")
    b.set_title(f"{r.name}: cosine per layer", fontsize=9)
    fig.colorbar(im, ax=b)
    fig.tight_layout()
    return fig


def plot_diff_anatomy(r: Any) -> Any:
    """Per layer, one line per module kind: Frobenius norm (left), effective rank (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = r.to_dataframe()
    df = df[df["group"].str.startswith("L")].copy()
    df["layer"] = df["group"].str[1:].astype(int)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 6.6))
    cmap = plt.get_cmap("tab20")
    for i, (kind, sub) in enumerate(df.groupby("kind", sort=True)):
        sub = sub.sort_values("layer")
        colour = cmap(i % 20)  # the same colour for a kind in both panels
        a.plot(sub["layer"], sub["fro_norm"], marker=".", label=kind, color=colour)
        if sub["effective_rank"].notna().any():
            b.plot(sub["layer"], sub["effective_rank"], marker=".", label=kind, color=colour)
    a.set_xlabel("layer")
    a.set_ylabel("||update||_F")
    a.set_title(f"{r.name}: Frobenius norm of the update", fontsize=9)
    b.set_xlabel("layer")
    b.set_ylabel("effective rank (entropy)")
    b.set_title(f"{r.name}: effective rank of 2-D updates", fontsize=9)
    a.legend(fontsize=6, ncol=2)
    b.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_steerability(r: Any) -> Any:
    """One thin line per example (red: negative slope, anti-steerable) and the mean with its
    95% bootstrap interval, against the coefficient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(r.coeffs)
    c = np.asarray(r.coeffs)[order]
    y = r.per_example.float().numpy()[order]
    slopes = r.slopes().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for j in range(y.shape[1]):
        anti = slopes[j] < 0
        ax.plot(c, y[:, j], color="tab:red" if anti else "grey", alpha=0.8 if anti else 0.35, lw=0.9)
    lo, hi = r.ci()
    ax.fill_between(c, lo.numpy()[order], hi.numpy()[order], color="tab:blue", alpha=0.25, lw=0)
    ax.plot(c, r.values.numpy()[order], color="tab:blue", lw=2.2, marker="o", label="mean (95% CI)")
    ax.plot([], [], color="grey", lw=0.9, label="one example")
    ax.plot([], [], color="tab:red", lw=0.9, label=f"anti-steerable ({100 * r.anti_steerable_fraction():.0f}%)")
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("coeff (weight vector)" if r.kind == "weight" else "coeff (activation vector)")
    ax.set_ylabel(r.metric, fontsize=8)
    ax.set_title(f"{r.model_name} {r.dataset}: {r.vector}", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_side_effects(r: Any) -> Any:
    """Mean KL on neutral text (left) and the corpus perplexity (right) against the coefficient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(r.coeffs)
    c = np.asarray(r.coeffs)[order]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 4.4))
    a.errorbar(c, r.values.numpy()[order], yerr=r.stderr().numpy()[order], marker="o", capsize=3)
    a.set_ylabel("KL(unsteered || steered), nats")
    b.plot(c, r.perplexity().numpy()[order], marker="o")
    b.axhline(r.base_perplexity, color="grey", lw=0.8, ls="--")
    b.set_ylabel("perplexity")
    for ax in (a, b):
        ax.set_xlabel("coeff")
        ax.axvline(0, color="black", lw=0.6)
    fig.suptitle(f"{r.model_name}: side effects of {r.vector} on {r.dataset}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_steerability_grid(results: dict[str, Any], *, ncols: int = 3) -> Any:
    """:func:`plot_steerability`'s per-example lines for several vectors, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, results.items()):
        order = np.argsort(r.coeffs)
        c = np.asarray(r.coeffs)[order]
        y = r.per_example.float().numpy()[order]
        slopes = r.slopes().numpy()
        for j in range(y.shape[1]):
            anti = slopes[j] < 0
            ax.plot(c, y[:, j], color="tab:red" if anti else "grey", alpha=0.8 if anti else 0.35, lw=0.8)
        lo, hi = r.ci()
        ax.fill_between(c, lo.numpy()[order], hi.numpy()[order], color="tab:blue", alpha=0.25, lw=0)
        ax.plot(c, r.values.numpy()[order], color="tab:blue", lw=2, marker="o", ms=3)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_title(f"{name}: anti-steerable {100 * r.anti_steerable_fraction():.0f}%", fontsize=8)
        ax.set_xlabel("coeff", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("logit diff (pos - neg)", fontsize=8)
    fig.tight_layout()
    return fig
