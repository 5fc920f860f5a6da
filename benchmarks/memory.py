"""Benchmark: ``batch_size`` bounds memory. Peak memory of a sweep on N and on 4N prompts.

Each case runs in a fresh process; once the model and the dataset are loaded, the process's
memory the loading freed is handed back to the system (``malloc_trim``) and the peak resident
size is reset (Linux ``/proc/self/clear_refs``), and the figure is the peak
during the method minus the resident size before it: what the method itself holds. The
children run with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so that large
blocks go back to the system when freed instead of being kept and counted. With ``batch_size`` fixed, no pass holds
more than ``batch_size`` sequences, so 4x the prompts should cost about the same memory
(only the per-example results grow, ``[cells, N]`` floats).

Cases: ``activation`` (``activation_patch``, ``resid_pre`` per position), ``ablation``
(``ablate_sweep`` of every head, mean ablation), ``eap`` (``edge_attribution_patch``),
``lens`` (``logit_lens`` per position).

Usage:
  python benchmarks/memory.py                          # smollm2-135m, IOI 16 and 64 prompts
  python benchmarks/memory.py --model tiny --n 8       # a 4-layer tiny GPT-2, seconds
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CASES = ("activation", "ablation", "eap", "lens")
TINY_NAMES = ["John", "Mary", "Anna", "Tom", "Question"]


def _status_mb(key: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> None:
    # loading a GGUF model peaks far above what it keeps: give the freed memory back to the
    # system (else the method reuses it without the resident size growing) and start the
    # peak afresh (Linux: writing 5 to clear_refs resets VmHWM to the current resident size)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(model_name: str, case: str, n: int, batch_size: int) -> dict:
    import warnings

    import torch

    from mechlens.data import ioi
    from mechlens.models import load_model, tiny

    warnings.simplefilter("ignore")
    torch.set_grad_enabled(True)
    model = tiny("gpt2", n_layers=4, seed=0) if model_name == "tiny" else load_model(model_name)
    ds = ioi(model, n, names=TINY_NAMES) if model_name == "tiny" else ioi(model, n)
    _reset_peak()
    base = _status_mb("VmRSS")
    t = time.perf_counter()
    if case == "activation":
        from mechlens.patching import activation_patch

        activation_patch(model, ds, "resid_pre", metric="logit_diff", batch_size=batch_size, progress=False)
    elif case == "ablation":
        from mechlens.ablation import ablate_sweep

        ablate_sweep(model, ds, "heads", how="mean", batch_size=batch_size, progress=False)
    elif case == "eap":
        from mechlens.circuits import edge_attribution_patch

        edge_attribution_patch(model, ds, batch_size=batch_size, progress=False)
    elif case == "lens":
        from mechlens.lens import logit_lens

        logit_lens(model, ds, positions=None, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t
    peak = _status_mb("VmHWM")
    return {"case": case, "n": ds.batch, "peak_mb": peak, "base_mb": base, "method_mb": max(0.0, peak - base),
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="'smollm2-135m' (default) or 'tiny'")
    ap.add_argument("--n", type=int, default=16, help="prompts of the small run (the large run has 4x)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (both runs)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        os.environ["MECHLENS_THREADS"] = str(args.threads)
    if args.child:
        print(json.dumps(child(args.model, args.child, args.n, args.batch_size)))
        return
    print(f"model {args.model}; batch_size {args.batch_size}; each case in a fresh process; "
          "memory = peak RSS minus RSS after loading the model and dataset")
    print("| case | N | method memory (N) | method memory (4N) | ratio | seconds (N / 4N) |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        out = []
        for n in (args.n, 4 * args.n):
            cmd = [sys.executable, __file__, "--model", args.model, "--n", str(n), "--batch-size",
                   str(args.batch_size), "--child", case]
            # a fixed mmap threshold: glibc otherwise raises it as large blocks are freed and then
            # keeps later ones in its heap, so the resident size would count memory already freed
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode:
                raise SystemExit(f"{case} n={n} failed:\n{res.stderr[-2000:]}")
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        a, b = out
        ratio = b["method_mb"] / a["method_mb"] if a["method_mb"] > 0 else float("nan")
        print(f"| {case} | {a['n']} | {a['method_mb']:.0f} MB | {b['method_mb']:.0f} MB | {ratio:.2f}x | "
              f"{a['seconds']:.1f} / {b['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
