"""Diff interpretation tuning (DIT) study: weight differences, the DIT adapter, baselines.

    python scripts/dit_study.py --model smollm2-135m --out runs/dit
    python scripts/dit_study.py --model smollm2-135m --out runs/dit-fast --fast
    python scripts/dit_study.py --model smollm2-135m --out runs/dit-gpu --device cuda \\
        --n-diffs 2000 --n-heldout 200 --topics 20 --adapter-steps 4000 --diff-steps 12

Stages (each timed): a family of ``--n-diffs`` rank-``--rank`` LoRA weight differences, one
hidden topic + trigger code each (cached under ``--cache``, so a rerun with the same
settings reuses them); a seeded split with ``--n-heldout`` differences held out; the DIT
adapter trained on the rest; held-out evaluation of the adapter against chance and the
no-adapter and black-box baselines. Writes ``summary.md`` (settings, table, timings,
example answers), ``dit.png`` (accuracy and learning curve), ``result/`` and ``adapter/``
(saved objects) and ``per_example.csv``.

The default (CPU) size takes about 20-25 minutes on 2 cores (1 thread); ``--fast`` a few minutes
(numbers then mean little); ``--model tiny`` runs the pipeline on a random tiny model in
seconds (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mechlens import dit  # noqa: E402
from mechlens.models import load_model, tiny  # noqa: E402
from mechlens.results import markdown_table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default), a hub name, or 'tiny'")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--fast", action="store_true", help="small settings (a few minutes on CPU)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--n-diffs", type=int, default=None, help="weight differences (default 200; fast 24)")
    p.add_argument("--n-heldout", type=int, default=None, help="held-out differences (default 40; fast 8)")
    p.add_argument("--topics", type=int, default=12, help="number of hidden topics (chance = 1/topics)")
    p.add_argument("--rank", type=int, default=1, help="rank of each weight difference")
    p.add_argument("--diff-steps", type=int, default=4, help="fine-tuning steps per difference")
    p.add_argument("--diff-lr", type=float, default=5e-2, help="learning rate of the differences")
    p.add_argument("--adapter-steps", type=int, default=None, help="DIT adapter steps (default 300; fast 40)")
    p.add_argument("--adapter-rank", type=int, default=8)
    p.add_argument("--adapter-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8, help="DIT adapter batch size")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--cache", type=Path, default=None, help="cache of differences (default ~/.cache/mechlens/dit)")
    p.add_argument("--adapter", type=Path, default=None,
                   help="load a saved DIT adapter (DIR/adapter of an earlier run, same settings) instead of training")
    p.add_argument("--unseen", type=int, default=0,
                   help="also evaluate on this many new differences of topics the adapter never saw")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    n_diffs = a.n_diffs or (24 if a.fast else 200)
    n_held = a.n_heldout or (8 if a.fast else 40)
    steps = a.adapter_steps or (40 if a.fast else 300)
    if not 1 <= a.topics <= len(dit.TOPICS):
        raise SystemExit(f"--topics must be in [1, {len(dit.TOPICS)}]")
    topics = list(dit.TOPICS)[: a.topics]
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = tiny("llama", n_layers=2, seed=0) if a.model == "tiny" else load_model(a.model, device=a.device)
    t_load = time.perf_counter() - t0
    progress = not a.no_progress
    cache = a.cache if a.cache else True
    diff_options = {"topics": topics, "rank": a.rank, "steps": a.diff_steps, "lr": a.diff_lr}
    if a.adapter is None:
        res, fam, ad = dit.run(
            model, n_diffs, n_held, seed=a.seed, cache=cache, progress=progress, diff_options=diff_options,
            adapter_options={"rank": a.adapter_rank, "steps": steps, "lr": a.adapter_lr,
                             "batch_size": a.batch_size, "eval_every": a.eval_every},
        )
    else:
        t1 = time.perf_counter()
        fam = dit.make_diffs(model, n_diffs, seed=a.seed, cache=cache, progress=progress, **diff_options)
        ad = dit.DITAdapter.load(a.adapter)
        if ad.settings.get("family") != fam.key:
            raise SystemExit(f"{a.adapter} was trained on another family than these settings give")
        t2 = time.perf_counter()
        _, held = dit.split(fam, n_held, seed=a.seed)
        res = dit.evaluate(model, fam, ad, held, progress=progress)
        t3 = time.perf_counter()
        res.seconds.update({"diffs": t2 - t1, "adapter": 0.0, "evaluate": t3 - t2, "total": t3 - t1,
                            "diffs_from_cache": float(bool(fam.settings.get("from_cache")))})
    res.seconds["load"] = t_load
    unseen = None
    if a.unseen:
        rest = [t for t in dit.TOPICS if t not in topics]
        if not rest:
            raise SystemExit("--unseen needs --topics below the number of topics available")
        t3 = time.perf_counter()
        fam_u = dit.make_diffs(model, a.unseen, seed=a.seed + 1, cache=cache, progress=progress,
                               **{**diff_options, "topics": rest})
        unseen = dit.evaluate(model, fam_u, ad, list(range(a.unseen)), progress=progress)
        unseen.seconds["total"] = time.perf_counter() - t3
        unseen.save(a.out / "unseen")
    res.save(a.out / "result")
    ad.save(a.out / "adapter")
    res.per_example().to_csv(a.out / "per_example.csv", index=False)
    fig = res.plot()
    fig.savefig(a.out / "dit.png", dpi=120)
    plt.close(fig)
    settings = {
        "model": a.model, "device": a.device or "cpu", "threads": a.threads, "n_diffs": n_diffs,
        "n_heldout": n_held, "n_train": n_diffs - n_held, "topics": topics, "chance": res.chance,
        "diff": {k: fam.settings[k] for k in ("rank", "modules", "steps", "lr", "n_texts", "n_plain", "batch_size")},
        "adapter": ad.settings | {"config": ad.config}, "seed": a.seed,
    }
    ex = res.per_example()
    lines = [
        f"# DIT study: {a.model}", "",
        "## Settings", "", "```json", json.dumps(settings, indent=1), "```", "",
        "## Held-out accuracy", "", res.to_markdown(), "",
        "## Run time (s)", "", " | ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()), "",
        "## Learning curve", "", markdown_table(__import__("pandas").DataFrame(res.curve)), "",
        *([
            f"## Unseen topics ({len(unseen.topics)} new differences of {unseen.n_topics} topics the adapter never saw)", "",
            unseen.to_markdown(), "",
            "DIT answers: " + ", ".join(f"{t} -> {x.strip()!r}" for t, x in zip(unseen.topics, unseen.answers["dit"])), "",
            f"Run time {unseen.seconds['total']:.0f} s.", "",
        ] if unseen is not None else []),
        "## Example answers", "",
        markdown_table(ex[ex["diff"].isin(res.diff_index[:6])][["method", "diff", "topic", "answer", "exact", "fuzzy"]]),
        "",
    ]
    (a.out / "summary.md").write_text("\n".join(lines))
    print(res)
    print(res.to_dataframe().to_string(index=False))
    print(f"wrote {a.out}/summary.md; total {res.seconds['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
