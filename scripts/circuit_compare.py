"""EAP vs EAP-IG (both MIB variants) vs random edges on IOI: the numbers of docs/circuit_analysis.md.

1. Edge scores on ``--n-prompts`` IOI prompts (seed ``--seed``): EAP, EAP-IG with the input
   embeddings interpolated, EAP-IG with each sender group's activations interpolated
   (``--ig-steps`` steps).
2. Faithfulness curves over MIB's circuit sizes, CPR and CMD of each scoring and of
   ``--n-random`` random edge sets (one figure: ``faithfulness.png``); the same for circuits
   of nodes (``faithfulness_nodes.png``).
3. Stability: the top-20 edges of ``--stability-methods`` over ``--n-resamples`` bootstrap
   resamples of the prompts (Jaccard with a 95% interval), and per template.
4. Recovery AUROC of each method on the known-circuit tiny models.

Every stage writes its numbers to ``--out/summary.json`` as it finishes (with its time), and
``summary.md`` holds the tables.

Usage::

    OMP_NUM_THREADS=1 python scripts/circuit_compare.py --out results/circuit_compare
    python scripts/circuit_compare.py --model tiny --n-prompts 4 --out /tmp/cc   # seconds
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

from mechlens.circuits import (  # noqa: E402
    circuit_recovery,
    circuit_stability,
    edge_attribution_patch,
    faithfulness_curve,
)
from mechlens.data import ioi  # noqa: E402
from mechlens.models import load_model, tiny  # noqa: E402
from mechlens.results import markdown_table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="model name, or 'tiny' for a 2-layer test model")
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--n-random", type=int, default=5)
    p.add_argument("--n-resamples", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--methods", default="eap,eap-ig-inputs,eap-ig-activations")
    p.add_argument("--stability-methods", default="eap,eap-ig-inputs", help="scorings whose stability is measured "
                   "('' for none)")
    p.add_argument("--stages", default="recovery,faithfulness,nodes,stability", help="which of recovery, "
                   "faithfulness, nodes, stability to run (results merge into an existing summary.json)")
    p.add_argument("--no-stability-cpr", action="store_true", help="stability: only the top-k overlap, not the "
                   "CPR/CMD of every resample")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    stages = a.stages.split(",")
    old = a.out / "summary.json"
    summary: dict = json.loads(old.read_text()) if old.exists() else {}
    summary.setdefault("runs", []).append({"args": {k: str(v) for k, v in vars(a).items()},
                                           "threads": torch.get_num_threads()})
    md: list[str] = [(a.out / "summary.md").read_text()] if (a.out / "summary.md").exists() else []

    def save() -> None:
        (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
        (a.out / "summary.md").write_text("\n".join(md) + "\n")

    t0 = time.time()
    if "recovery" in stages:
        rec = circuit_recovery(ig_steps=a.ig_steps)
        wide = rec.pivot(index="circuit", columns="method", values="auroc")
        summary["recovery_auroc"] = wide.to_dict()
        summary["time_recovery_s"] = round(time.time() - t0, 1)
        md += ["## Recovery AUROC on the known-circuit models", "", markdown_table(wide.reset_index()), ""]
        save()

    model = tiny("gpt2", n_layers=2, seed=0) if a.model == "tiny" else load_model(a.model)
    names = ["John", "Mary", "Anna", "Tom", "Question"] if a.model == "tiny" else None
    ds = ioi(model, n_prompts=a.n_prompts, seed=a.seed, **({"names": names} if names else {}))
    scores = {}
    for method in a.methods.split(",") if {"faithfulness", "nodes"} & set(stages) else []:
        t = time.time()
        scores[method] = edge_attribution_patch(model, ds, method=method, batch_size=a.batch_size,
                                                ig_steps=None if method == "eap" else a.ig_steps, progress=False)
        summary[f"time_{method}_s"] = round(time.time() - t, 1)
        save()
    if scores:
        e = next(iter(scores.values()))
        summary["clean_ld"], summary["corrupt_ld"] = float(e.baselines["clean"].mean()), float(e.baselines["corrupt"].mean())
        if "faithfulness" in stages:
            faithfulness_stage(a, model, ds, scores, summary, md)
            save()
        if "nodes" in stages:
            nodes_stage(a, model, ds, scores, summary, md)
            save()
    if "stability" in stages and a.stability_methods:
        stability_stage(a, model, ds, summary, md, save)
    summary["time_total_s"] = round(time.time() - t0, 1)
    save()
    print("\n".join(md))


def faithfulness_stage(a, model, ds, scores, summary, md) -> None:
    t = time.time()
    fc = faithfulness_curve(model, ds, scores, n_random=a.n_random, seed=a.seed, batch_size=a.batch_size,
                            progress=False)
    summary["time_faithfulness_s"] = round(time.time() - t, 1)
    fc.save(a.out / "faithfulness")
    fc.plot(title=f"IOI faithfulness curves ({a.model}, {a.n_prompts} prompts)").savefig(
        a.out / "faithfulness.png", dpi=110)
    summary["cpr"], summary["cmd"], summary["n_edges"], summary["ks"] = fc.cpr, fc.cmd, fc.n_edges, fc.ks
    summary["faithfulness"] = fc.faithfulness
    md += ["## CPR and CMD", "", markdown_table(fc.table()), ""]


def nodes_stage(a, model, ds, scores, summary, md) -> None:
    """The node-level curves: circuits of components (embedding, heads, MLPs) ranked by each
    scoring's node scores (edge scores summed over each sender's outgoing edges)."""
    t = time.time()
    fc = faithfulness_curve(model, ds, scores, level="nodes", n_random=a.n_random, seed=a.seed,
                            batch_size=a.batch_size, progress=False)
    fc.save(a.out / "faithfulness_nodes")
    fc.plot(title=f"IOI node-level faithfulness ({a.model}, {a.n_prompts} prompts)").savefig(
        a.out / "faithfulness_nodes.png", dpi=110)
    summary["nodes"] = {"cpr": fc.cpr, "cmd": fc.cmd, "n_nodes": fc.n_nodes, "ks": fc.ks,
                        "faithfulness": fc.faithfulness, "time_s": round(time.time() - t, 1)}
    md += ["## Node-level CPR and CMD", "", markdown_table(fc.table()), ""]


def stability_stage(a, model, ds, summary, md, save) -> None:
    for method in a.stability_methods.split(","):
        t = time.time()
        st = circuit_stability(model, ds, method=method, ig_steps=None if method == "eap" else a.ig_steps, k=20,
                               n_resamples=a.n_resamples, seed=a.seed, batch_size=a.batch_size,
                               faithfulness=not a.no_stability_cpr, progress=False)
        summary[f"time_stability_{method}_s"] = round(time.time() - t, 1)
        st.save(a.out / f"stability_{method}")
        summary[f"stability_{method}"] = st.table().to_dict(orient="records")[0]
        if st.templates:
            summary[f"stability_{method}"]["template_pairs"] = st.templates["jaccard_pairs"]
        md += [f"## Stability ({method})", "", markdown_table(st.table()), ""]
        save()


if __name__ == "__main__":
    main()
