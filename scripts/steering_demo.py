"""Steering demo: contrastive activation addition and weight-space steering, end to end.

    python scripts/steering_demo.py --model smollm2-135m --out runs/steering

Writes figures (PNG, plus interactive HTML for the PCA views), saved result objects under
``results/`` and ``summary.md`` with every number. Parts:

1. Polite vs casual A/B prompts: PCA of the answer-letter activations per layer (letter
   split vs behaviour split, silhouettes), the CAA vector at about a third of the depth,
   its effect on the A/B choice, and steered generations.
2. Sentiment CAA: A/B prompts between positive and negative movie reviews; CAA vectors at
   several layers; ToyMovieReview logit difference (positive - negative answer) over the
   steering coefficient.
3. Weight space: fine-tune on positive and on negative reviews, contrastive weight vector
   ``w = theta_pos - theta_neg``, ToyMovieReview logit difference over ``k`` in
   ``theta_base + k w``, anatomy of the positive update, and monitoring of fresh fine-tunes
   (other texts, other seed) against ``w``.

On 2 CPU cores the smollm2-135m run takes about 15-30 minutes, mostly fine-tuning
(``--steps`` and ``--monitor-steps`` shorten it). ``--model tiny`` runs the same pipeline
on a random tiny model in seconds (numbers meaningless; a smoke test).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mechlens.data import toy_movie_review  # noqa: E402
from mechlens.data.choices import movie_review_choices, movie_review_texts, polite_casual  # noqa: E402
from mechlens.models import load_model, tiny  # noqa: E402
from mechlens.steering import (  # noqa: E402
    WeightMonitor,
    answer_activations,
    apply_weights,
    contrastive_weight_vector,
    diff_anatomy,
    evaluate_steering,
    finetune,
    pca_view,
    steer,
    task_vector,
)


def _table(df, fmt: str = "{:.3f}") -> str:
    """Markdown table; floats formatted, integers left alone."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype.kind == "f":
            df[col] = [fmt.format(x) for x in df[col]]
    return df.to_markdown(index=False)


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _generate(model, prompt: str, n: int) -> str:
    out = model.generate(prompt, max_new_tokens=n, do_sample=False, verbose=False)
    return out[len(prompt):].replace("\n", " ").strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model name, or 'tiny' for a smoke run")
    ap.add_argument("--out", default="runs/steering", help="output directory")
    ap.add_argument("--steps", type=int, default=12, help="fine-tuning steps for w")
    ap.add_argument("--monitor-steps", type=int, default=8, help="steps of the monitored fine-tunes")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-tokens", type=int, default=20)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = tiny("llama", n_layers=4, n_ctx=512) if args.model == "tiny" else load_model(args.model)
    n_layers = model.cfg.n_layers
    movie = toy_movie_review(model, "test")
    md = [f"# Steering demo: {args.model}", ""]
    md += [
        f"ToyMovieReview test split: {movie.batch} prompts. Metric: raw logit difference "
        "positive answer - negative answer at the last token (mean over prompts, not centred).",
        "",
    ]

    # ------------------------------------------------------------------ 1. polite vs casual
    print("[1/3] polite vs casual: answer-letter activations and PCA", flush=True)
    pc = polite_casual(model, "all", seed=args.seed)
    pc_train, pc_test = pc.split(30)
    layers = sorted(set(range(0, n_layers, max(1, n_layers // 10))) | {n_layers // 3, n_layers - 1})
    acts = answer_activations(model, pc_train, layers)
    view = pca_view(acts, seed=args.seed)
    view.save(out / "results" / "pca_polite")
    fig_pca = _save(view.plot(), out / "pca_polite.png")
    view.plot_interactive().write_html(out / "pca_polite.html", include_plotlyjs="cdn")
    md += ["## 1. Polite vs casual (CAA on A/B answers)", ""]
    md += [
        f"{pc_train.n_triples} training triples -> {len(pc_train)} prompts ending in the chosen "
        "letter; letters balanced against behaviour. Silhouettes of the full activations at the "
        "letter token, grouped by letter, by behaviour, and by behaviour inside each letter's cluster:",
        "",
        _table(view.layer_table()),
        "",
        f"![PCA]({fig_pca}) (interactive: pca_polite.html)",
        "",
    ]
    layer = n_layers // 3
    vec = acts.caa_vector(layer)
    vec.save(out / "results" / "caa_polite")
    norm = float(acts.mean_norm[acts.layers.index(layer)])
    coeffs = [c * norm / max(vec.norm, 1e-9) * 0.25 for c in (-2, -1, 0, 1, 2)]
    curve = evaluate_steering(model, pc_test, vec, coeffs)
    curve.save(out / "results" / "curve_polite_choice")
    fig = _save(curve.plot(), out / "curve_polite_choice.png")
    md += [
        f"CAA vector at layer {layer} (norm {vec.norm:.2f}; mean residual norm there {norm:.1f}). "
        f"Held-out triples ({pc_test.n_triples}): logit(polite letter) - logit(casual letter):",
        "",
        _table(curve.to_dataframe()),
        "",
        f"![polite choice]({fig})",
        "",
    ]
    prompt = "Question: Can you tell me where the library is?\nAnswer:"
    md += ["Steered generations (greedy):", "", "| coeff | continuation |", "|---|---|"]
    for c in (coeffs[0], 0.0, coeffs[-1]):
        with steer(model, vec, c):
            md.append(f"| {c:.1f} | {_generate(model, prompt, args.gen_tokens)!r} |")
    md.append("")

    # ------------------------------------------------------------------ 2. sentiment CAA
    print("[2/3] sentiment CAA", flush=True)
    mc = movie_review_choices(model, "train", seed=args.seed)
    sacts = answer_activations(model, mc, layers)
    sview = pca_view(sacts, seed=args.seed)
    sview.save(out / "results" / "pca_sentiment")
    fig_spca = _save(sview.plot(), out / "pca_sentiment.png")
    sview.plot_interactive().write_html(out / "pca_sentiment.html", include_plotlyjs="cdn")
    coeffs = [-4.0, -2.0, 0.0, 2.0, 4.0]
    rows, curves = [], {}
    for li, lay in enumerate(sacts.layers):
        v = sacts.caa_vector(lay)
        cur = evaluate_steering(model, movie, v, coeffs, progress=False)
        curves[lay] = (v, cur)
        rows.append(
            {
                "layer": lay,
                "vector norm": v.norm,
                "resid norm": float(sacts.mean_norm[li]),
                **{f"LD @ {c:g}": float(m) for c, m in zip(coeffs, cur.values)},
                "monotonic": cur.monotonic(),
            }
        )
    import pandas as pd

    table = pd.DataFrame(rows)
    table.to_csv(out / "caa_sentiment_layers.csv", index=False)
    good = table[table["monotonic"] == 1]
    best = int((good if len(good) else table).assign(span=lambda d: d[f"LD @ {coeffs[-1]:g}"] - d[f"LD @ {coeffs[0]:g}"]).sort_values("span").iloc[-1]["layer"])
    bvec, _ = curves[best]
    bcurve = evaluate_steering(model, movie, bvec, [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0])
    bcurve.save(out / "results" / "curve_caa_sentiment")
    bvec.save(out / "results" / "caa_sentiment")
    fig_c = _save(bcurve.plot(), out / "curve_caa_sentiment.png")
    md += ["## 2. Sentiment CAA -> ToyMovieReview", ""]
    md += [
        f"{mc.n_triples} A/B triples 'which review matches your opinion' (positive vs negative "
        "review texts). ToyMovieReview logit difference with the CAA vector of each layer added "
        "at every position (monotonic: +1 rises with coeff, -1 falls, 0 neither):",
        "",
        _table(table),
        "",
        f"Layer {best} (the widest rising curve), finer sweep:",
        "",
        _table(bcurve.to_dataframe()),
        "",
        f"![CAA sentiment]({fig_c})  ![PCA sentiment]({fig_spca})",
        "",
        "| coeff | 'I thought this movie was' -> |",
        "|---|---|",
    ]
    for c in (-8.0, 0.0, 8.0):
        with steer(model, bvec, c):
            md.append(f"| {c:g} | {_generate(model, 'I thought this movie was', args.gen_tokens)!r} |")
    md.append("")

    # ------------------------------------------------------------------ 3. weight space
    print("[3/3] weight space: fine-tunes", flush=True)
    kw = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size}
    t = time.time()
    pos = finetune(model, movie_review_texts("positive", "train"), seed=args.seed, **kw)
    neg = finetune(model, movie_review_texts("negative", "train"), seed=args.seed, **kw)
    ft_time = (time.time() - t) / (2 * args.steps)
    w = contrastive_weight_vector(model, pos, neg)
    anatomy = diff_anatomy(model, task_vector(model, pos))
    anatomy.save(out / "results" / "anatomy_pos")
    fig_an = _save(anatomy.plot(), out / "anatomy_pos.png")
    losses = (pos.finetune_log["losses"], neg.finetune_log["losses"])
    del pos, neg
    ks = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    wcurve = evaluate_steering(model, movie, w, ks)
    wcurve.save(out / "results" / "curve_weights")
    fig_w = _save(wcurve.plot(), out / "curve_weights.png")
    kinds = anatomy.to_dataframe().groupby("kind")[["fro_norm", "rel_norm", "effective_rank", "max_rank"]].mean()
    md += ["## 3. Weight space", ""]
    md += [
        f"Full fine-tunes (AdamW, lr {args.lr:g}, {args.steps} steps of {args.batch_size} texts, "
        f"seed {args.seed}) on 24 positive and on 24 negative reviews: {ft_time:.1f} s/step. "
        f"Loss positive {losses[0][0]:.2f} -> {losses[0][-1]:.2f}, negative "
        f"{losses[1][0]:.2f} -> {losses[1][-1]:.2f}. ||w|| = {w.norm():.3f}.",
        "",
        "ToyMovieReview logit difference with theta_base + k w:",
        "",
        _table(wcurve.to_dataframe()),
        "",
        f"monotonic: {wcurve.monotonic()}",
        "",
        f"![weights]({fig_w})",
        "",
        "| k | 'I thought this movie was' -> |",
        "|---|---|",
    ]
    for k in (-2.0, 0.0, 2.0):
        with apply_weights(model, w, k):
            md.append(f"| {k:g} | {_generate(model, 'I thought this movie was', args.gen_tokens)!r} |")
    md += [
        "",
        "Anatomy of the positive fine-tune's update (mean over layers per module kind; "
        "effective rank = exp(entropy of normalised singular values)):",
        "",
        _table(kinds.reset_index(), "{:.4g}"),
        "",
        f"![anatomy]({fig_an})",
        "",
    ]

    print("[3/3] weight space: monitoring", flush=True)
    mkw = {"steps": args.monitor_steps, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed + 1}
    md += [
        f"Monitoring: fresh fine-tunes on the 16 held-out reviews of each sentiment (seed "
        f"{args.seed + 1}, {args.monitor_steps} steps); cosine between the update so far and w:",
        "",
    ]
    for sentiment in ("positive", "negative"):
        mon = WeightMonitor(model, w, every=max(1, args.monitor_steps // 4), name=f"{sentiment} fine-tune")
        finetune(model, movie_review_texts(sentiment, "test"), callback=mon, **mkw)
        res = mon.result()
        res.save(out / "results" / f"monitor_{sentiment}")
        fig_m = _save(res.plot(), out / f"monitor_{sentiment}.png")
        per = res.cosine[-1]
        md += [
            f"**{sentiment}**: overall cosine by step "
            + ", ".join(f"{s}: {c:+.3f}" for s, c in zip(res.steps, res.overall.tolist()))
            + f"; at the last step {int((per > 0).sum())}/{len(per)} layer groups positive, "
            f"range {float(per.min()):+.3f} .. {float(per.max()):+.3f}.",
            "",
            f"![monitor {sentiment}]({fig_m})",
            "",
        ]
    md += [f"Total time: {time.time() - t0:.0f} s.", ""]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {out / 'summary.md'} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
