"""Sentiment circuit and summarization motif, end to end on one model.

1. Fits the sentiment direction (``mean_diff`` at ADJ, middle layer) on ToyMovieReview train.
2. :func:`mechlens.circuits.discover_sentiment_circuit` on (a slice of) the train split:
   path patching every head -> final residual, then every head -> q/k/v of the direct
   heads; roles; faithfulness on the *test* split (held-out adjectives) at ADJ+VRB and at
   ADJ+VRB+END, full outputs and the sentiment component only, against random head sets.
3. :func:`mechlens.circuits.summarization_motif` on ToyMovieReview test: heads reading the
   comma, the patching splits, the irrelevant-context sweep over ``--fillers`` and the
   directional ablation at commas vs everywhere on the bundled SST-style reviews.
4. Where the sentiment sits: activation patching of the residual stream at every position
   and every ``--scan-stride``-th layer on ToyMovieReview test (``position_scan.png``), to
   see which positions besides ADJ/VRB carry it (is there a summary position at all?).

Writes to ``--out``: ``circuit/`` and ``motif/`` (saved results, load with ``.load``),
``circuit_heads.csv``, ``circuit_all_heads.csv``, ``faithfulness.csv``, ``motif_*.csv``,
``circuit.png``, ``motif.png``, ``position_scan.png/.csv``, ``summary.json`` and ``summary.md`` (the numbers for
docs/circuits.md), with the time each stage took.

Usage::

    python scripts/circuit_study.py --model smollm2-135m --out results/circuits
    python scripts/circuit_study.py --quick --out /tmp/circuits      # a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

from mechlens.circuits import discover_sentiment_circuit, summarization_motif  # noqa: E402
from mechlens.circuits._util import head_label  # noqa: E402
from mechlens.data import toy_movie_review  # noqa: E402
from mechlens.directions import fit  # noqa: E402
from mechlens.models import load_model  # noqa: E402
from mechlens.patching import activation_patch  # noqa: E402
from mechlens.results import markdown_table  # noqa: E402
from mechlens.viz.heatmap import save_figure  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="results/circuits")
    p.add_argument("--discovery-examples", type=int, default=24,
                   help="train prompts used for path patching (0 = all)")
    p.add_argument("--top-k", type=int, default=6, help="direct heads")
    p.add_argument("--n-movers", type=int, default=3)
    p.add_argument("--n-random", type=int, default=20, help="random head sets for faithfulness")
    p.add_argument("--fillers", default="0,8,16,32", help="filler lengths for the irrelevant-context sweep")
    p.add_argument("--sweep-layers", default="", help="layers for the sweep's activation patching (default all)")
    p.add_argument("--n-random-directions", type=int, default=5)
    p.add_argument("--direction-layer", type=int, default=None, help="default: n_layers // 2")
    p.add_argument("--scan-stride", type=int, default=3, help="layer stride of the position scan (0 skips it)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings (smoke run)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.discovery_examples, args.n_random, args.n_movers = 8, 4, 2
        args.fillers, args.n_random_directions, args.scan_stride = "0,16", 2, 0
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.time()

    model = load_model(args.model)
    torch.set_grad_enabled(False)
    train, test = toy_movie_review(model, "train"), toy_movie_review(model, "test")
    times["load"] = time.time() - t0

    t = time.time()
    layer = model.cfg.n_layers // 2 if args.direction_layer is None else args.direction_layer
    direction = fit(model, train, "mean_diff", layer=layer, progress=False)
    times["direction"] = time.time() - t

    # ---------------------------------------------------------------- circuit
    t = time.time()
    disc = train if args.discovery_examples <= 0 else train[: args.discovery_examples]
    circuit = discover_sentiment_circuit(
        model, disc, direction=direction, top_k=args.top_k, n_movers=args.n_movers,
        faithfulness_ds=test, positions=[("ADJ", "VRB"), ("ADJ", "VRB", "END")],
        n_random=args.n_random, seed=args.seed, batch_size=args.batch_size, progress=progress,
    )
    times["circuit"] = time.time() - t
    circuit.save(out / "circuit")
    heads = circuit.heads_table()
    heads.to_csv(out / "circuit_heads.csv", index=False)
    circuit.to_dataframe().to_csv(out / "circuit_all_heads.csv", index=False)
    faith = circuit.faithfulness_table()
    faith.to_csv(out / "faithfulness.csv", index=False)
    save_figure(circuit.plot(), out / "circuit.png")

    # ---------------------------------------------------------------- motif
    t = time.time()
    sweep_layers = _ints(args.sweep_layers) or None
    motif = summarization_motif(
        model, test, direction=direction, n_filler=_ints(args.fillers), layers=sweep_layers,
        n_random=args.n_random_directions, seed=args.seed, batch_size=args.batch_size, progress=progress,
    )
    times["motif"] = time.time() - t
    motif.save(out / "motif")
    motif.heads_table().head(10).to_csv(out / "motif_comma_heads.csv", index=False)
    motif.splits_table().to_csv(out / "motif_splits.csv", index=False)
    motif.sweep_table().to_csv(out / "motif_sweep.csv", index=False)
    motif.ablation_table().to_csv(out / "motif_ablation.csv", index=False)
    save_figure(motif.plot(), out / "motif.png")

    # ---------------------------------------------------------------- position scan
    scan = None
    if args.scan_stride > 0:
        t = time.time()
        scan = activation_patch(model, test, "resid_pre", layers=range(0, model.cfg.n_layers, args.scan_stride),
                                batch_size=args.batch_size, progress=progress)
        times["position_scan"] = time.time() - t
        scan.to_dataframe().to_csv(out / "position_scan.csv", index=False)
        save_figure(scan.plot(title="resid_pre activation patching (denoise), ToyMovieReview test"),
                    out / "position_scan.png")
    times["total"] = time.time() - t0

    # ---------------------------------------------------------------- summary
    cols = ["head", "kind", "direct_effect", "mover_effect", "attn_END_to_ADJ", "attn_END_to_VRB",
            "attn_END_to_COMMA", "writes_t_at_END", "ov_z", "role"]
    summary = {
        "model": args.model,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "direction": {"method": direction.method, "layer": direction.layer},
        "ld_clean_test": circuit.ld_clean,
        "ld_corrupt_test": circuit.ld_corrupt,
        "circuit": [head_label(h) for h in circuit.heads],
        "roles": circuit.roles,
        "faithfulness": faith.to_dict(orient="records"),
        "motif_top_comma_heads": [head_label(h) for h in motif.top_heads],
        "motif_splits": motif.split_change,
        "motif_sweep": motif.sweep_table().to_dict(orient="records"),
        "motif_ablation": motif.ablation_table().to_dict(orient="records"),
        "seconds": times,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    md = [
        f"# Circuit study: {args.model}",
        "",
        f"Direction: {direction.method} at layer {direction.layer} (ADJ, train). "
        f"Discovery on {disc.batch} train prompts; faithfulness on {test.batch} test prompts "
        f"(clean LD {circuit.ld_clean:.2f}, corrupt LD {circuit.ld_corrupt:.2f}).",
        "",
        "## Circuit heads",
        "",
        markdown_table(heads[[c for c in cols if c in heads.columns]], ".2f"),
        "",
        "## Faithfulness (test split)",
        "",
        markdown_table(faith),
        "",
        "## Summarization motif: heads attending END -> COMMA",
        "",
        markdown_table(motif.heads_table().head(5)),
        "",
        "## Patching splits (noise, ToyMovieReview test)",
        "",
        markdown_table(motif.splits_table()),
        "",
        "## Irrelevant-context sweep",
        "",
        markdown_table(motif.sweep_table()),
        "",
        "## Directional ablation (mini SST)",
        "",
        markdown_table(motif.ablation_table()),
        "",
        "## Position scan: fraction of LD recovered by patching resid_pre (rows: layers)",
        "",
        (scan.to_dataframe().pivot(index="layer", columns="pos", values="value")
         .reindex(columns=scan.labels["pos"]).to_markdown(floatfmt=".2f") if scan is not None else "(skipped)"),
        "",
        "## Time (s)",
        "",
        ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
        "",
    ]
    (out / "summary.md").write_text("\n".join(md))
    print("\n".join(md))
    return summary


if __name__ == "__main__":
    main()
