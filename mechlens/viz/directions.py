"""Figures of directions results (the result classes' ``plot()`` methods call these)."""

from __future__ import annotations

from typing import Any


def plot_directional_patch(r: Any) -> Any:
    """Per-example logit differences: clean, corrupt and patched."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    x = range(len(r.ld_clean))
    for name, v, m in (("clean", r.ld_clean, "o"), ("corrupt", r.ld_corrupt, "x"), ("patched", r.ld_patched, "s")):
        ax.plot(x, v.tolist(), m, label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("example")
    ax.set_ylabel("logit difference")
    ax.set_title(
        f"{r.method} direction patched at layers {r.layers}, position {r.position}: "
        f"{r.ld_recovered_pct:.1f}% LD recovered"
    )
    ax.legend()
    fig.tight_layout()
    return fig


def plot_direction_ablation(r: Any) -> Any:
    """Per-example logit difference before vs after the ablation."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    lo = float(min(r.ld_before.min(), r.ld_after.min()))
    hi = float(max(r.ld_before.max(), r.ld_after.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.5)
    ax.axhline(0, color="grey", lw=0.5)
    ax.scatter(r.ld_before.tolist(), r.ld_after.tolist(), c=r.class_labels.tolist(), cmap="coolwarm")
    ax.set_xlabel("logit difference before")
    ax.set_ylabel("logit difference after")
    ax.set_title(
        f"{r.how}-ablating {r.method} @ {r.position}\n"
        f"LD {100 * r.ld_change:+.1f}%, acc {r.accuracy_before:.2f} -> {r.accuracy_after:.2f}"
    )
    fig.tight_layout()
    return fig


def plot_direction(r: Any) -> Any:
    """Bar plot of the vector's components."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    ax.bar(range(r.d_model), r.vector.detach().cpu().numpy(), width=1.0)
    ax.set_xlabel("component")
    ax.set_ylabel("value")
    ax.set_title(f"{r.method} direction, {r.hook_name} @ {r.position}")
    fig.tight_layout()
    return fig


def plot_projection(r: Any) -> Any:
    """Matplotlib version of the coloured tokens (one row per text) above a line per text of
    the projection by token position, so the values read off an axis too."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    m = r._scale()
    norm, cmap = Normalize(-m, m), plt.get_cmap("RdBu")
    width = max((sum(len(t) + 1 for t in toks) for toks in r.tokens), default=10)
    top = 0.6 + 0.5 * len(r.texts)
    fig_width = min(20, 2 + 0.12 * width)
    below = max(3.0, 0.55 * fig_width - top)  # the whole figure about half as high as wide
    fig, (ax, lines) = plt.subplots(
        2, 1, figsize=(fig_width, top + below), gridspec_kw={"height_ratios": [top, below]},
        layout="constrained",
    )
    for i, (toks, vals) in enumerate(zip(r.tokens, r.values)):
        x = 0.0
        for tok, v in zip(toks, vals):
            ax.text(x, -i, tok.replace("\n", "\\n"), family="monospace", fontsize=9, va="center",
                    bbox={"facecolor": cmap(norm(v)), "edgecolor": "none", "pad": 1.5})
            x += len(tok) + 1
        label = " ".join(t.strip() for t in toks)
        lines.plot(range(len(vals)), vals, marker="o", ms=3, label=label if len(label) <= 40 else label[:37] + "...")
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-len(r.texts) + 0.5, 0.5)
    ax.axis("off")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.02, label="projection")
    lines.axhline(0, color="black", lw=0.5)
    lines.set_ylabel("projection h·d")
    if len({len(t) for t in r.tokens}) == 1:  # same tokens count: label the axis with the first text's
        lines.set_xticks(range(len(r.tokens[0])), [t.replace("\n", "\\n") for t in r.tokens[0]], rotation=90, fontsize=8)
    else:
        lines.set_xlabel("token position")
    if len(r.texts) <= 8:
        lines.legend(fontsize=7)
    from mechlens.directions.fit import hook_name

    ax.set_title(f"projection on the {r.method} direction, {hook_name(r.layer, r.site)}")
    return fig


def plot_direction_evaluation(r: Any, layer: int | None = None) -> Any:
    """Three panels: % LD recovered over layers, logit flip over layers (random dashed),
    and the methods' cosine matrix at ``layer`` (default: the best layer)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layer = r.best()["layer"] if layer is None else layer
    fig, axes = plt.subplots(
        1, 3, figsize=(16, 8.8), gridspec_kw={"width_ratios": [1.3, 1.3, 1]}, layout="constrained"
    )
    for ax, values, rnd, title in (
        (axes[0], r.ld_recovered, r.random_ld_recovered, "% logit difference recovered"),
        (axes[1], r.logit_flip, r.random_logit_flip, "% logit flip"),
    ):
        for mi, method in enumerate(r.methods):
            ax.plot(r.layers, (100 * values[mi]).tolist(), marker="o", ms=3, label=method)
        ax.plot(r.layers, (100 * rnd.mean(0)).tolist(), "k--", label=f"random (mean of {rnd.shape[0]})")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"layer ({r.site})")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(title)
        ax.set_title(f"{title}, patching {r.patch_position}")
    # one legend for both line panels, under the figure: inside a panel it hid a curve
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    c = r.cosine[r._li(layer)].numpy()
    im = axes[2].imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
    k = len(r.methods)
    axes[2].set_xticks(range(k), r.methods, rotation=45, ha="right")
    axes[2].set_yticks(range(k), r.methods)
    for i in range(k):
        for j in range(k):
            axes[2].text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=8,
                         color="white" if abs(c[i, j]) > 0.6 else "black")
    axes[2].set_title(f"cosine similarity, layer {layer}")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.suptitle(f"{r.model_name}: directions fitted at {r.position}")
    return fig
