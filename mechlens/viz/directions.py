"""Figures of directions results (the result classes' ``plot()`` methods call these)."""

from __future__ import annotations

from typing import Any


def plot_directional_patch(r: Any) -> Any:
    """Per-example logit differences: clean, corrupt and patched."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
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
        f"{r.mode}-ablating {r.method} @ {r.position}\n"
        f"LD {100 * r.ld_change:+.1f}%, acc {r.accuracy_before:.2f} -> {r.accuracy_after:.2f}"
    )
    fig.tight_layout()
    return fig


def plot_direction(r: Any) -> Any:
    """Bar plot of the vector's components."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.bar(range(r.d_model), r.vector.detach().cpu().numpy(), width=1.0)
    ax.set_xlabel("component")
    ax.set_ylabel("value")
    ax.set_title(f"{r.method} direction, {r.hook_name} @ {r.position}")
    fig.tight_layout()
    return fig


def plot_projection(r: Any) -> Any:
    """Matplotlib version of the coloured tokens: one row per text."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    m = r._scale()
    norm, cmap = Normalize(-m, m), plt.get_cmap("RdBu")
    width = max((sum(len(t) + 1 for t in toks) for toks in r.tokens), default=10)
    fig, ax = plt.subplots(figsize=(min(20, 2 + 0.12 * width), 0.6 + 0.5 * len(r.texts)))
    for i, (toks, vals) in enumerate(zip(r.tokens, r.values)):
        x = 0.0
        for tok, v in zip(toks, vals):
            ax.text(x, -i, tok.replace("\n", "\\n"), family="monospace", fontsize=9, va="center",
                    bbox={"facecolor": cmap(norm(v)), "edgecolor": "none", "pad": 1.5})
            x += len(tok) + 1
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-len(r.texts) + 0.5, 0.5)
    ax.axis("off")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.02, label="projection")
    from mechlens.directions.fit import hook_name

    ax.set_title(f"projection on the {r.method} direction, {hook_name(r.layer, r.site)}")
    return fig
