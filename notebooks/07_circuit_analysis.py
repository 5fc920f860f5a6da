# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 Circuit analysis on IOI: ablation, logit lens, direct logit attribution, edge attribution patching
#
# Indirect object identification (Wang et al. 2022) is the standard task for finding a
# circuit: in "When John and Mary went to the store, Mary gave a drink to", the model should
# say " John", the name that occurs once (the *indirect object*, IO), not " Mary" (the
# repeated *subject*, S). We measure the IO-minus-S logit difference and ask which
# components produce it, four ways:
#
# 1. **Ablation**: remove one component's output and see how much the logit difference drops.
# 2. **Logit lens**: read the residual stream through the unembedding after every layer.
# 3. **Direct logit attribution (DLA)**: split the final residual into what each component
#    wrote and project each part on the logit-difference direction.
# 4. **Edge attribution patching (EAP)**: score every edge of the model's graph from two
#    forward passes and one backward pass, and test the top edges by exact patching
#    against random edge sets of the same size.
#
# Everything runs offline on the bundled smollm2-135m.

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
from mechlens.data import ioi
from mechlens.metrics import logit_diff

transformers.logging.disable_progress_bar()  # no "Loading weights" bar when the model loads
plt.rcParams["figure.dpi"] = 120  # figures legible at the width of a page
model = mechlens.load_model("smollm2-135m")
ds = ioi(model, n_prompts=8 if FAST else 32, seed=0)
print(ds)
print(ds.clean_prompts[0], "|", ds.corrupt_prompts[0])

# %% [markdown]
# ## The task and the baseline
#
# Clean prompts are ABBA or BABA orders of two names; the corrupt prompt of each pair (the
# *ABC* prompt) replaces all three names with three others, so it has the sentence's
# structure but says nothing about which clean name is the answer. The named positions are
# `IO`, `S1`, `S2` (the repeated subject) and `END` (where the answer is predicted).

# %%
with torch.no_grad():
    clean_ld = logit_diff(model(ds.clean_tokens), ds.answers)
    corrupt_ld = logit_diff(model(ds.corrupt_tokens), ds.answers)
print(f"clean IO-S logit difference {clean_ld.mean():.2f} (min {clean_ld.min():.2f}); corrupt {corrupt_ld.mean():.2f}")
assert (clean_ld > 0).float().mean() > 0.9, "the model should solve IOI"

# %% [markdown]
# ## 1. Ablation
#
# `ablate_sweep` replaces one head's output (`hook_z`) at a time by a value that carries no
# information about the prompt and reports `metric(ablated) - metric(unablated)`: negative
# means the head helps. *Mean* ablation uses the head's mean over the clean and corrupt
# prompts, position by position: it keeps the typical value and removes only what is
# prompt-specific (zero ablation can push the model off its usual inputs).

# %%
from mechlens.ablation import ablate_sweep, knockout, knockout_curve

layers = [20, 21, 22, 23] if FAST else list(range(14, 30))
heads = ablate_sweep(model, ds, "heads", how="mean", layers=layers, progress=PROGRESS)
fig = heads.plot(ci=not FAST)
display(fig)
display(heads.top(5))

# %% [markdown]
# A **knock-out** removes several components at once, for any code in a `with` block; the
# hooks are gone after it. `knockout_curve` removes the most harmful heads cumulatively.

# %%
worst = [f"L{r.layer}H{r.head}" for r in heads.to_dataframe().nsmallest(3, "value").itertuples()]
with knockout(model, worst, how="mean", ds=ds), torch.no_grad():
    ko = logit_diff(model(ds.clean_tokens), ds.answers)
print(f"knocking out {worst}: logit difference {clean_ld.mean():.2f} -> {ko.mean():.2f}")
assert ko.mean() < clean_ld.mean()
curve = knockout_curve(model, ds, order=worst, how="mean", progress=PROGRESS)
display(curve.plot())

# %% [markdown]
# ## 2. Logit lens
#
# The residual stream after every block lives in the space the final norm and unembedding
# decode, so we can decode it early. Where along the depth does the IO-minus-S difference
# become readable at `END`? After the last layer the lens equals the model's own logit
# difference (checked below).

# %%
from mechlens.lens import direct_logit_attribution, logit_lens, top_tokens

lens = logit_lens(model, ds, positions="END", progress=PROGRESS)
display(lens.plot(ci=not FAST))
torch.testing.assert_close(lens.per_example[-1], lens.baselines["clean"], atol=1e-3, rtol=1e-3)
display(top_tokens(model, ds, layers=[model.cfg.n_layers // 2, model.cfg.n_layers - 7, model.cfg.n_layers - 1], k=3))

# %% [markdown]
# ## 3. Direct logit attribution
#
# With the final norm's scale taken from the run, the norm is linear, so the logit
# difference splits exactly into one term per component: embeddings, every head, every
# MLP, the biases. Heads with a large positive direct effect are the *name movers* that copy
# the IO name to the answer. This is a direct effect only: ablation above measures the total
# effect, including what a head does through later heads.

# %%
dla = direct_logit_attribution(model, ds, progress=PROGRESS)  # every component
torch.testing.assert_close(dla.per_example.sum(0), dla.baselines["clean"], atol=1e-3, rtol=1e-4)
print("the components sum to the run's logit difference")
dla_heads = direct_logit_attribution(model, ds, group="heads", progress=PROGRESS)
display(dla_heads.plot())
display(dla_heads.top(5))

# %% [markdown]
# ## 4. Edge attribution patching
#
# Read the model as a graph: senders (embeddings, heads, MLPs) write into the residual
# stream; receivers (each head's q, k and v input, each MLP, the final residual) read it. The
# score of an edge `u -> v` is `(a_u^corrupt - a_u^clean) . dM/d(input of v)`: the first-order
# change of the metric if only that edge carried the corrupt value. One corrupt forward, one
# clean forward and one backward pass score every edge. A circuit is the top edges; its
# **faithfulness** is measured exactly: keep the top `k` edges clean, patch every other edge
# to its corrupt value, and compare with random edge sets of the same size.

# %%
from mechlens.circuits import eap_faithfulness, edge_attribution_patch

small = ds[:4] if FAST else ds[:16]
edges = edge_attribution_patch(model, small, batch_size=8, progress=PROGRESS)
vals = edges.values
order = torch.argsort(vals.abs().flatten(), descending=True)[:10]
n_r = len(edges.labels["receiver"])
for i in order.tolist():
    print(f"{edges.labels['sender'][i // n_r]:>10} -> {edges.labels['receiver'][i % n_r]:<10} {vals.flatten()[i]:+.3f}")

# %%
ks = [0, 10, 100] if FAST else [0, 10, 100, 1000, 10000]
curve = eap_faithfulness(model, small, edges, ks, n_random=1 if FAST else 3, seed=0, progress=PROGRESS)
rnd = curve.random
fig, ax = plt.subplots(figsize=(6, 3.5))
x = [max(k, 0.5) for k in ks]
ax.plot(x, curve.values, "o-", label="top edges by |score|")
ax.errorbar(x, rnd["mean"], yerr=rnd["std"], fmt="s-", color="gray", label="random edges")
ax.axhline(edges.baselines["clean"].mean(), ls="--", color="tab:green", label="clean")
ax.axhline(edges.baselines["corrupt"].mean(), ls="--", color="tab:red", label="corrupt")
ax.set_xscale("log")
ax.set_xlabel("edges kept")
ax.set_ylabel("IO - S logit difference")
ax.legend()
plt.show()
torch.testing.assert_close(curve.per_example[0], edges.baselines["corrupt"], atol=1e-3, rtol=1e-3)

# %% [markdown]
# ## EAP-IG, faithfulness curves with CPR and CMD, stability
#
# EAP takes the gradient at the clean run only; where a nonlinearity saturates between the
# clean and the corrupt run that gradient misleads. **EAP-IG** (Hanna et al. 2024) averages
# it over `ig_steps` runs between the two, interpolating the input embeddings
# (`interpolate="inputs"`) or each sender group's activations (`"activations"`), the two
# variants of the MIB benchmark (Mueller et al. 2025). `ig_steps=1` is EAP exactly.
#
# MIB scores a ranking by its **faithfulness curve**: keep the top 0.1%, 0.2%, ..., 100% of
# the edges, patch the rest from the corrupt run, and normalise, `(M(circuit) - M(empty)) /
# (M(full) - M(empty))`. **CPR** is the area under that curve (higher is better), **CMD** the
# area between it and 1 (lower is better). Random edge sets give the floor.

# %%
from mechlens.circuits import MIB_FRACTIONS, circuit_stability, eap_ig, faithfulness_curve

ig = eap_ig(model, small, interpolate="inputs", ig_steps=5, batch_size=8, progress=PROGRESS)
fractions = (0.001, 0.01, 0.1, 1.0) if FAST else MIB_FRACTIONS  # FAST: four of MIB's ten
fc = faithfulness_curve(model, small, {"eap": edges, "eap-ig-inputs": ig}, fractions=fractions,
                        n_random=1 if FAST else 3, batch_size=32, progress=PROGRESS)
print(fc.table().round(3).to_string(index=False))
fc.plot()

# %% [markdown]
# A circuit found on one sample of prompts should survive another. `circuit_stability`
# resamples the prompts (bootstrap), rescores, and reports the Jaccard overlap of the top-20
# edges with a 95% interval, and the overlap between the circuits of each IOI template.

# %%
st = circuit_stability(model, small, method="eap", k=20, n_resamples=3 if FAST else 10, faithfulness=False,
                       progress=PROGRESS)
print(st)
assert 0 <= st.jaccard_mean <= 1

# %% [markdown]
# ## The same study from a file
#
# `examples/ioi.toml` writes this analysis down; `mechlens study examples/ioi.toml --out
# out/ioi` runs it and writes a report with every figure and table (see `docs/studies.md`).
# `examples/circuit_compare.toml` runs the EAP / EAP-IG comparison (faithfulness curves,
# CPR/CMD, stability).
