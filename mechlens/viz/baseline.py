"""Figures of baseline results (the result classes' ``plot()`` methods call these)."""

from __future__ import annotations

from typing import Any


def plot_baseline(r: Any):
    import matplotlib.pyplot as plt

    df = r.to_dataframe()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(df), 3.2))
    x = range(len(df))
    ax.bar([i - 0.2 for i in x], df.clean_ld, width=0.4, label="clean")
    ax.bar([i + 0.2 for i in x], df.corrupt_ld, width=0.4, label="corrupt")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(list(x), df.dataset, rotation=15)
    ax.set_ylabel("mean logit difference")
    ax.set_title(f"Baseline: {r.model_name}")
    ax.legend()
    fig.tight_layout()
    return fig
