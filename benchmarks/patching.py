"""Benchmark: mechlens.patching.activation_patch against transformer_lens.patching.

Runs the same sweep three ways in one process -- TransformerLens, mechlens's fast backend
(the default on a TransformerBridge) and mechlens's hooks backend (full ``run_with_hooks``
passes, what a HookedTransformer gets) -- and prints, per case, the seconds each took, the
speed-ups over TransformerLens, the largest absolute difference between the per-example
values, and the
*compute floor*: the time a plain batched forward pass (``model(tokens)`` on a batch of
the same size as mechlens' passes) would need for the share of layers the sweep must
recompute (a patch at layer L must rerun layers L..n-1; averaged over the sweep).

Cases:
  a  tiny GPT-2-shaped model (4 layers), ToyMovieReview (2 prompts), resid_pre, every layer x position
  b  smollm2-135m, ToyMovieReview (2 prompts), resid_pre, all 30 layers x every position
  c  smollm2-135m, ToyMovieReview (2 prompts), head z over all positions (30 layers x 9 heads)

Usage:  python benchmarks/patching.py [--cases abc] [--threads N] [--repeats 1]

The CPU is often shared: run with a fixed thread count and compare ratios measured in
one process rather than absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def _tl_sweep(model, ds, site):
    import transformer_lens.patching as tlp

    from mechlens.metrics import logit_diff

    fn = {
        "resid_pre": tlp.get_act_patch_resid_pre,
        "z": tlp.get_act_patch_attn_head_out_all_pos,
    }[site]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(ds.clean_tokens)
        res = fn(model, ds.corrupt_tokens, clean_cache, lambda lg: logit_diff(lg, ds.answers), reduce="none")
    return res.values


def _ours(model, ds, site, batch_size, backend="fast"):
    from mechlens.patching import activation_patch

    positions = None if site == "resid_pre" else "all"
    return activation_patch(
        model, ds, site, metric="logit_diff", positions=positions, batch_size=batch_size, progress=False,
        backend=backend,
    ).per_example


def _timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _floor(model, ds, site, rows, repeats):
    """Seconds a plain batched forward needs for the sweep's share of layers."""
    n = model.cfg.n_layers
    tokens = ds.clean_tokens[:1].repeat(rows, 1)
    with torch.no_grad():
        model(tokens)  # warm-up
        dt, _ = _timed(lambda: model(tokens), repeats)
    throughput = rows / dt
    n_pos = ds.seq_len if site == "resid_pre" else 1
    n_heads = model.cfg.n_heads if site == "z" else 1
    # configuration at layer L recomputes layers L..n-1: share (n - L) / n
    share = sum((n - layer) / n for layer in range(n)) / n
    sequences = n * n_pos * n_heads * ds.batch
    return sequences * share / throughput, throughput, share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="abc")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=1, help="time each sweep this many times, keep the best")
    ap.add_argument("--batch-size", type=int, default=None, help="mechlens sequences per forward pass (default: its own)")
    ap.add_argument("--tiny-arch", default="gpt2", help="architecture of the tiny model of case a (gpt2, neox, llama)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    from mechlens.data import toy_movie_review
    from mechlens.models import load_model, tiny

    cases = []
    if "a" in args.cases:
        m = tiny(args.tiny_arch, n_layers=4)
        cases.append((f"a tiny {args.tiny_arch} 4L resid_pre", m, toy_movie_review(m, "train")[:2], "resid_pre"))
    if "b" in args.cases or "c" in args.cases:
        smol = load_model("smollm2-135m")
        ds = toy_movie_review(smol, "train")[:2]
        if "b" in args.cases:
            cases.append(("b smollm2 resid_pre", smol, ds, "resid_pre"))
        if "c" in args.cases:
            cases.append(("c smollm2 z all-pos", smol, ds, "z"))

    print(f"torch threads: {torch.get_num_threads()}")
    header = (f"{'case':28s} {'TL s':>8s} {'fast s':>8s} {'speed-up':>8s} {'hooks s':>8s} {'speed-up':>8s} "
              f"{'max |diff|':>10s} {'floor s':>8s} {'fast/floor':>10s}")
    print(header)
    print("-" * len(header))
    from mechlens.patching._forward import ROWS_DEFAULT

    for name, model, ds, site in cases:
        rows = min(args.batch_size or ROWS_DEFAULT,
                   model.cfg.n_layers * ds.batch * (ds.seq_len if site == "resid_pre" else model.cfg.n_heads))
        # the floor is measured before and after the sweeps and averaged (shared CPUs drift)
        floor_a, thr_a, share = _floor(model, ds, site, rows, max(1, args.repeats))
        t_tl, ref = _timed(lambda m=model, d=ds, s=site: _tl_sweep(m, d, s), args.repeats)
        t_ml, ours = _timed(lambda m=model, d=ds, s=site: _ours(m, d, s, args.batch_size), args.repeats)
        t_hk, hooks = _timed(lambda m=model, d=ds, s=site: _ours(m, d, s, args.batch_size, "hooks"), args.repeats)
        floor_b, thr_b, _ = _floor(model, ds, site, rows, max(1, args.repeats))
        floor, thr = (floor_a + floor_b) / 2, (thr_a + thr_b) / 2
        diff = max((x - ref.to(x.dtype)).abs().max().item() for x in (ours, hooks))
        print(
            f"{name:28s} {t_tl:8.2f} {t_ml:8.2f} {t_tl / t_ml:7.1f}x {t_hk:8.2f} {t_tl / t_hk:7.1f}x {diff:10.1e} "
            f"{floor:8.2f} {t_ml / floor:9.2f}x"
            f"   (forward {thr:.1f} seq/s at batch {rows}, layer share {share:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
