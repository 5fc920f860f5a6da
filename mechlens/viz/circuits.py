"""Figures of circuits results (the result classes' ``plot()`` methods call these)."""

from __future__ import annotations

from typing import Any


def plot_motif(r: Any) -> Any:
    """Four panels: attention to the comma per head, the patching splits, the
    irrelevant-context sweep, and the directional ablations."""
    import numpy as np
    from matplotlib.figure import Figure

    from mechlens.viz.heatmap import heatmap

    fig = Figure(figsize=(14, 9), layout="constrained")
    axs = fig.subplots(2, 2)
    att = r.comma_attention.float().numpy()
    heatmap(att, x_labels=list(range(att.shape[1])), y_labels=list(range(att.shape[0])), ax=axs[0, 0],
            title="attention from END to COMMA", xlabel="head", ylabel="layer", x_rotation=0,
            colorbar_label="attention")
    ax = axs[0, 1]
    sc = r.split_change
    vals = [100 * sc[s] for s in r.split_names]
    ax.barh(range(len(vals)), vals, color=["grey"] + ["tab:blue"] * (len(vals) - 1))
    ax.set_yticks(range(len(vals)), r.split_names)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.5)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:+.0f}%", va="center", ha="right" if v < 0 else "left", fontsize=8)
    lo, hi = min([*vals, 0.0]), max([*vals, 0.0])
    ax.set_xlim(lo - 0.2 * (hi - lo) - 1, hi + 0.2 * (hi - lo) + 1)  # room for the value labels
    ax.set_xlabel("LD change (% of clean - corrupt)")
    ax.set_title(f"patching splits (noise), {r.dataset}")
    ax = axs[1, 0]
    if r.filler:
        for name, style in (("comma only", "o-"), ("before comma, comma frozen", "s-")):
            if name in r.split_names:
                j = r.split_names.index(name)
                ax.plot(r.filler, (-100 * r.sweep_change[:, j]).tolist(), style, label=f"{name} (-LD change)")
        for k, p in enumerate(r.sweep_positions):
            if r.sweep_patch.shape[1]:
                best = r.sweep_patch[:, :, k].max(1).values
                ax.plot(r.filler, (100 * best).tolist(), "--", label=f"patch {p} resid, best layer (% recovered)")
        ax.set_xlabel("filler tokens between review and question")
        ax.set_ylabel("% of logit difference")
        ax.legend(fontsize=7)
        ax.set_title("irrelevant-context sweep")
    else:
        ax.set_axis_off()
    ax = axs[1, 1]
    if r.ablation:
        t = r.ablation_table()
        labels = [f"{r.direction}\n@ {r.position}\nacc {r.accuracy_before:.2f}->{r.accuracy_after:.2f}"
                  for r in t.itertuples()]
        x = np.arange(len(t))
        ax.bar(x, 100 * t["ld_change"], yerr=100 * t["ld_change_std"].fillna(0), capsize=3,
               color=["tab:red" if d != "random" else "grey" for d in t["direction"]])
        ax.set_xticks(x, labels, fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("LD change (%)")
        ax.set_title(f"directional ablation ({r.meta.get('ablation_data', '')})")
    else:
        ax.set_axis_off()
    fig.suptitle(f"summarization motif: {r.model_name}")
    return fig


def plot_circuit(r: Any) -> Any:
    """The circuit graph (heads by layer, mover -> direct -> logits edges), the two
    path-patching heatmaps and the faithfulness bars."""
    import numpy as np
    from matplotlib.figure import Figure

    from mechlens.viz.heatmap import heatmap

    fig = Figure(figsize=(16, 10), layout="constrained")
    gs = fig.add_gridspec(2, 3)
    r._draw_graph(fig.add_subplot(gs[:, 0]))
    n_l, n_h = r.direct_effect.shape
    for k, (vals, title) in enumerate(((r.direct_effect, "path patching: head -> final residual"),
                                       (r.mover_effect, "path patching: head -> q/k/v of direct heads"))):
        heatmap(vals.float().numpy(), x_labels=list(range(n_h)), y_labels=list(range(n_l)),
                ax=fig.add_subplot(gs[0, 1 + k]), title=title, xlabel="head", ylabel="layer",
                center=0, x_rotation=0, colorbar_label=r.path_metric or "effect")
    ax = fig.add_subplot(gs[1, 1:])
    t = r.faithfulness_table()
    if not t.empty:
        labels = [f"{r.heads}\n{r.component}\n@ {r.positions}" for r in t.itertuples()]
        x = np.arange(len(t))
        w = 0.4
        colors = ["tab:red" if h == "circuit" else "grey" for h in t["heads"]]
        ax.bar(x - w / 2, 100 * t["ld_recovered"], w, yerr=100 * t["ld_recovered_std"], capsize=3,
               color=colors, label="LD recovered (%)")
        ax.bar(x + w / 2, 100 * t["logit_flip"], w, yerr=100 * t["logit_flip_std"], capsize=3,
               color=colors, alpha=0.5, hatch="//", label="logit flip (%)")
        ax.set_xticks(x, labels, fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("%")
        ax.legend(fontsize=8)
        ax.set_title(f"faithfulness: circuit ({len(r.heads)} heads) vs random head sets")
    else:
        ax.set_axis_off()
    fig.suptitle(f"sentiment circuit: {r.model_name} on {r.dataset}")
    return fig


def plot_faithfulness(r: Any, title: str | None = None) -> Any:
    """Faithfulness of each scoring's top edges over circuit sizes (log axis), with CPR and
    CMD in the legend; random edge sets as their mean and the band of +- one std over draws."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.asarray(r.fractions) * 100
    for name, curve in r.faithfulness.items():
        label = f"{name} (CPR {r.cpr[name]:.2f}, CMD {r.cmd[name]:.2f})"
        if name == "random" and r.random:
            curves = np.asarray(r.random["curves"])
            ax.plot(x, curve, color="grey", ls="--", label=label)
            if len(curves) > 1:
                sd = curves.std(0, ddof=1)
                ax.fill_between(x, np.asarray(curve) - sd, np.asarray(curve) + sd, color="grey", alpha=0.2)
        else:
            ax.plot(x, curve, marker="o", ms=3, label=label)
    ax.axhline(1, color="black", lw=0.5)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xscale("log")
    nodes = getattr(r, "level", "edges") == "nodes"
    ax.set_xlabel(f"nodes kept (% of {r.n_nodes})" if nodes else f"edges kept (% of {r.n_edges})")
    ax.set_ylabel("faithfulness")
    ax.legend(fontsize=8)
    ax.set_title(title or f"faithfulness curves: {r.model_name}")
    return fig
