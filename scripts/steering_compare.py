"""Compare steering methods on smollm2-135m ToyMovieReview (test split) at equal effect.

For CAA, four direction methods (mean difference, PCA, logistic probe, DAS) and contrastive
weight steering: per-example steerability over a coefficient sweep (mean shift per unit
coefficient with its 95% interval, anti-steerable fraction), the coefficient that reaches a
target mean shift and the KL divergence / perplexity on neutral text there; plus the
prompting baseline ("Answer positively." through the chat template). Prints one markdown
table (the one in docs/steering.md), writes the per-example figure and a few steered samples.

    python scripts/steering_compare.py --out docs/figures

Activation vectors are unit vectors added at ``blocks.{layer}.hook_resid_pre`` (CAA is
normalised too), so their coefficients are in residual-stream units; weight coefficients
multiply the contrastive weight vector.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mechlens
from mechlens.data import toy_movie_review
from mechlens.data.choices import movie_review_choices, movie_review_texts
from mechlens.directions import fit
from mechlens.results import markdown_table
from mechlens.steering import (
    at_equal_effect,
    caa_vector,
    contrastive_weight_vector,
    finetune,
    generate_steered,
    prompt_baseline,
    side_effects,
    steerability,
)
from mechlens.viz.steering import plot_steerability_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--coeffs", default="-64,-32,-16,-8,0,8,16,32,64", help="activation coefficients (residual units)")
    ap.add_argument("--weight-coeffs", default="-1,-0.5,-0.25,-0.125,0,0.125,0.25,0.5,1")
    ap.add_argument("--target", type=float, default=1.0, help="mean shift of the logit difference to compare at")
    ap.add_argument("--ft-steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = mechlens.load_model(args.model)
    train, test = toy_movie_review(model, "train"), toy_movie_review(model, "test")
    L, bs = args.layer, args.batch_size
    coeffs = [float(x) for x in args.coeffs.split(",")]
    wcoeffs = [float(x) for x in args.weight_coeffs.split(",")]

    vectors: dict[str, object] = {}
    caa = caa_vector(model, movie_review_choices(model, "train"), L, site="resid_pre", progress=False)
    vectors["CAA"] = caa.vector / caa.vector.norm()
    for name, method in (("mean difference", "mean_diff"), ("PCA", "pca"), ("probe (logistic)", "logistic"),
                         ("DAS", "das")):
        vectors[name] = fit(model, train, method, L, seed=args.seed, progress=False)
    opts = dict(steps=args.ft_steps, lr=3e-5, batch_size=8, seed=args.seed, progress=False)
    pos = finetune(model, movie_review_texts("positive", "train"), **opts)
    neg = finetune(model, movie_review_texts("negative", "train"), **opts)
    w = contrastive_weight_vector(model, pos, neg)
    del pos, neg
    t_fit = time.perf_counter() - t0

    rows, curves = [], {}
    for name, v in [*vectors.items(), ("weight steering", w)]:
        is_w = v is w
        kw = {} if is_w else {"layers": L, "site": "resid_pre"}
        cs = wcoeffs if is_w else coeffs
        st = steerability(model, test, v, cs, batch_size=bs, progress=False, **kw)
        se = side_effects(model, v, cs, batch_size=bs, progress=False, **kw)
        eq = at_equal_effect(st, se, args.target)
        s = st.summary()
        curves[name] = st
        rows.append({
            "method": name, "shift / unit coeff": s["shift_per_coeff"],
            "95% CI": f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]", "anti-steerable": s["anti_steerable"],
            f"coeff at +{args.target:g}": eq["coeff"], "KL there": eq["kl"], "perplexity there": eq["perplexity"],
            "KL at max coeff": float(se.values[se.coeffs.index(max(cs))]),
        })
    pb = prompt_baseline(model, test, "Answer positively.", batch_size=bs, progress=False).summary()
    rows.append({
        "method": "prompting: 'Answer positively.'", "shift / unit coeff": pb["shift"],
        "95% CI": f"[{pb['ci_low']:.3f}, {pb['ci_high']:.3f}]", "anti-steerable": pb["anti_steerable"],
        f"coeff at +{args.target:g}": float("nan"), "KL there": pb["kl"], "perplexity there": pb["perplexity"],
        "KL at max coeff": float("nan"),
    })
    import pandas as pd

    df = pd.DataFrame(rows)
    base = curves["CAA"].values[curves["CAA"].coeffs.index(0.0)]
    print(f"model {args.model}, ToyMovieReview test ({test.batch} prompts), layer {L} resid_pre; "
          f"unsteered mean logit diff {float(base):.3f}; target shift +{args.target:g}")
    print(markdown_table(df))
    print("prompting row: 'shift' is the instruction's shift (not per coefficient); KL/perplexity with the "
          f"instruction, neutral-text perplexity without it {pb['base_perplexity']:.2f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_steerability_grid(curves)
    fig.savefig(out / "steering_per_example.png", dpi=110)
    print(f"figure: {out / 'steering_per_example.png'}")

    prompts = ["I watched the new movie last night. Honestly, it was", "The food at the restaurant was"]
    for name in ("CAA", "weight steering"):
        st = curves[name]
        c = st.coeff_for(args.target)
        v = w if name == "weight steering" else vectors[name]
        kw = {} if name == "weight steering" else {"layers": L, "site": "resid_pre"}
        for cc in (0.0, c):
            if cc != cc:  # NaN: the sweep never reached the target
                continue
            texts = generate_steered(model, prompts, v, cc, 12, **kw)
            print(f"{name} coeff {cc:+.3g}: " + " | ".join(repr(t) for t in texts))
    print(f"fit {t_fit:.0f} s, total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
