"""``mechlens reproduce sentiment``: the whole Tigges et al. 2023 study on one model.

Stages run in order; each writes its files under ``OUT/<stage>/`` and a ``done.json`` marker
with its headline numbers. A stage whose marker exists for the same model and settings is
skipped (its numbers are read back for the report) unless ``force=True``. At the end
``OUT/report.md`` collects the tables and links the figures of every stage done in OUT.

``fast=True`` is a small version (fewer layers, prompts and random draws) that finishes in
minutes on 2 CPU cores; the full run is what the README links.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mechlens.fileio import write_text
from mechlens.models import model_name
from mechlens.results import markdown_table
from mechlens.stages import MARKER, finished, run_stages, save_csv, save_fig  # noqa: F401  (MARKER: re-exported)

__all__ = ["Settings", "reproduce_sentiment", "STAGES"]


@dataclass
class Settings:
    fast: bool = False
    batch_size: int = 32
    seed: int = 0

    def pick(self, fast: Any, full: Any) -> Any:
        return fast if self.fast else full


@dataclass
class Context:
    """What every stage gets: the model, the output folder, settings, and earlier stages' numbers."""

    model: Any
    out: Path
    settings: Settings
    numbers: dict[str, dict[str, Any]]
    cache: dict[str, Any]
    #: a ``mechlens.scale.Workers`` pool for the patching sweeps (``None``: this process)
    workers: Any = None

    def dataset(self, split: str, filler: int = 0):
        from mechlens.data import toy_movie_review

        key = f"tmr/{split}/{filler}"
        if key not in self.cache:
            self.cache[key] = toy_movie_review(self.model, split, filler=filler)
        return self.cache[key]


def _save_result(res: Any, d: Path, stem: str) -> list[str]:
    """Save a result, its table and every figure its ``plot()`` returns; the figure names."""
    res.save(d / "result")
    save_csv(res.to_dataframe(), d / f"{stem}.csv")
    figs = res.plot()
    figs = figs if isinstance(figs, (list, tuple)) else [figs]
    return [save_fig(f, d / f"{stem}_{i}.png") for i, f in enumerate(figs)]


# ----------------------------------------------------------------------------- stages
# Each stage: (ctx, stage_dir) -> dict with "summary" (markdown) and headline numbers.


def stage_baseline(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.baseline import baseline

    res = baseline(ctx.model, batch_size=ctx.settings.batch_size)
    res.save(d / "result")
    df = res.to_dataframe()
    save_csv(df, d / "baseline.csv")
    fig = save_fig(res.plot(), d / "baseline.png")
    test = df.set_index("dataset").loc["toy_movie_review/test"]
    return {
        "summary": markdown_table(df) + f"\n\n![baseline](baseline/{fig})\n",
        "test_clean_ld": float(test.clean_ld),
        "test_centred_acc": float(test.clean_acc_centred),
    }


def stage_patching(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.patching import activation_patch

    ds = ctx.dataset("test")
    ds = ds[: ctx.settings.pick(4, ds.batch)]
    lines = [
        f"Denoising activation patching on ToyMovieReview test ({ds.batch} prompts): run the "
        "corrupt prompt, patch in one clean activation, report the fraction of the logit "
        "difference recovered (1 = clean behaviour).",
        "",
    ]
    numbers: dict[str, Any] = {}
    for site, positions, title in (
        ("resid_pre", None, "residual stream (layer x position)"),
        ("z", "all", "attention head outputs, all positions (layer x head)"),
    ):
        if ctx.workers is not None:  # the same result, split over Ray workers
            res = ctx.workers.sweep("activation_patch", ds, site=site, positions=positions,
                                    batch_size=ctx.settings.batch_size * 4)
        else:
            res = activation_patch(ctx.model, ds, site, positions=positions, batch_size=ctx.settings.batch_size * 4)
        res.save(d / site)
        save_csv(res.to_dataframe(), d / f"{site}.csv")
        fig = save_fig(res.plot(), d / f"{site}.png")
        top = res.top(5)
        lines += [f"### {title}", "", f"![{site}](patching/{fig})", "", "Top cells:", "",
                  markdown_table(top), ""]
        numbers[f"{site}_max"] = float(res.values.max())
    numbers["summary"] = "\n".join(lines)
    return numbers


def stage_directions(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.directions import evaluate

    n = ctx.model.cfg.n_layers
    layers = ctx.settings.pick(sorted({n // 5, n // 3, n // 2 - 1, (2 * n) // 3}), list(range(n)))
    methods = ctx.settings.pick(["mean_diff", "kmeans", "logistic", "pca"], ["mean_diff", "kmeans", "logistic", "pca", "das"])
    res = evaluate(
        ctx.model, ctx.dataset("train"), ctx.dataset("test"), methods=methods, layers=layers,
        n_random=ctx.settings.pick(3, 10), seed=ctx.settings.seed, batch_size=ctx.settings.batch_size,
    )
    names = _save_result(res, d, "directions")
    df = res.to_dataframe()
    best = res.best()
    ctx.cache["best_direction"] = res.direction(best["method"], best["layer"])
    res.direction(best["method"], best["layer"]).save(d / "best_direction")
    summary = (
        f"Directions fitted at ADJ ({res.site}) on ToyMovieReview train, evaluated by "
        "directional patching (all positions, one layer) on the test split.\n\n"
        f"Best: **{best['method']}** at layer **{best['layer']}**: "
        f"{100 * best['ld_recovered']:.1f}% logit difference recovered, logit flip "
        f"{100 * best['logit_flip']:.1f}%; random directions {100 * best['random_ld_recovered']:.2f}%; "
        f"mean pairwise cosine between methods {best['mean_pairwise_cosine']:.2f}.\n\n"
        + "".join(f"![directions](directions/{nm})\n" for nm in names)
        + "\n" + markdown_table(df) + "\n"
    )
    return {"summary": summary, **{k: v for k, v in best.items()}}


def _best_direction(ctx: Context):
    """The directions stage's best direction (read back when that stage was skipped)."""
    from mechlens.directions import Direction

    if "best_direction" not in ctx.cache:
        path = ctx.out / "directions" / "best_direction"
        ctx.cache["best_direction"] = Direction.load(path) if path.exists() else None
    return ctx.cache["best_direction"]


def _summary_table(summary: dict[str, Any]) -> str:
    rows = [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()]
    return "| quantity | value |\n| --- | --- |\n" + "\n".join(rows) + "\n"


CIRCUIT_COLUMNS = ["head", "kind", "direct_effect", "mover_effect", "attn_END_to_ADJ", "attn_END_to_VRB",
                   "attn_END_to_COMMA", "writes_t_at_END", "ov_z", "role"]


def stage_circuit(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.circuits import discover_sentiment_circuit

    ds = ctx.dataset("train")
    ds = ds[: ctx.settings.pick(8, ds.batch)]
    circ = discover_sentiment_circuit(
        ctx.model, ds, direction=_best_direction(ctx), faithfulness_ds=ctx.dataset("test"),
        n_movers=ctx.settings.pick(2, 3), n_random=ctx.settings.pick(5, 20), seed=ctx.settings.seed,
    )
    names = _save_result(circ, d, "circuit")
    heads = circ.heads_table()
    text = (
        "Path patching from every head to the final residual stream on ToyMovieReview train, "
        "roles from attention at END, intermediate movers by path patching into the top heads' "
        "q/k/v, faithfulness on the test split against random head sets of equal size.\n\n"
        + "".join(f"![circuit](circuit/{nm})\n" for nm in names)
        + "\nThe circuit's heads (every head: [circuit.csv](circuit/circuit.csv)):\n\n"
        + markdown_table(heads[[c for c in CIRCUIT_COLUMNS if c in heads]], ".2f")
        + "\n\nFaithfulness (random: mean and std over the random head sets):\n\n"
        + markdown_table(circ.faithfulness_table()) + "\n"
    )
    return {"summary": text, **circ.summary()}


def stage_motif(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.circuits import mini_sst, summarization_motif

    filler = ctx.settings.pick(14, 32)
    ds = ctx.dataset("train", filler=filler)
    ds = ds[: ctx.settings.pick(8, ds.batch)]
    try:
        sst_ds = mini_sst(ctx.model)
        skipped = ""
    except ValueError as exc:  # e.g. " positive"/" negative" not single tokens for this tokenizer
        sst_ds, skipped = None, f"\n\nDirectional ablation on mini-SST skipped: {exc}\n"
        warnings.warn(f"motif stage: {skipped.strip()}", stacklevel=2)
    res = summarization_motif(
        ctx.model, ds, direction=_best_direction(ctx),
        n_filler=ctx.settings.pick((0, 16), (0, 8, 16, 32)),
        filler_dataset=lambda n: ctx.dataset("train", filler=n)[: ctx.settings.pick(8, 42)],
        ablation_ds=sst_ds, ablation=sst_ds is not None,
        n_random=ctx.settings.pick(3, 5), seed=ctx.settings.seed,
    )
    names = _save_result(res, d, "motif")
    summary = res.summary()
    text = (
        f"ToyMovieReview with {filler} tokens of neutral filler after the comma: heads that read "
        "the comma from the final position, patching splits (logit-difference change), the "
        "irrelevant-context sweep, and directional ablation at commas vs all positions.\n\n"
        + "".join(f"![motif](motif/{nm})\n" for nm in names)
        + "\nHeads attending END -> COMMA most:\n\n" + markdown_table(res.heads_table().head(5))
        + "\n\nPatching splits (noising; LD change as a fraction of clean - corrupt):\n\n"
        + markdown_table(res.splits_table())
        + "\n\nIrrelevant-context sweep (splits and best-layer resid_pre patching per filler length):\n\n"
        + markdown_table(res.sweep_table())
        + ("\n\nDirectional ablation (mini-SST):\n\n" + markdown_table(res.ablation_table()) if res.ablation else "")
        + "\n" + skipped
    )
    return {"summary": text, **{k: v for k, v in summary.items() if k.startswith("split")}}


def stage_caa(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.data.choices import movie_review_choices, polite_casual
    from mechlens.steering import answer_activations, caa_vector, evaluate_steering, pca_view

    n = ctx.model.cfg.n_layers
    layers = ctx.settings.pick([n // 3], [n // 6, n // 3, n // 2, (2 * n) // 3])
    acts = answer_activations(ctx.model, polite_casual(ctx.model, "all", seed=ctx.settings.seed), layers)
    view = pca_view(acts, seed=ctx.settings.seed)
    view.save(d / "pca_view")
    table = view.layer_table()
    save_csv(table, d / "pca_view.csv")
    fig = save_fig(view.plot(), d / "pca_view.png")
    # the sign and size of a CAA vector's effect depend on the layer: sweep a few
    steer_layers = ctx.settings.pick([n // 3, (4 * n) // 5], [n // 3, n // 2, (2 * n) // 3, (4 * n) // 5])
    coeffs = ctx.settings.pick([-8.0, 0.0, 8.0], [-16.0, -8.0, -4.0, 0.0, 4.0, 8.0, 16.0])
    choices = movie_review_choices(ctx.model, "train", seed=ctx.settings.seed)
    test = ctx.dataset("test")
    rows, curves = [], {}
    for layer in steer_layers:
        curve = evaluate_steering(ctx.model, test, caa_vector(ctx.model, choices, layer), coeffs)
        curve.save(d / f"steering_curve_l{layer}")
        curves[layer] = curve
        rows.append({"layer": layer, **{f"{c:g}": float(m) for c, m in zip(coeffs, curve.values)},
                     "monotonic": curve.monotonic()})
    curve_df = pd.DataFrame(rows)
    save_csv(curve_df, d / "steering_curves.csv")
    fig2 = save_fig(_plot_curves(curves, coeffs), d / "steering_curves.png")
    text = (
        "Polite vs casual A/B prompts: the answer-letter activation, PCA to 2-D; silhouettes "
        "say whether the letter or the behaviour split dominates.\n\n"
        f"![pca](caa/{fig})\n\n" + markdown_table(table) + "\n\n"
        "Sentiment CAA vectors (positive minus negative review choice) added at every position "
        "of one layer; mean ToyMovieReview logit difference (positive - negative answer) per "
        "coefficient, and whether it rises (1) or falls (-1) monotonically with it (0: neither):\n\n"
        f"![steering](caa/{fig2})\n\n" + markdown_table(curve_df) + "\n"
    )
    return {"summary": text, "curves": rows}


def _plot_curves(curves: dict[int, Any], coeffs: list[float]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for layer, curve in curves.items():
        ax.errorbar(coeffs, curve.values.tolist(), yerr=curve.stderr().tolist(), marker="o", capsize=3,
                    label=f"layer {layer}")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("steering coefficient")
    ax.set_ylabel("logit difference (positive - negative)")
    ax.set_title("sentiment CAA on ToyMovieReview test")
    ax.legend(fontsize=8)
    return fig


def stage_attention(ctx: Context, d: Path) -> dict[str, Any]:
    from mechlens.viz import attention

    ds = ctx.dataset("test")
    n = ctx.model.cfg.n_layers
    layers = ctx.settings.pick(sorted({0, n // 2, n - 1}), None)
    view = attention(ctx.model, ds.clean_prompts[0], layers=layers)
    view.save_html(d / "attention.html")
    png_layer = view.layers[len(view.layers) // 2]
    view.save_png(d / "attention.png", layer=png_layer)
    text = (
        f"Attention patterns on {ds.clean_prompts[0]!r}: [interactive offline view]"
        f"(attention/attention.html) (circuitsvis, inlined JavaScript), and layer {png_layer}:"
        "\n\n![attention](attention/attention.png)\n"
    )
    return {"summary": text}


STAGES: dict[str, tuple[str, Callable[[Context, Path], dict[str, Any]]]] = {
    "baseline": ("Baseline logit differences", stage_baseline),
    "patching": ("Activation patching", stage_patching),
    "directions": ("Sentiment directions and directional patching", stage_directions),
    "circuit": ("Sentiment circuit", stage_circuit),
    "motif": ("Summarization motif", stage_motif),
    "caa": ("Contrastive activation addition", stage_caa),
    "attention": ("Attention patterns", stage_attention),
}


# A rough time per stage, in minutes, for smollm2-135m on 2 CPU cores: the stage times of the
# full run measured for docs/timings.md (the `reproduce` row: 15.5 minutes of stages after
# the set-up); --fast takes about 2.4 minutes in all, in about the same proportions. Printed
# before a run starts, scaled by the model's size against smollm2-135m's (30 layers x d_model 576).
FULL_MINUTES = {"baseline": 0.15, "patching": 1.6, "directions": 6.0, "circuit": 2.6,
                "motif": 4.6, "caa": 0.5, "attention": 0.05}
FAST_TOTAL_MINUTES = 2.4


def plan(model: Any, names: list[str], done: list[str], fast: bool) -> str:
    """What a run will do: the stages to run with a rough time each, and those already done."""
    scale = model.cfg.n_layers * model.cfg.d_model ** 2 / (30 * 576**2)
    share = FAST_TOTAL_MINUTES / sum(FULL_MINUTES.values()) if fast else 1.0
    todo = [n for n in names if n not in done]
    minutes = {n: FULL_MINUTES[n] * share * scale for n in todo}
    total = sum(minutes.values())
    lines = [f"reproduce sentiment on {model_name(model)} ({'fast' if fast else 'full'} settings): "
             f"{len(todo)} stage(s) to run, {_minutes(total)} on 2 CPU cores (a rough estimate; "
             "less with more cores or a GPU)"]
    lines += [f"  {n:<10} {STAGES[n][0]:<48} {_minutes(minutes[n])}" for n in todo]
    if done:
        lines.append(f"  already done in the output folder (skipped; --force reruns them): {', '.join(done)}")
    if not fast and todo:
        lines.append(f"  (--fast runs a small version: {_minutes(FAST_TOTAL_MINUTES * scale)})")
    return "\n".join(lines)


def _minutes(m: float) -> str:
    return "<1 min" if m < 1 else f"~{m:.0f} min"


def reproduce_sentiment(
    model: Any,
    out: str | Path,
    *,
    fast: bool = False,
    force: bool = False,
    stages: list[str] | None = None,
    progress: bool = True,
    workers: Any = 1,
    model_spec: Any = None,
    address: str | None = None,
) -> Path:
    """Run every stage (or ``stages``) and write ``out/report.md``; returns its path.

    ``workers > 1`` runs the patching stage's sweeps on that many Ray workers
    (:mod:`mechlens.scale`), each loading ``model_spec`` (the name ``model`` was loaded
    from), on this machine or the cluster at ``address`` / ``$MECHLENS_RAY_ADDRESS``;
    ``workers`` may also be a running ``mechlens.scale.Workers`` pool.

    The report is rewritten after every finished stage (an interrupted run has a report of
    what finished) and shows every stage done in ``out`` with these settings.
    """
    pool = None
    if hasattr(workers, "sweep"):  # a Workers pool: used as it is, left open
        pool, workers = workers, 1
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: give a positive int or a mechlens.scale.Workers pool")
    if workers > 1 and model_spec is None:
        raise ValueError("workers > 1 needs model_spec: what each worker loads (e.g. 'smollm2-135m')")
    out = Path(out)
    names = list(STAGES) if stages is None else stages
    unknown = [s for s in names if s not in STAGES]
    if unknown:  # before the folder is made: a typo leaves nothing behind
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(fast=fast)
    ctx = Context(model=model, out=out, settings=settings, numbers={}, cache={})
    key = {"fast": fast, "model": model_name(model), "format": 2}  # format: results saved by this mechlens
    report = out / "report.md"

    def write_report(numbers: dict[str, dict[str, Any]]) -> None:
        ctx.numbers = dict(numbers)
        write_text(report, _report(ctx, list(numbers)))

    def run_stage(name: str, d: Path) -> dict[str, Any]:
        if name == "patching" and workers > 1:
            from mechlens.scale import Workers

            with Workers(model_spec, workers=workers, address=address) as ctx.workers:
                numbers = STAGES[name][1](ctx, d)
            ctx.workers = None
            return numbers
        ctx.workers = pool if name == "patching" else None
        return STAGES[name][1](ctx, d)

    if progress:  # what will run and for how long, before the first bar
        done = [n for n in names if not force and finished(out, key, n, what="reproduce") is not None]
        print(plan(model, names, done, fast), file=sys.stderr, flush=True)
    run_stages(
        out, names, run_stage, key=lambda name: key,
        write_report=write_report, all_names=list(STAGES), force=force, progress=progress,
        desc="reproduce sentiment", what="reproduce",
    )
    return report


def _report(ctx: Context, names: list[str]) -> str:
    lines = [
        f"# Linear representations of sentiment: {model_name(ctx.model)}",
        "",
        "Reproduction of Tigges et al. 2023 (arXiv 2310.15154) with mechlens.",
        f"Settings: {'fast (reduced)' if ctx.settings.fast else 'full'}; "
        f"model {model_name(ctx.model)} ({ctx.model.cfg.n_layers} layers, d_model "
        f"{ctx.model.cfg.d_model}); seed {ctx.settings.seed}.",
        "",
    ]
    for name in names:
        title = STAGES[name][0]
        nums = ctx.numbers.get(name, {})
        lines += [f"## {title}", "", nums.get("summary", "(not run)"), ""]
        if "seconds" in nums:
            lines += [f"_stage time: {nums['seconds']} s_", ""]
    return "\n".join(lines)
