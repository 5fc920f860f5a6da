"""Figures of dit results (the result classes' ``plot()`` methods call these)."""

from __future__ import annotations

from typing import Any


def plot_dit(r: Any) -> Any:
    """Left: held-out accuracy per method with chance. Right: the learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = r.to_dataframe()
    df = df[df["method"] != "chance"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 6.1))
    x = range(len(df))
    a.bar([i - 0.2 for i in x], df["exact"], 0.4, yerr=df["exact_se"], label="exact")
    a.bar([i + 0.2 for i in x], df["fuzzy"], 0.4, yerr=df["fuzzy_se"], label="fuzzy")
    a.axhline(r.chance, color="k", ls="--", lw=1, label=f"chance 1/{r.n_topics}")
    a.set_xticks(list(x), list(df["method"]), rotation=15, fontsize=8)
    a.set_ylim(0, 1)
    a.set_ylabel("held-out accuracy")
    a.set_title(f"{r.model_name}: {len(r.topics)} held-out differences", fontsize=9)
    a.legend(fontsize=7)
    c = r.curve or {}
    if c.get("step"):
        b.plot(c["step"][1:], c["train_loss"][1:], marker=".", label="train (running mean)")
        b.plot(c["step"], c["heldout_loss"], marker=".", label="held-out answer loss")
        b.legend(fontsize=7)
    b.set_xlabel("DIT training step")
    b.set_ylabel("answer loss (nats/token)")
    b.set_title("learning curve", fontsize=9)
    fig.tight_layout()
    return fig
